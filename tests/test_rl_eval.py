"""RL rounds evaluated on the whole validation set every `eval_every` rounds and at the last, and on
one fixed subset between: the schedule, the loops that follow it (real tiny models), the trial path
(an RLConfig through methods.run), and bad settings refused with the field named."""

from __future__ import annotations

import copy

import pytest
import yaml

from pwlock import evaluate
from pwlock.config import ConfigError, GeneratorConfig, RLConfig, TrainConfig, config_from_dict
from pwlock.elicit import methods
from pwlock.elicit.dpo import dpo_elicitation
from pwlock.elicit.expert_iteration import eval_rounds, expert_iteration, policy_sampler, round_eval_problems
from pwlock.elicit.methods import Elicitation
from pwlock.generate.hf import HFGenerator
from tests.test_config import LOCAL
from tests.test_evaluate import _half_trained


@pytest.fixture
def evaluated(monkeypatch):
    """The problems of each real correctness evaluation, and what it returned."""
    calls: list[tuple[list[str], float]] = []
    real = evaluate.correctness

    def spy(model, tokenizer, task, problems, *args, **kwargs):
        value = real(model, tokenizer, task, problems, *args, **kwargs)
        calls.append(([p.id for p in problems], value))
        return value

    monkeypatch.setattr(evaluate, "correctness", spy)
    return calls


def test_schedule_whole_set_every_nth_round_and_at_the_last_one_fixed_subset_between(task):
    val = task.problems("val")[:40]
    sets = [round_eval_problems(val, r, 7, every=3, between=10) for r in range(1, 8)]
    assert [len(s) for s in sets] == [10, 10, 40, 10, 10, 40, 40]
    assert sets[0] == sets[1] == sets[3] == sets[4] and set(p.id for p in sets[0]) < set(p.id for p in val)
    assert sets[2] == val
    assert eval_rounds(7, 3, 10) == (3, 4) and eval_rounds(7) == (7, 0)
    # every round on the whole set unless a subset is asked for; a subset as large as the set is the set
    assert all(round_eval_problems(val, r, 7) == val for r in range(1, 8))
    assert round_eval_problems(val, 1, 7, every=3, between=40) == val


def test_expert_iteration_evaluates_the_subset_between_whole_set_rounds(task, tokenizer, tiny_model, evaluated):
    val = task.problems("val")[:20]
    train = TrainConfig(optimizer="adamw", lr=1e-3, batch_size=4, epochs=1)
    records = expert_iteration(
        tiny_model,
        tokenizer,
        task,
        policy_sampler(task.policies()["weak"]),
        task.problems("elicit")[:100],
        val,
        train,
        seed=0,
        n=4,
        iterations=5,
        eval_every=4,
        eval_problems_between=6,
    )
    assert [r["eval_problems"] for r in records] == [6, 6, 6, 20, 20]
    assert [len(ids) for ids, _ in evaluated] == [6, 6, 6, 20, 20]
    assert evaluated[0][0] == evaluated[1][0] == evaluated[2][0]  # the same subset at every round between
    assert [r["correctness"] for r in records] == [value for _, value in evaluated]
    # another trial (seed) sees the same subset: curves of seeds and methods are comparable
    evaluated.clear()
    expert_iteration(
        tiny_model,
        tokenizer,
        task,
        policy_sampler(task.policies()["weak"]),
        task.problems("elicit")[:100],
        val,
        train,
        seed=1,
        n=4,
        iterations=3,
        eval_every=4,
        eval_problems_between=6,
    )
    assert evaluated[0][0] == evaluated[1][0] == round_ids(val, 6)


def round_ids(val, between: int) -> list[str]:
    return [p.id for p in round_eval_problems(val, 1, 2, every=4, between=between)]


@pytest.mark.parametrize("iterated", [False, True])
def test_dpo_ends_on_the_whole_validation_set(task, tokenizer, tiny_model, evaluated, iterated):
    problems = _half_trained(task, tokenizer, tiny_model)[:16]
    val = task.problems("val")[:30]
    gen = HFGenerator(copy.deepcopy(tiny_model), tokenizer)
    records = dpo_elicitation(
        tiny_model,
        copy.deepcopy(tiny_model),
        tokenizer,
        task,
        gen,
        problems,
        val,
        TrainConfig(optimizer="adamw", lr=1e-3, batch_size=4, warmup_steps=0),
        seed=0,
        rounds=3,
        iterated=iterated,
        max_new_tokens=task.max_new_tokens,
        eval_every=5,
        eval_problems_between=4,
    )
    assert [r["eval_problems"] for r in records] == [4, 4, 30]
    assert [ids for ids, _ in evaluated] == [round_ids(val, 4)] * 2 + [[p.id for p in val]]


def test_a_trials_rl_config_reaches_the_loop(task, tokenizer, tiny_model, tmp_path):
    reported = []
    rl = RLConfig(n=4, iterations=3, eval_every=2, eval_problems_between=5, generator=GeneratorConfig(backend="hf"))
    e = Elicitation(
        method="filtering",
        task=task,
        model=tiny_model,
        tokenizer=tokenizer,
        locked_dir=str(tmp_path),
        k=0,
        seed=0,
        train=TrainConfig(optimizer="adamw", lr=1e-3, batch_size=4, epochs=1),
        budgets=[8],
        rl=rl,
        eval_problems=task.problems("val")[:20],
        eval_batch_size=64,
        demonstrator="strong",
        weak=task.policies()["weak"],
    )
    methods.run(e, lambda record, state: reported.append(record), None, None)
    assert [r["eval_problems"] for r in reported] == [5, 20, 20]


@pytest.mark.parametrize(
    "rl, message",
    [
        (
            {"eval_every": 5},
            "elicit.rl.eval_every: 5: the rounds between whole-set evaluations need elicit.rl.eval_problems_between",
        ),
        (
            {"eval_every": 0, "eval_problems_between": 5},
            "elicit.rl.eval_every: expected a number of rounds >= 1, got 0",
        ),
        (
            {"eval_every": 5, "eval_problems_between": 0},
            "elicit.rl.eval_problems_between: expected a number of validation problems >= 1 or null, got 0",
        ),
        ({"eval_problems_between": 50}, "elicit.rl.eval_problems_between: 50: with eval_every 1 every round"),
    ],
)
def test_bad_evaluation_schedules_are_refused_with_the_field_named(rl, message):
    raw = yaml.safe_load(LOCAL.read_text())
    raw.setdefault("elicit", {}).setdefault("rl", {}).update(rl)
    with pytest.raises(ConfigError, match=_re(message)):
        config_from_dict(raw, "local.yaml")


def _re(text: str) -> str:
    import re

    return re.escape(text)
