"""The cluster workflow end to end on loopback: a Ray cluster of two nodes (`ray start --head` with
the dashboard and no CPU for tasks, and a worker node joining it, each with its own pwlock cache),
`ray job submit` of the quick sample-efficiency sweep with the project as working dir and the S3
store, SUCCEEDED through the dashboard's job API, every trial on the worker, the dashboard's node and
job pages listing both nodes and the job, the results in the bucket, the trials named in the job's
log as they finish, and the sweep's progress gauges scraped from the head's metrics export port
while it runs.

The head is stopped by killing the process group it was started in, never with `ray stop`
(which stops every Ray process on the machine)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml
from ray._private.node import Node

from pwlock import analysis
from pwlock.config import load_config
from pwlock.localcluster import start_worker
from pwlock.plan import plan
from pwlock.s3server import free_port
from tests.conftest import bucket_objects
from tests.prometheus import gauge, scrape
from tests.test_fault_tolerance import _journal

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
EXPERIMENT = "job-e2e"
RAY_PORTS = (
    "port",
    "dashboard-port",
    "metrics-export-port",
    "node-manager-port",
    "object-manager-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
    "ray-client-server-port",
)


def _env_without_aws() -> dict[str, str]:
    """This process's environment less any AWS setting: what the job gets, it gets explicitly."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "RAY_ADDRESS"}
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    return env


@dataclass
class Head:
    dashboard: str
    metrics_port: int
    temp_dir: Path
    log: Path
    worker: Node | None = None  # a worker node joined to it


