"""Sweeps on the S3 store survive faults: a worker killed mid-trial, the store restarted mid-sweep,
the driver killed (then --resume). Real local Ray, real SeaweedFS, the real CLI in a subprocess."""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import psutil
import pytest
import yaml

from pwlock import analysis
from pwlock.trial import DONE, JOURNAL
from tests.conftest import bucket_objects
from tests.notebook import outputs, run_analysis_notebook

ROOT = Path(__file__).resolve().parents[1]
TRIALS = 4  # k ∈ {8, 32} × seeds {0, 1}, scratch lock only
CANDIDATES = 2

STUDY = {
    "name": "faults",
    "task": {"name": "function_composition", "n_problems": 2000},
    "model": {"base": "tiny", "tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}},
    "lock": {
        "modes": ["scratch"],
        "stop_at": 0.99,
        "scratch": {"optimizer": "adamw", "lr": 3e-3, "batch_size": 64, "epochs": 2},
    },
    "eval": {"max_problems": 100},
    # k=8: 32 and 64 epochs of one step; k=32: 8 and 16 epochs of four steps.
    "elicit": {
        "ks": [8, 32],
        "seeds": [0, 1],
        "sample_budgets": [256, 512],
        "train": {"optimizer": "adamw", "lr": 1e-3, "batch_size": 8},
    },
    "ray": {"num_cpus": 2},
    # Locks of 1-2 epochs: the pipeline end to end, not a real lock, so the lock gate is off.
    "guards": {"lock_gate": False},
    # A checkpoint after every epoch; Tune snapshots often, so the driver can be killed after one.
    "fault_tolerance": {"max_failures": 2, "checkpoint_every_s": 0, "snapshot_every_s": 2},
}


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"faults-{uuid.uuid4().hex[:6]}"  # shared by this module's sweeps: upstream built once


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "faults.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    return path


def sweep_command(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "sweeps" / "sample_efficiency.py"), *args]


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        sweep_command(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _launch(server, prefix: str, config: Path, experiment: str) -> tuple[str, str, subprocess.Popen]:
    """Start a sweep on the bucket; its storage URL, the experiment's prefix in the bucket, the driver."""
    storage = f"s3://{server.bucket}/{prefix}"
    return (
        storage,
        f"{prefix}/{experiment}",
        _start("--config", str(config), "--storage", storage, "--name", experiment),
    )


def _finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-5000:]
    return out


def _journal(server, exp_prefix: str) -> dict[str, dict[str, list]]:
    """Per trial: its start records, and whether it wrote done.json."""
    out: dict[str, dict[str, list]] = {}
    client = server._client()
    for key in bucket_objects(server, f"{exp_prefix}/{JOURNAL}/"):
        if len(key.split("/")) != len(exp_prefix.split("/")) + 3:
            continue  # a checkpoint's files
        trial, name = key.split("/")[-2:]
        entry = out.setdefault(trial, {"starts": [], "done": []})
        if not (name == DONE or name.startswith("start-")):
            continue  # checkpoints
        body = json.loads(client.get_object(Bucket=server.bucket, Key=key)["Body"].read())
        entry["done" if name == DONE else "starts"].append(body)
    return out


def _wait(what: str, check, timeout: float = 300, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"sweep ended before {what}:\n{proc.stdout.read()[-5000:]}")
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def check_local_results(exp: Path) -> None:
    """Every trial's results exactly once in a local store, as pwlock.analysis reads them back."""
    results = list(exp.glob("*/result.json"))
    assert len(results) == TRIALS
    for r in results:
        rows = [json.loads(line) for line in r.read_text().splitlines()]
        assert Counter(row["candidate"] for row in rows) == {c: 1 for c in range(1, CANDIDATES + 1)}
    assert len(analysis.load_summary(str(exp))) == TRIALS


