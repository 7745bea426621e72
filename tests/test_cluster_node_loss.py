"""A worker node lost mid-sweep on a Ray cluster of several nodes on this machine
(pwlock.localcluster): its raylet and every process on it killed, once while it builds an upstream
artifact and once while a trial runs there. The build runs again on another worker; the trial goes
on on the other worker from its last checkpoint in the S3 store; every trial is done, and reported,
exactly once. Workers started by hand (no autoscaler), each with its own cache."""

from __future__ import annotations

import time
import uuid
from collections import Counter

import psutil
import pytest
import ray
from ray._private import ray_constants

from pwlock import analysis, runtime
from pwlock.config import load_config
from pwlock.localcluster import LocalCluster
from pwlock.plan import plan
from pwlock.store import open_store
from pwlock.trial import JOURNAL
from tests.conftest import bucket_objects
from tests.test_cluster import STUDY, sweep
from tests.test_fault_tolerance import _journal, _wait

GPU_WORKER = {"CPU": 2, "GPU": 1}
# The cluster study, elicited by SFT: 3 trials of 2 candidates,
# k=8: 32 and 64 epochs of one step, a checkpoint after every epoch.
SFT = {
    **STUDY,
    "name": "node-loss",
    "elicit": {
        "ks": [8],
        "seeds": [0, 1, 2],
        "sample_budgets": [256, 512],
        "train": {"optimizer": "adamw", "lr": 1e-3, "batch_size": 8},
    },
    "fault_tolerance": {"max_failures": 2, "checkpoint_every_s": 0},
}


@pytest.fixture(scope="module")
def cluster(s3_server, tmp_path_factory):
    env = {**s3_server.env, "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    with LocalCluster(tmp_path_factory.mktemp("cluster"), head_cpus=1, env=env) as c:
        ray.init(address=c.address, logging_level="WARNING")
        try:
            yield c
        finally:
            ray.shutdown()


def _running(node, task: str) -> bool:
    """Whether a process of `node` runs `task` now (Ray titles a worker process `ray::<task>`)."""
    raylet = psutil.Process(node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid)
    for p in raylet.children(recursive=True):
        try:
            if p.cmdline()[:1] == [f"ray::{task}"]:
                return True
        except psutil.Error:
            pass
    return False


@pytest.mark.slow
def test_a_worker_node_lost_mid_sweep_loses_no_build_and_no_trial_and_runs_none_twice(cluster, s3_env, tmp_path):
    s3_server = s3_env  # its endpoint and credentials in this process too: the results are read back
    # A head without an autoscaler, no worker yet: a directory store is still fine here.
    assert runtime.autoscaled_node_types() == []
    runtime.check_store(local=True, shared=False, where=str(tmp_path / "store"))
    nodes = {name: cluster.add_worker(name, GPU_WORKER) for name in ("gpu-a", "gpu-b")}
    # A store of its own: the upstream is built here, as GPU tasks on the workers.
    root = f"node-loss-{uuid.uuid4().hex[:6]}"
    exp = f"{root}/node-loss"
    proc = sweep(cluster, SFT, tmp_path, f"s3://{s3_server.bucket}/{root}", "node-loss", "sample_efficiency.py")

    # gpu-a is lost while it builds an upstream artifact; gpu-c joins.
    _wait("an upstream build on gpu-a", lambda: _running(nodes["gpu-a"], "_build_in_worker"), timeout=600, proc=proc)
    cluster.remove(nodes["gpu-a"])  # the node and everything on it, at once
    lost_at = time.strftime("%Y-%m-%dT%H:%M:%S")  # artifacts' built_at: local time, to the second
    nodes["gpu-c"] = cluster.add_worker("gpu-c", GPU_WORKER)

    def checkpointed_on_c():  # a trial on gpu-c with a checkpoint in the store
        objects = bucket_objects(s3_server, f"{exp}/{JOURNAL}/")
        for trial, e in _journal(s3_server, exp).items():
            on_c = any(s["node_id"] == nodes["gpu-c"].node_id for s in e["starts"])
            if on_c and not e["done"] and f"{exp}/{JOURNAL}/{trial}/latest.json" in objects:
                return trial
        return None

    # gpu-c is lost while a trial on it has a checkpoint.
    victim = _wait("a trial on gpu-c to checkpoint", checkpointed_on_c, timeout=600, proc=proc)
    cluster.remove(nodes["gpu-c"])
    out, _ = proc.communicate(timeout=600)
    (tmp_path / "driver.log").write_text(out)
    assert proc.returncode == 0, out[-5000:]

    # Every artifact is whole in the store, built on a node that lived or by gpu-a before it was lost
    # (its finished builds stand): the build lost with gpu-a ran again elsewhere.
    store = open_store(f"s3://{s3_server.bucket}/{root}")
    keys = [a.key for a in plan(load_config(tmp_path / "node-loss.yaml")).artifacts]
    assert keys and all(store.check_artifact(k).built for k in keys)
    metas = [store.meta(k) for k in keys]
    alive = {nodes["gpu-b"].node_id, nodes["gpu-c"].node_id}
    where = [(m["label"], m["node_id"], m["built_at"]) for m in metas]
    assert all(
        m["node_id"] in alive or (m["node_id"] == nodes["gpu-a"].node_id and m["built_at"] <= lost_at) for m in metas
    ), (lost_at, where)

    journal = _journal(s3_server, exp)
    assert len(journal) == 3 and all(len(e["done"]) == 1 for e in journal.values())
    starts = sorted(journal[victim]["starts"], key=lambda s: s["attempt"])
    assert [s["attempt"] for s in starts] == [1, 2], out[-3000:]
    assert starts[0]["node_id"] == nodes["gpu-c"].node_id
    assert starts[1]["node_id"] == nodes["gpu-b"].node_id and starts[1]["resumed_from_epoch"] > 0
    heads = [s for e in journal.values() for s in e["starts"] if s["node_id"] == cluster.head.node_id]
    assert not heads  # the head has no GPU: no trial ran there
    candidates = analysis.load_candidates(f"s3://{s3_server.bucket}/{exp}")
    assert Counter(candidates["trial"]).most_common(1)[0][1] == 2 and len(candidates) == 3 * 2
    assert not candidates.duplicated(["trial", "candidate"]).any()
    # gpu-b read the locked model from the store into its own cache.
    assert any(cluster.cache("gpu-b").rglob("*.safetensors"))