@pytest.fixture
def ray_head():
    """`ray start --head --block` on 127.0.0.1 with every port picked free, in its own process group,
    no CPU for tasks (as `cluster/aws.yaml`'s head); then a worker node with two CPUs. Each node has
    its own pwlock cache."""
    temp_dir = Path(tempfile.mkdtemp(prefix="pwray-", dir="/tmp"))  # Ray's socket paths must stay short
    ports = {name: free_port() for name in RAY_PORTS}
    env = _env_without_aws()
    env["PATH"] = (
        f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `python` is the venv's, as in the image
    )
    env["RAY_metrics_report_interval_ms"] = "1000"  # processes report their metrics every second, not 10
    env["PWLOCK_CACHE"] = str(temp_dir / "cache" / "head")
    log = temp_dir / "ray-start.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                RAY,
                "start",
                "--head",
                "--block",
                "--node-ip-address=127.0.0.1",
                "--dashboard-host=127.0.0.1",
                f"--temp-dir={temp_dir}",
                "--num-cpus=0",  # as cluster/aws.yaml's head: nothing scheduled there but the job's driver
                "--num-gpus=0",
                "--disable-usage-stats",
                *(f"--{name}={port}" for name, port in ports.items()),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    head = Head(f"http://127.0.0.1:{ports['dashboard-port']}", ports["metrics-export-port"], temp_dir, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ray start exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if json.loads(_get(f"{head.dashboard}/api/version")).get("ray_version"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the head's dashboard did not answer in 120 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        # Started from this process: its environment (no AWS setting yet) is what the node gets.
        head.worker = start_worker(f"127.0.0.1:{ports['port']}", {"CPU": 2}, temp_dir / "cache" / "worker", {})
        yield head
    finally:
        if head.worker is not None:
            head.worker.kill_all_processes(check_alive=False, allow_graceful=False)
        _stop(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the head's process group and to every process it started (a job's driver runs in a
    session of its own), then SIGKILL to whatever is left after 20 s."""
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        for p in family:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(family, timeout=20)
        if not alive:
            break
    proc.wait(timeout=10)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


@pytest.mark.slow
def test_ray_job_submit_runs_the_quick_sweep_on_s3(ray_head, s3_env, tmp_path):
    server = s3_env
    prefix = f"job-{uuid.uuid4().hex[:6]}"
    storage = f"s3://{server.bucket}/{prefix}"
    # The secret goes in a credentials file the nodes can read (a mounted secret on a cluster); the
    # job's runtime env, which the dashboard shows to anyone, names only the file.
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[default]\naws_access_key_id = {server.access_key}\naws_secret_access_key = {server.secret_key}\n"
    )
    credentials.chmod(0o600)
    # The cluster's runtime env (cluster/runtime-env.yaml) with this machine's paths and endpoint.
    runtime_env = yaml.safe_load((ROOT / "cluster" / "runtime-env.yaml").read_text())
    runtime_env["env_vars"].update(
        {
            "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
            "AWS_ENDPOINT_URL": server.endpoint,
            "AWS_REGION": server.region,
            "AWS_EC2_METADATA_DISABLED": "true",
            "PWLOCK_PROGRESS_EVERY_S": "5",
        }
    )
    (tmp_path / "runtime-env.yaml").write_text(yaml.safe_dump(runtime_env))
    trials = [t.name for t in plan(load_config(ROOT / "sweeps" / "configs" / "local.yaml", quick=True)).trials]
    n_trials = len(trials)
    submission = f"pwlock-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    submit = subprocess.run(
        [
            RAY,
            "job",
            "submit",
            "--address",
            ray_head.dashboard,
            "--submission-id",
            submission,
            "--working-dir",
            str(ROOT),
            "--runtime-env",
            str(tmp_path / "runtime-env.yaml"),
            "--no-wait",
            "--",
            "python",
            "sweeps/sample_efficiency.py",
            "--quick",
            "--storage",
            storage,
            "--name",
            EXPERIMENT,
        ],
        env=_env_without_aws(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert submit.returncode == 0, submit.stdout + submit.stderr
    assert submission in submit.stdout + submit.stderr

    # Poll the dashboard's job API as a user's watch would, scraping the sweep's gauges meanwhile.
    seen: list[dict] = []
    deadline = time.monotonic() + 600
    while True:
        info = json.loads(_get(f"{ray_head.dashboard}/api/jobs/{submission}"))
        metrics = scrape(ray_head.metrics_port)
        if gauge(metrics, "ray_pwlock_trials", experiment=EXPERIMENT, state="done") is not None:
            seen.append(metrics)
        if info["status"] in ("SUCCEEDED", "FAILED", "STOPPED") or time.monotonic() > deadline:
            break
        time.sleep(1)
    wall = time.monotonic() - t0
    logs = json.loads(_get(f"{ray_head.dashboard}/api/jobs/{submission}/logs"))["logs"]
    assert info["status"] == "SUCCEEDED", f"{info['status']}: {info.get('message')}\n{logs[-5000:]}"
    print(f"\nray job submit → SUCCEEDED in {wall:.0f} s; the sweep's own account:")
    print("\n".join(x for x in logs.splitlines() if re.search(r"upstream: |wrote .* in \d+ s|progress ", x)))

    # It ran on this head's cluster (RAY_ADDRESS set by the job supervisor), not a Ray of its own.
    assert "ray: ray cluster at" in logs
    # The results, in the bucket, as analysis reads them back.
    exp = f"{prefix}/{EXPERIMENT}"
    objects = bucket_objects(server, exp)
    for name in (analysis.SUMMARY, analysis.FIGURE, analysis.STUDY, analysis.UPSTREAM_FILE):
        assert f"{exp}/{name}" in objects, name
    results = [k for k in objects if k.endswith("/result.json")]
    assert len(results) == n_trials
    client = server._client()
    for key in results:
        rows = client.get_object(Bucket=server.bucket, Key=key)["Body"].read().decode().splitlines()
        assert rows and all(0 <= json.loads(r)["correctness"] <= 1 for r in rows), key
    summary = analysis.load_summary(f"{storage}/{EXPERIMENT}")
    assert len(summary) == n_trials and summary["correctness"].between(0, 1).all()
    assert f"results: {storage}/{EXPERIMENT}" in logs

    # The log names each trial as it finishes, and the progress line ends on all done.
    for name in trials:
        finished = re.findall(rf"trial {re.escape(name)}-\S+ done after ", logs)
        assert len(finished) == 1, (name, [x for x in logs.splitlines() if " done after " in x])
    assert (
        f"progress {EXPERIMENT}: {n_trials} of {n_trials} trials done, 0 running, 0 pending, 0 failed; 0.00 GPU-hours"
    ) in logs

    # Both nodes, and the job, as the dashboard's node and job pages show them; every trial ran on
    # the worker, which read the locked model from the store into its own cache.
    nodes = json.loads(_get(f"{ray_head.dashboard}/nodes?view=summary"))["data"]["summary"]
    alive = {n["raylet"]["nodeId"] for n in nodes if n["raylet"]["state"] == "ALIVE"}
    assert ray_head.worker.node_id in alive and len(alive) == 2, alive
    jobs = json.loads(_get(f"{ray_head.dashboard}/api/jobs/"))
    assert [j["status"] for j in jobs if j.get("submission_id") == submission] == ["SUCCEEDED"]
    on = Counter(s["node_id"] for e in _journal(server, exp).values() for s in e["starts"])
    print(f"trials by node: {dict(on)}")
    assert on == {ray_head.worker.node_id: n_trials}
    assert any((ray_head.temp_dir / "cache" / "worker").rglob("*.safetensors"))

    # The gauges, as Prometheus scrapes them from the head while the sweep runs (or just after).
    deadline = time.monotonic() + 30
    while gauge(seen[-1] if seen else {}, "ray_pwlock_trials", experiment=EXPERIMENT, state="done") != n_trials:
        assert time.monotonic() < deadline, f"no scrape showed {n_trials} trials done: {seen[-1:]}"
        seen.append(scrape(ray_head.metrics_port))
        time.sleep(1)
    last = seen[-1]
    assert {
        s: gauge(last, "ray_pwlock_trials", experiment=EXPERIMENT, state=s)
        for s in ("pending", "running", "done", "failed")
    } == {"pending": 0, "running": 0, "done": n_trials, "failed": 0}
    assert gauge(last, "ray_pwlock_trial_hours", experiment=EXPERIMENT) > 0
    assert gauge(last, "ray_pwlock_gpu_hours", experiment=EXPERIMENT) == 0  # CPU trials: no GPU-hours
    running = [gauge(m, "ray_pwlock_trials", experiment=EXPERIMENT, state="running") for m in seen]
    print(f"scrapes with the sweep's gauges: {len(seen)}; most trials running at once: {max(running)}")
    # The gauges exist from the sweep's start, while its upstream artifacts build: every trial
    # pending, none running or done, no hours yet.
    upstream = [
        m
        for m in seen
        if gauge(m, "ray_pwlock_trials", experiment=EXPERIMENT, state="pending") == n_trials
        and gauge(m, "ray_pwlock_trials", experiment=EXPERIMENT, state="running") == 0
    ]
    assert upstream, "no scrape while the upstream artifacts built"
    assert all(gauge(m, "ray_pwlock_trial_hours", experiment=EXPERIMENT) == 0 for m in upstream)
    print(f"scrapes during the upstream builds: {len(upstream)}")

    # The working dir went up without .venv, results or other ignored files, and small.
    package = info["runtime_env"]["working_dir"]
    unpacked = (
        ray_head.temp_dir
        / "session_latest"
        / "runtime_resources"
        / "working_dir_files"
        / Path(package).name.removesuffix(".zip")
    )
    assert (unpacked / "sweeps" / "sample_efficiency.py").is_file() and (unpacked / "pwlock").is_dir()
    for ignored in (".venv", "results", ".pytest_cache"):
        assert not (unpacked / ignored).exists(), ignored
    assert not list(unpacked.rglob("__pycache__"))
    size = sum(p.stat().st_size for p in unpacked.rglob("*") if p.is_file())
    print(f"working dir uploaded: {size / 2**20:.1f} MiB unpacked")
    assert size < 50 * 2**20

    # No secret in what the dashboard shows, in the job's log, or in the bucket.
    assert server.secret_key not in json.dumps(info) and server.secret_key not in logs
    for key in bucket_objects(server, prefix):
        assert server.secret_key.encode() not in client.get_object(Bucket=server.bucket, Key=key)["Body"].read(), key