def _check_results(server, prefix: str, experiment: str, notebook: bool = True) -> dict:
    """Every trial's results exactly once, in the bucket and as pwlock.analysis reads them back
    (with `notebook`, also as the analysis notebook does: a Jupyter kernel, ~10 s)."""
    exp = f"{prefix}/{experiment}"
    objects = bucket_objects(server, exp)
    client = server._client()
    results = [k for k in objects if k.endswith("/result.json")]
    assert len(results) == TRIALS
    for key in results:
        rows = [
            json.loads(line)
            for line in client.get_object(Bucket=server.bucket, Key=key)["Body"].read().decode().splitlines()
        ]
        counts = Counter(r["candidate"] for r in rows if r.get("candidate") is not None)
        assert counts == {c: 1 for c in range(1, CANDIDATES + 1)}, (key, counts)
    trial_dirs = {k.split("/")[2] for k in results}
    # Tune's checkpoints list the records it has: one per candidate, all kept.
    tune_checkpoints = Counter(k.split("/")[2] for k in objects if "/checkpoint_" in k and k.endswith("records.json"))
    assert tune_checkpoints == {t: CANDIDATES for t in trial_dirs}
    # A finished trial's weights checkpoint is deleted with it.
    assert not [k for k in objects if f"/{JOURNAL}/" in k and "/checkpoint-" in k]
    for name in (analysis.SUMMARY, analysis.FIGURE, analysis.STUDY, analysis.UPSTREAM_FILE):
        assert f"{exp}/{name}" in objects, name
    candidates = analysis.load_candidates(f"s3://{server.bucket}/{exp}")
    assert len(candidates) == TRIALS * CANDIDATES and not candidates.duplicated(["trial", "candidate"]).any()
    summary = analysis.load_summary(f"s3://{server.bucket}/{exp}")
    assert len(summary) == TRIALS and summary["correctness"].between(0, 1).all()
    if notebook:  # the notebook reads s3:// too
        text, images = outputs(run_analysis_notebook(f"s3://{server.bucket}/{exp}"))
        assert "elicited correctness without password" in text and len(images) == 1
    assert any(k.startswith(f"{prefix}/artifacts/") for k in bucket_objects(server, prefix))
    return _journal(server, exp)


def _modified(server, prefix: str) -> dict[str, datetime]:
    client, out = server._client(), {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=server.bucket, Prefix=prefix):
        out.update({o["Key"]: o["LastModified"] for o in page.get("Contents", [])})
    return out


def _no_secrets(server, prefix: str) -> None:
    client = server._client()
    for key in bucket_objects(server, prefix):
        body = client.get_object(Bucket=server.bucket, Key=key)["Body"].read()
        assert server.secret_key.encode() not in body, key


@pytest.mark.slow
def test_sweep_on_s3_survives_a_killed_worker_and_a_store_restart(s3_env, prefix, config):
    server, experiment = s3_env, "worker-and-store"
    storage, exp, proc = _launch(server, prefix, config, experiment)

    # Kill the worker of a k=8 trial once it has a checkpoint in the bucket.
    def started_k8():
        return next((t for t, e in _journal(server, exp).items() if "-k8-" in t and e["starts"]), None)

    victim = _wait("a k=8 trial to start", started_k8, proc=proc)
    _wait(
        "its first checkpoint",
        lambda: f"{exp}/{JOURNAL}/{victim}/latest.json" in bucket_objects(server, exp),
        proc=proc,
    )
    pid = _journal(server, exp)[victim]["starts"][0]["pid"]
    os.kill(pid, signal.SIGKILL)

    # Then take the store away for a few seconds while trials run and checkpoint.
    down = datetime.now(timezone.utc)
    server.stop()
    time.sleep(4)
    server.start()
    up = datetime.now(timezone.utc)
    out = _finish(proc)
    # The outage hit trials at work: some trial started before it and finished after it (and
    # checkpointed every epoch in between, a fraction of a second apart).
    stamps = _modified(server, f"{exp}/{JOURNAL}/")
    through = [
        t
        for t in {k.removeprefix(f"{exp}/{JOURNAL}/").split("/")[0] for k in stamps}
        if min(v for k, v in stamps.items() if f"/{t}/start-" in k) < down
        and stamps.get(f"{exp}/{JOURNAL}/{t}/{DONE}", down) > up
    ]
    assert through, "no trial was running during the outage"

    journal = _check_results(server, prefix, experiment)
    starts = journal[victim]["starts"]
    assert [s["attempt"] for s in sorted(starts, key=lambda s: s["attempt"])] == [1, 2], out[-3000:]
    assert sorted(s["resumed_from_epoch"] for s in starts)[1] > 0  # from its checkpoint, not from scratch
    # The restart is reported as one (Tune logs its cause), not left to Tune's tally of "errored" trials.
    restart = rf"trial {re.escape(victim)}\S* failed and starts again from its last checkpoint \(restart 1\)"
    assert re.search(restart, out)
    assert re.search(r"\b1 trials failed and started again from their last checkpoint \(1 restarts\)", out), out[-3000:]
    assert len(journal) == TRIALS and all(len(e["done"]) == 1 for e in journal.values())
    _no_secrets(server, prefix)
    assert server.secret_key not in out and server.access_key not in out  # nor in the logs


