"""Starting or joining Ray. Import this before `ray` so its defaults apply to a local Ray.

A local Ray stays on 127.0.0.1, sends no usage statistics and writes no auth token; on a cluster
(`ray job submit`, or RAY_ADDRESS set) the cluster's own settings rule.
"""

from __future__ import annotations

import logging
import os

for _var, _value in {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # keeps every Ray process on loopback
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}.items():
    os.environ.setdefault(_var, _value)

import ray  # noqa: E402

from pwlock.config import RayConfig  # noqa: E402

from pwlock.logs import setup_logging  # noqa: E402,F401  (re-exported: workers call runtime.setup_logging)


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
        num_cpus=cfg.num_cpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level=logging.WARNING,
        runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore::DeprecationWarning"}},
    )
    return f"local ray on 127.0.0.1 ({int(ray.cluster_resources().get('CPU', 0))} CPUs)"
