"""A worker node lost mid-sweep on a Ray cluster of several nodes on this machine
(pwlock.localcluster): its raylet and every process on it killed while a trial runs there. The
trial goes on on the other worker from its last checkpoint in the S3 store, and every trial is
done, and reported, exactly once. Workers started by hand (no autoscaler), each with its own cache."""

from __future__ import annotations

from collections import Counter

import pytest
import ray

from pwlock import analysis
from pwlock.localcluster import LocalCluster
from pwlock.trial import JOURNAL
from tests.conftest import bucket_objects
from tests.test_cluster import PREFIX, STUDY, sweep
from tests.test_fault_tolerance import _journal, _wait

GPU_WORKER = {"CPU": 2, "GPU": 1}
# The cluster study's upstream (built once per session), elicited by SFT: 3 trials of 2 candidates,
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


@pytest.mark.slow
def test_a_worker_node_lost_mid_sweep_loses_no_trial_and_runs_none_twice(cluster, s3_env, tmp_path):
    s3_server = s3_env  # its endpoint and credentials in this process too: the results are read back
    nodes = {name: cluster.add_worker(name, GPU_WORKER) for name in ("gpu-a", "gpu-b")}
    exp = f"{PREFIX}/node-loss"
    # Stages on CPU: built by test_cluster's sweep, they are only checked here (a GPU task starts a
    # fresh worker process each time, seconds each on 2 cores).
    storage = f"s3://{s3_server.bucket}/{PREFIX}"
    proc = sweep(cluster, SFT, tmp_path, storage, "node-loss", "sample_efficiency.py", gpus_per_stage=0)

    def checkpointed_on_a():  # a trial on gpu-a with a checkpoint in the store
        objects = bucket_objects(s3_server, f"{exp}/{JOURNAL}/")
        for trial, e in _journal(s3_server, exp).items():
            on_a = any(s["node_id"] == nodes["gpu-a"].node_id for s in e["starts"])
            if on_a and not e["done"] and f"{exp}/{JOURNAL}/{trial}/latest.json" in objects:
                return trial
        return None

    victim = _wait("a trial on gpu-a to checkpoint", checkpointed_on_a, timeout=600, proc=proc)
    cluster.remove(nodes["gpu-a"])  # the node and everything on it, at once
    out, _ = proc.communicate(timeout=600)
    (tmp_path / "driver.log").write_text(out)
    assert proc.returncode == 0, out[-5000:]

    journal = _journal(s3_server, exp)
    assert len(journal) == 3 and all(len(e["done"]) == 1 for e in journal.values())
    starts = sorted(journal[victim]["starts"], key=lambda s: s["attempt"])
    assert [s["attempt"] for s in starts] == [1, 2], out[-3000:]
    assert starts[0]["node_id"] == nodes["gpu-a"].node_id
    assert starts[1]["node_id"] == nodes["gpu-b"].node_id and starts[1]["resumed_from_epoch"] > 0
    heads = [s for e in journal.values() for s in e["starts"] if s["node_id"] == cluster.head.node_id]
    assert not heads  # the head has no GPU: no trial ran there
    candidates = analysis.load_candidates(f"s3://{s3_server.bucket}/{exp}")
    assert Counter(candidates["trial"]).most_common(1)[0][1] == 2 and len(candidates) == 3 * 2
    assert not candidates.duplicated(["trial", "candidate"]).any()
    # gpu-b read the locked model from the store into its own cache.
    assert any(cluster.cache("gpu-b").rglob("*.safetensors"))
