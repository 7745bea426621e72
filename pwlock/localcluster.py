"""A Ray cluster of several nodes on this one machine, shaped like `cluster/aws.yaml`: for checking
what only a cluster exercises (trials placed on GPU workers, autoscaling, a node lost) without one.

Each node is a raylet of its own with the resources it is given; a worker may advertise a GPU it
does not have (Ray schedules as on a GPU node, pwlock's code runs on the CPU). Each node's workers
get their own pwlock cache directory (PWLOCK_CACHE), so that nodes share nothing but the store.
With `worker_types`, Ray's autoscaler runs over them (its fake multi-node provider, here through
`Provider`) and starts and stops workers as tasks wait and nodes idle; `add_worker` starts one by
hand, `remove` kills one with everything on it.

    with LocalCluster(tmp, worker_types=aws_worker_types()) as c:
        ... a sweep with `ray.address: c.address` ...

Nothing here runs `ray stop`: it stops only the processes of the nodes it started.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import ray
import ray._private.utils as ray_utils
import yaml
from ray._private import ray_constants
from ray._private.node import Node
from ray._private.parameter import RayParams
from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider
from ray.autoscaler.tags import (
    NODE_KIND_WORKER,
    STATUS_UP_TO_DATE,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_NAME,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_USER_NODE_TYPE,
)
from ray.cluster_utils import Cluster


def _signal(p: psutil.Process, sig: int) -> None:
    try:
        p.send_signal(sig)
    except psutil.Error:  # gone already
        pass


AWS_YAML = Path(__file__).resolve().parents[1] / "cluster" / "aws.yaml"
HEAD_TYPE = "ray.head.default"  # the fake provider's name for the head's type
OBJECT_STORE = 150 * 1024**2  # per node: shared memory is the machine's, whatever a node says


def aws_worker_types(
    path: Path = AWS_YAML, cpus: float = 2, gpus: float = 1, max_workers: int = 2
) -> dict[str, dict[str, Any]]:
    """The worker node types of `cluster/aws.yaml` scaled to a small machine: each node `gpus`
    advertised GPUs and `cpus` CPUs instead of 8 H100s and 192 CPUs, at most `max_workers` of a
    type, the file's `min_workers` kept."""
    cfg = yaml.safe_load(path.read_text())
    out = {}
    for name, t in cfg["available_node_types"].items():
        if name == cfg["head_node_type"]:
            continue
        out[name] = {
            "resources": {"CPU": cpus, "GPU": gpus} if t["resources"].get("GPU") else {"CPU": cpus},
            "node_config": {},
            "min_workers": min(t.get("min_workers", 0), max_workers),
            "max_workers": min(t["max_workers"], max_workers),
        }
    return out


