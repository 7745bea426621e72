"""Host memory reserved per trial and per stage (`ray.memory_per_trial_gb`, `memory_per_stage_gb`):
Ray starts no more trials on a node than its memory holds, instead of starting them all and letting
its memory monitor kill some (a 135M fp32 trial with its CPU engine took up to 7 GB); a reservation no
node can grant is refused before any work."""

from __future__ import annotations

import time

import pytest
import ray
from ray import tune

from pwlock import runtime
from pwlock.config import ConfigError, VLLMConfig, config_from_dict
from pwlock.generate.vllm_actor import trial_resources

GIB = 1024**3


@pytest.fixture(scope="module")
def small_node():
    """A local Ray node with 4 CPUs and 3 GiB of Ray's `memory` resource."""
    ray.init(address="local", num_cpus=4, _memory=3 * GIB, include_dashboard=False, _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()


def _spans(resources, tmp_path) -> list[tuple[float, float]]:
    """Four 1.5 s trials placed as pwlock places them; when each ran."""

    def trial(config):
        start = time.time()
        time.sleep(1.5)
        tune.report({"start": start, "end": time.time()})

    tuner = tune.Tuner(
        tune.with_resources(trial, resources),
        param_space={"i": tune.grid_search(list(range(4)))},
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
    )
    grid = tuner.fit()
    assert not grid.errors
    return sorted((r.metrics["start"], r.metrics["end"]) for r in grid)


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    return max(sum(s <= t < e for s, e in spans) for t, _ in spans)


@pytest.mark.slow
def test_trials_that_reserve_memory_run_no_more_at_once_than_the_node_holds(small_node, tmp_path):
    # Without a reservation the four trials share the node's four CPUs at once: the check can fail.
    assert _most_at_once(_spans(trial_resources(1.0, 0.0, None), tmp_path / "free")) >= 2
    # 2 GiB each of 3 GiB: one at a time, with or without an engine in the trial.
    for engine in (None, VLLMConfig()):
        resources = trial_resources(1.0, 0.0, engine, memory=runtime.memory_bytes(2.0))
        assert resources.bundles == [{"CPU": 1.0, "memory": 2 * GIB}]
        assert _most_at_once(_spans(resources, tmp_path / f"held-{engine is None}")) == 1


def test_on_a_gpu_the_trainer_bundle_holds_the_trials_memory():
    resources = trial_resources(1.0, 1.0, VLLMConfig(gpu_fraction=0.3), memory=5 * GIB)
    assert resources.bundles == [{"CPU": 1.0, "GPU": 0.7, "memory": 5 * GIB}, {"CPU": 0.01, "GPU": 0.3}]


def test_a_reservation_no_node_can_grant_is_refused_naming_the_field(small_node):
    runtime.check_memory(2.0, 1.0)  # fits: no error
    with pytest.raises(ConfigError, match=r"ray.memory_per_stage_gb: 8 GB, but the largest node .* has 3.0 GB"):
        runtime.check_memory(2.0, 8.0)


def test_a_reservation_that_is_not_positive_is_refused():
    with pytest.raises(ConfigError, match=r"ray.memory_per_trial_gb: expected GB > 0, 'auto' or null, got 0"):
        config_from_dict({"name": "x", "task": {"name": "function_composition"}, "ray": {"memory_per_trial_gb": 0}})