def _session_processes(sid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid:
                out.append(p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            pass
    return out


@pytest.mark.slow
def test_driver_killed_mid_sweep_then_resume_finishes_it(s3_env, prefix, config):
    server, experiment = s3_env, "driver-killed"
    storage, exp, proc = _launch(server, prefix, config, experiment)

    def some_done_and_snapshotted():
        journal = _journal(server, exp)
        done = {t for t, e in journal.items() if e["done"]}
        state = any("experiment_state" in k for k in bucket_objects(server, exp))
        return done if done and state and len(done) < TRIALS else None

    done_before = _wait("a finished trial and an experiment snapshot", some_done_and_snapshotted, proc=proc)
    # The driver dies with everything it started: its whole session, local Ray included.
    for p in [psutil.Process(proc.pid), *_session_processes(proc.pid)]:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(30)
    _wait("the session's processes to exit", lambda: not _session_processes(proc.pid), timeout=60)
    done_before = {t for t, e in _journal(server, exp).items() if e["done"]}
    assert 0 < len(done_before) < TRIALS

    out = _finish(_start("--resume", "--name", experiment, "--storage", storage))
    assert "resuming" in out
    journal = _check_results(server, prefix, experiment)
    assert len(journal) == TRIALS and all(len(e["done"]) == 1 for e in journal.values())
    for trial in done_before:  # finished before the kill: never trained again
        assert len(journal[trial]["starts"]) == 1, (trial, journal[trial]["starts"])


def test_cli_store_errors_are_clear_and_immediate(s3_env, prefix, config, tmp_path):
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": "wrong"}
    bad = subprocess.run(
        [
            sys.executable,
            str(ROOT / "sweeps" / "sample_efficiency.py"),
            "--config",
            str(config),
            "--storage",
            f"s3://{s3_env.bucket}/{prefix}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert bad.returncode == 2 and "refused" in bad.stderr and "AWS_ACCESS_KEY_ID" in bad.stderr, bad.stderr
    assert "wrong" not in bad.stderr.replace("wrong credentials", "")

    missing = subprocess.run(
        [
            sys.executable,
            str(ROOT / "sweeps" / "sample_efficiency.py"),
            "--resume",
            "--name",
            "never-ran",
            "--storage",
            f"s3://{s3_env.bucket}/{prefix}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and "no experiment 'never-ran'" in missing.stderr, missing.stderr


# One trial, one restart: what a trial whose actor can never start costs is two starts.
ONE_TRIAL = copy.deepcopy(STUDY)
ONE_TRIAL["elicit"].update(ks=[8], seeds=[0])
ONE_TRIAL["fault_tolerance"]["max_failures"] = 1


@pytest.mark.slow
def test_a_trial_whose_actor_dies_at_start_fails_naming_the_trial_and_the_cause(tmp_path):
    """Each start of the trial's actor is killed with SIGKILL, as the kernel's OOM killer does, as
    soon as it appears: the trial fails after its one restart (no hang, no loop), the driver ends with
    an error, and its log names the trial and says its actor died and why Ray thinks it did."""
    config = tmp_path / "one.yaml"
    config.write_text(yaml.safe_dump(ONE_TRIAL))
    driver = _start("--config", str(config), "--storage", str(tmp_path / "store"), "--name", "oom")
    killed: set[int] = set()
    deadline = time.monotonic() + 600
    try:
        while driver.poll() is None and time.monotonic() < deadline:
            for p in _session_processes(driver.pid):
                try:
                    title = " ".join(p.cmdline())
                except psutil.Error:
                    continue
                if title.startswith("ray::ImplicitFunc") and p.pid not in killed:
                    killed.add(p.pid)
                    p.kill()
            time.sleep(0.05)
        out, _ = driver.communicate(timeout=60)
    finally:
        driver.kill()
    print(out[-3000:])
    assert driver.returncode == 1 and len(killed) == 2, killed  # the first start and its one restart
    assert "error: all 1 elicitation trials failed" in out and "runs the failed trials again" in out
    (line,) = [x for x in out.splitlines() if re.match(r"\s*scratchlock-sft-k8-seed0-\w+: ActorDiedError", x)]
    assert "The actor is dead because its worker process has died" in line, line