def autoscaling_config(
    worker_types: dict[str, dict[str, Any]],
    head_cpus: float,
    gcs_address: str,
    idle_timeout_s: float,
    cache_root: Path,
    env: dict[str, str],
    path: Path = AWS_YAML,
) -> dict[str, Any]:
    """An autoscaler config for `Provider`: `path`'s cluster-wide limits and upscaling speed, its
    head as a node with `head_cpus` CPUs and no GPU, `worker_types`, and `idle_timeout_s` in place of
    its idle minutes."""
    aws = yaml.safe_load(path.read_text())
    return {
        "cluster_name": aws["cluster_name"],
        "max_workers": min(aws["max_workers"], sum(t["max_workers"] for t in worker_types.values())),
        "upscaling_speed": aws.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": idle_timeout_s / 60,
        "provider": {
            "type": "external",  # the fake provider by path: Ray's wheel lacks its defaults file
            "module": f"{__name__}.Provider",
            "gcs_address": gcs_address,
            "cache_root": str(cache_root),
            "env": env,
            "disable_launch_config_check": True,
            "disable_node_updaters": True,
            "use_node_id_as_ip": True,
        },
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            **copy.deepcopy(worker_types),
            HEAD_TYPE: {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0},
        },
        "head_node_type": HEAD_TYPE,
        **{k: [] for k in ("initialization_commands", "setup_commands", "head_setup_commands")},
        **{k: [] for k in ("worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
    }


class Provider(FakeMultiNodeProvider):
    """Ray's fake multi-node provider (run by the autoscaler, in the head's monitor process), with
    each worker on loopback, a bounded object store, its own pwlock cache and the cluster's env."""

    def _create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        with self.lock:
            node_type = tags[TAG_RAY_USER_NODE_TYPE]
            node_id = self._next_hex_node_id()
            cache = Path(self.provider_config["cache_root"]) / f"{node_type}-{node_id[-5:]}"
            env = {
                **self.provider_config["env"],
                "RAY_OVERRIDE_NODE_ID_FOR_TESTING": node_id,
                "RAY_CLOUD_INSTANCE_ID": node_id,
                "RAY_NODE_TYPE_NAME": node_type,
            }
            node = start_worker(self._gcs_address, resources, cache, env, labels)
            self._nodes[node_id] = {
                "tags": {
                    TAG_RAY_NODE_KIND: NODE_KIND_WORKER,
                    TAG_RAY_USER_NODE_TYPE: node_type,
                    TAG_RAY_NODE_NAME: node_id,
                    TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE,
                    **tags,
                },
                "node": node,
            }


def start_worker(
    gcs_address: str,
    resources: dict[str, float],
    cache: Path,
    env: dict[str, str],
    labels: dict[str, str] | None = None,
) -> Node:
    """A worker node joining the cluster at `gcs_address` on loopback (where `ray start --address`
    is refused), with `resources` (CPU, GPU, custom), a bounded object store, `cache` as its pwlock
    cache and `env` for its processes. Stop it with `node.kill_all_processes(False, False)`."""
    r = dict(resources)
    params = RayParams(
        node_ip_address="127.0.0.1",
        include_log_monitor=False,  # the head's reads every node's logs (one machine, one log dir)
        min_worker_port=0,
        max_worker_port=0,
        dashboard_agent_listen_port=0,
        num_cpus=r.pop("CPU", 0),
        num_gpus=r.pop("GPU", 0),
        object_store_memory=OBJECT_STORE,
        resources=r,
        labels=labels or {},
        redis_address=gcs_address,
        gcs_address=gcs_address,
        env_vars={**env, "PWLOCK_CACHE": str(cache)},
        runtime_env_dir_name=_runtime_env_dir(cache.name),
    )
    return Node(params, head=False, shutdown_at_exit=False, spawn_reaper=False)


def _runtime_env_dir(node: str) -> str:
    """A node's own directory for runtime envs (a job's working dir, unpacked) in the session
    directory that all nodes on one machine share: a node deleting a package it no longer needs
    must not delete the one the head's job runs in, as on a cluster each node has its own disk."""
    return f"runtime_resources_{node}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _environ(values: dict[str, str]):
    """`values` in os.environ while the head's processes start (they inherit it), then as before."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class LocalCluster:
    """A head with `head_cpus` CPUs and no GPU; workers by hand (`add_worker`) and, with
    `worker_types`, by Ray's autoscaler. `env` goes to every node's processes (the store's endpoint
    and credentials, as a cluster's nodes get them)."""

    def __init__(
        self,
        root: Path,
        head_cpus: float = 1,
        worker_types: dict[str, dict[str, Any]] | None = None,
        idle_timeout_s: float = 5.0,
        env: dict[str, str] | None = None,
    ):
        self.root, self.env = Path(root), dict(env or {})
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.cluster = Cluster(initialize_head=False, shutdown_at_exit=True)
        self._address_file = Path(ray_utils.get_ray_address_file(None))
        saved = self._address_file.read_text() if self._address_file.exists() else None
        head: dict[str, Any] = {}
        starting = {"AUTOSCALER_UPDATE_INTERVAL_S": "1"}
        if worker_types:
            config = self.root / "autoscaler.json"
            config.write_text(
                json.dumps(
                    autoscaling_config(
                        worker_types, head_cpus, self.address, idle_timeout_s, self.root / "cache", self.env
                    )
                )
            )
            head["autoscaling_config"] = str(config)
            starting["RAY_FAKE_CLUSTER"] = "1"  # the fake provider refuses to start without it
        with _environ(starting):
            self.head = self.cluster.add_node(
                num_cpus=head_cpus,
                num_gpus=0,
                node_ip_address="127.0.0.1",
                gcs_server_port=self.port,
                include_dashboard=False,
                dashboard_port=_free_port(),  # its minimal server still listens: not on 8265, others' port
                env_vars={**self.env, "PWLOCK_CACHE": str(self.cache("head"))},
                **head,
            )
        # Ray's Cluster writes its address where a plain ray.init() looks; others' runs must not join it.
        if saved is None:
            self._address_file.unlink(missing_ok=True)
        else:
            self._address_file.write_text(saved)

    def cache(self, name: str) -> Path:
        """The pwlock cache directory of the node called `name` ("head", or a worker's)."""
        return self.root / "cache" / name

    def add_worker(self, name: str, resources: dict[str, float]) -> Node:
        """Start a worker node by hand with `resources` (CPU, GPU, and any custom ones)."""
        r = dict(resources)
        return self.cluster.add_node(
            num_cpus=r.pop("CPU", 1),
            num_gpus=r.pop("GPU", 0),
            resources=r,
            node_ip_address="127.0.0.1",
            env_vars={**self.env, "PWLOCK_CACHE": str(self.cache(name))},
            runtime_env_dir_name=_runtime_env_dir(name),
        )

    def remove(self, node: Node) -> None:
        """Kill a worker node at once, its raylet and every process on it, as when a machine dies.

        Its workers are frozen first: killing a raylet alone leaves them running until they notice,
        time enough for one to finish a task and write to the store after its node is gone."""
        raylet = psutil.Process(node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid)
        workers = raylet.children(recursive=True)
        for p in workers:
            _signal(p, signal.SIGSTOP)
        self.cluster.remove_node(node, allow_graceful=False)
        for p in workers:
            _signal(p, signal.SIGKILL)
        psutil.wait_procs(workers, timeout=10)

    def nodes(self) -> list[dict[str, Any]]:
        """The alive nodes as Ray lists them (needs this process connected: ray.init(address=...))."""
        return [n for n in ray.nodes() if n["Alive"]]

    def worker_ids(self) -> set[str]:
        return {n["NodeID"] for n in self.nodes() if n["NodeID"] != self.head.node_id}

    def shutdown(self) -> None:
        """Stop the nodes started by hand, the head (with the autoscaler), then any worker the
        autoscaler left: the processes that name this cluster's address, and only those."""
        for node in list(self.cluster.worker_nodes):
            self.cluster.remove_node(node, allow_graceful=False)
        if self.cluster.head_node is not None:
            self.cluster.remove_node(self.cluster.head_node, allow_graceful=False)
        mine = []
        for p in psutil.process_iter(["cmdline"]):
            try:
                if any(a == self.address or a.endswith(f"={self.address}") for a in p.info["cmdline"] or []):
                    mine.append(p)
            except psutil.Error:
                pass
        for p in mine:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(mine, timeout=10)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
