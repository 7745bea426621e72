"""Starting or joining Ray, and the driver's Tune settings for big sweeps. (Ray's local defaults
are set when pwlock is imported: pwlock/__init__.py.)"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import ray
import torch
from ray import tune
from ray._private import ray_constants
from ray.autoscaler.v2.utils import is_autoscaler_v2
from ray.experimental.internal_kv import _internal_kv_get
from ray.tune.logger import JsonLoggerCallback

from pwlock.config import ConfigError, RayConfig


def use_cpus(cpus: float | None = None) -> int:
    """The one thread policy of every process that computes (stage tasks, trials, engines): torch's
    threads = the CPUs Ray reserved for it (`cpus`, else what Ray assigned this worker), at least one,
    so that processes sharing a node's cores do not oversubscribe them (on a loaded 2-core machine,
    HF greedy decoding took 371 s with 2 threads per process against 19 s with one)."""
    if cpus is None:
        assigned = ray.get_runtime_context().get_assigned_resources() if ray.is_initialized() else {}
        cpus = assigned.get("CPU", os.cpu_count() or 1)
    n = max(1, int(cpus))
    torch.set_num_threads(n)
    return n


def init_ray(cfg: RayConfig) -> str:
    """Join the cluster named by `cfg.address` or RAY_ADDRESS, else start Ray locally on loopback.
    Returns a description for the log."""
    if ray.is_initialized():
        return "ray (already initialised)"
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        return f"ray cluster at {address}"
    ray.init(
        # "local": a new instance even when `ray start` left a cluster on this machine to auto-join.
        address="local",
        num_cpus=cfg.num_cpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level=logging.WARNING,
        runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore::DeprecationWarning"}},
    )
    return f"local ray on 127.0.0.1 ({int(ray.cluster_resources().get('CPU', 0))} CPUs)"


def check_store(local: bool, shared: bool, where: str) -> None:
    """Refuse a directory store (`local`) on a Ray cluster of more than one node, or on one whose
    autoscaler may add nodes (a head with zero workers so far), unless the config declares it
    `shared` (mounted on every node): each node would write its own disk, and trials would miss the
    artifacts and checkpoints that other nodes wrote. Called right after Ray starts, before any work."""
    if not local or shared:
        return
    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) > 1:
        why = f"a Ray cluster of {len(nodes)} nodes"
    elif types := autoscaled_node_types():
        why = f"a Ray cluster whose autoscaler may start more nodes (node types: {', '.join(types)})"
    else:
        return
    raise ConfigError(
        f"store {where}: a directory on {why}: each node would read and write its own disk, so trials "
        "would not find what other nodes built; use an s3:// store (--storage s3://bucket/prefix), or, if "
        "every node mounts this directory (NFS, EFS), set store.shared: true"
    )


def memory_bytes(gb: float | None) -> int | None:
    """A reservation in GB as the bytes Ray's `memory` resource counts (None: no reservation)."""
    return None if gb is None else int(gb * 1024**3)


def check_memory(per_trial_gb: float | None, per_stage_gb: float | None) -> None:
    """Refuse a memory reservation (`ray.memory_per_trial_gb`, `memory_per_stage_gb`, as planned)
    that no node can grant, before any work: such trials or stages would wait for resources
    forever. A cluster whose autoscaler may add nodes is not checked (its node types may have more)."""
    wanted = [(n, gb) for n, gb in (("memory_per_trial_gb", per_trial_gb), ("memory_per_stage_gb", per_stage_gb)) if gb]
    if not wanted or autoscaled_node_types():
        return
    largest = max((n["Resources"].get("memory", 0) for n in ray.nodes() if n["Alive"]), default=0)
    for name, gb in wanted:
        if memory_bytes(gb) > largest:
            raise ConfigError(
                f"ray.{name}: {gb:g} GB, but the largest node of this Ray cluster has {largest / 1024**3:.1f} GB "
                "for tasks (Ray's `memory` resource: the node's memory less its object store); lower it or use "
                "a larger node"
            )


def autoscaled_node_types() -> list[str]:
    """The node types the connected cluster's autoscaler has seen, [] where it has none. Ray's monitor
    runs on every head; without an autoscaling config it names each node's type after the node
    (`node_<id>`), so only other names mean an autoscaler that can launch nodes. Autoscaler v2
    (KubeRay's) runs only with an autoscaler."""
    if is_autoscaler_v2(fetch_from_server=True):
        return ["(autoscaler v2)"]
    status = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    if not status:
        return []
    mapping = (json.loads(status).get("autoscaler_report") or {}).get("node_type_mapping") or {}
    return sorted({t for t in mapping.values() if not t.startswith("node_")})


# Driver-side Tune settings for big sweeps (Tune reads them when a sweep starts). Measured with
# benchmarks/sweep_overhead.py on 4,000 no-op trials; docs/big-sweeps.md has the figures.
TUNE_ENV = {
    # Snapshot the experiment every 5 min, not every >= 10 s: each snapshot rewrites the state file
    # and re-uploads every trial's files. fault_tolerance.snapshot_every_s overrides it.
    "TUNE_GLOBAL_CHECKPOINT_S": "300",
    # Only result.json (what pwlock.analysis reads): no progress.csv, no TensorBoard files.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
}


def tune_bookkeeping(snapshot_every_s: float | None = None) -> dict[str, Any]:
    """Set TUNE_ENV in this (driver) process; return the RunConfig keyword arguments that go with it."""
    os.environ.update(TUNE_ENV)
    if snapshot_every_s is not None:
        os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = str(snapshot_every_s)
    return {"callbacks": [JsonLoggerCallback()], "sync_config": tune.SyncConfig(sync_artifacts=False)}
