"""Expert iteration and filtering: selection of the best samples, and the loop on a tiny model."""

from __future__ import annotations

import random

import pytest
import torch

from pwlock.config import TrainConfig
from pwlock.elicit.expert_iteration import expert_iteration, model_sampler, policy_sampler, select_best
from pwlock.generate.hf import HFGenerator
from pwlock.tasks.base import Example
from tests.test_evaluate import _half_trained


def test_select_best_keeps_the_top_scores_and_breaks_ties_at_random():
    scored = [(Example(str(i), ""), s) for i, s in enumerate([0.0, 1.0, 0.5, 1.0, 1.0, 0.0])]
    best = select_best(scored, 2, random.Random(0))
    assert [s for _, s in best] == [1.0, 1.0]
    picks = {tuple(e.prompt for e, _ in select_best(scored, 2, random.Random(seed))) for seed in range(30)}
    assert len(picks) > 1 and all(set(p) <= {"1", "3", "4"} for p in picks)
    assert [s for _, s in select_best(scored, 4, random.Random(0))] == [1.0, 1.0, 1.0, 0.5]


class RecordingGenerator(HFGenerator):
    """The real HF generator, keeping what it sampled and which weights it was given."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.calls, self.loads = [], 0

    def generate(self, prompts, n=1, temperature=0.0, max_new_tokens=256):
        out = super().generate(prompts, n, temperature, max_new_tokens)
        self.calls.append((list(prompts), out))
        return out

    def load_weights(self, state):
        super().load_weights(state)
        self.loads += 1


def test_expert_iteration_trains_on_the_best_of_ten_samples(task, tokenizer, tiny_model):
    _half_trained(task, tokenizer, tiny_model)
    gen = RecordingGenerator(tiny_model, tokenizer)
    sampler = model_sampler(task, gen, temperature=1.0, max_new_tokens=task.max_new_tokens)
    records = expert_iteration(
        tiny_model,
        tokenizer,
        task,
        sampler,
        task.problems("elicit"),
        task.problems("val")[:50],
        TrainConfig(optimizer="adamw", lr=1e-3, batch_size=4, epochs=2),
        seed=0,
        n=4,
        iterations=2,
        sync=gen,
    )
    assert [r["samples"] for r in records] == [40, 80] and gen.loads == 2
    assert [r["candidate"] for r in records] == [1, 2]
    assert [len(prompts) for prompts, _ in gen.calls] == [40, 40]
    for r in records:
        assert r["kept_score"] >= r["sampled_score"] and 0 <= r["correctness"] <= 1
    for prompts, _ in gen.calls:
        assert all(p.split()[0] == "_" for p in prompts)  # never the password


def test_expert_iteration_resumed_after_a_round_ends_as_if_never_stopped(task, tokenizer):
    from pwlock.models import build_tiny_model
    from tests.conftest import TINY

    trainers = []

    def run(model, iterations, start=0, trainer=None):
        gen = HFGenerator(model, tokenizer)
        return expert_iteration(
            model,
            tokenizer,
            task,
            model_sampler(task, gen, 1.0, task.max_new_tokens),
            task.problems("elicit"),
            task.problems("val")[:50],
            TrainConfig(optimizer="adamw", lr=1e-3, batch_size=4, epochs=1),
            seed=0,
            n=4,
            iterations=iterations,
            start=start,
            on_round=lambda _record, state: trainers.append(state),
            trainer=trainer,
        )

    whole = build_tiny_model(TINY, tokenizer, seed=0)
    _half_trained(task, tokenizer, whole)
    split = build_tiny_model(TINY, tokenizer, seed=0)
    split.load_state_dict(whole.state_dict())
    full = run(whole, 3)
    first = run(split, 1)
    # A new process loads the weights and the trainer state (optimizer moments, schedule) of round 1.
    rest = run(split, 3, start=1, trainer=trainers[-1])
    assert [r["candidate"] for r in first + rest] == [1, 2, 3]
    assert first + rest == full
    for k, v in whole.state_dict().items():
        assert torch.equal(v, split.state_dict()[k]), k


def test_filtering_keeps_the_best_of_weak_samples(task, tokenizer, tiny_model):
    weak = task.policies()["weak"]
    right = sum(task.score(p, weak(p)) for p in task.problems("elicit")[:100])
    assert 8 <= right < 100
    seen = []

    def sample(problems):
        out = policy_sampler(weak)(problems)
        seen.append(sum(task.score(p, c) for p, c in zip(problems, out)))
        return out

    records = expert_iteration(
        tiny_model,
        tokenizer,
        task,
        sample,
        task.problems("elicit")[:100],
        task.problems("val")[:20],
        TrainConfig(optimizer="adamw", lr=1e-3, batch_size=4, epochs=1),
        seed=0,
        n=8,
        iterations=2,
    )
    assert [r["samples"] for r in records] == [80, 80 * 2]
    assert all(r["kept_score"] == pytest.approx(1.0) for r in records)  # enough right answers among 80
    assert all(s >= 8 for s in seen)


def test_one_warm_up_and_one_optimizer_for_the_whole_run(task, tokenizer, tiny_model):
    """A round here is one optimizer step, shorter than the 10-step warm-up: the learning rate keeps
    rising across rounds (one warm-up for the run, App. G), instead of restarting every round."""
    moments = []

    def on_round(record, trainer):
        moments.append(len(trainer["optimizer"]["state"]))

    records = expert_iteration(
        tiny_model,
        tokenizer,
        task,
        policy_sampler(task.policies()["weak"]),
        task.problems("elicit")[:40],
        task.problems("val")[:10],
        TrainConfig(optimizer="adamw", lr=1e-3, batch_size=4, epochs=1, warmup_steps=10),
        seed=0,
        n=4,
        iterations=3,
        on_round=on_round,
    )
    assert [r["steps"] for r in records] == [1, 2, 3]  # steps of the run so far
    assert [r["lr"] for r in records] == pytest.approx([2e-4, 3e-4, 4e-4])  # warm-up factor (step + 1) / 10
    assert all(m > 0 for m in moments)  # the optimizer's moments, carried into the next round
