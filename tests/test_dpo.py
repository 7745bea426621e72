"""DPO: the loss, the log-probabilities it is built on, pairs, and a training pass on a tiny model."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from pwlock.config import TrainConfig
from pwlock.tasks.base import Example
from pwlock.train.dpo import Pair, dpo_loss, preference_pairs, sequence_logprobs, train_dpo


def test_loss_is_the_dpo_formula_weighted_by_reward_gap():
    pc, pr, rc, rr = (torch.tensor(v) for v in ([-1.0, -2.0], [-3.0, -1.5], [-2.0, -2.0], [-2.5, -1.0]))
    beta = 0.1
    expected = [-math.log(1 / (1 + math.exp(-beta * ((pc[i] - rc[i]) - (pr[i] - rr[i])).item()))) for i in range(2)]
    assert dpo_loss(pc, pr, rc, rr, beta).item() == pytest.approx(sum(expected) / 2)
    w = torch.tensor([0.5, 2.0])
    assert dpo_loss(pc, pr, rc, rr, beta, w).item() == pytest.approx((0.5 * expected[0] + 2.0 * expected[1]) / 2)
    # The policy equal to its reference: log 2 per pair, whatever the log-probabilities.
    assert dpo_loss(pc, pr, pc, pr, beta).item() == pytest.approx(math.log(2))


def test_pairs_keep_only_different_scores_the_better_chosen():
    assert preference_pairs("p", ["a", "b"], [0.0, 1.0]) == [Pair("p", "b", "a", 1.0)]
    assert preference_pairs("p", ["a", "b"], [1.0, 1.0]) == []
    assert preference_pairs("p", ["a", "b", "c", "d"], [0.9, 0.2, 0.0, 0.0], weighted=True) == [
        Pair("p", "a", "b", pytest.approx(0.7))
    ]


def test_sequence_logprobs_sum_the_completion_tokens(task, tokenizer, tiny_model):
    problems = task.problems("val")[:3]
    policy = task.policies()["strong"]
    examples = [Example(task.prompt(p, None), policy(p)) for p in problems]
    batched = sequence_logprobs(tiny_model, tokenizer, examples)
    for ex, lp in zip(examples, batched):
        prompt = tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]
        completion = tokenizer(ex.completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = torch.tensor([prompt + completion])
        logp = torch.log_softmax(tiny_model(input_ids=ids).logits[0].float(), -1)
        by_hand = sum(logp[len(prompt) - 1 + j, t].item() for j, t in enumerate(completion))
        assert lp.item() == pytest.approx(by_hand, abs=1e-4)


def test_training_prefers_the_chosen_answers_and_leaves_the_reference_alone(task, tokenizer, tiny_model):
    strong, weak = task.policies()["strong"], task.policies()["weak"]
    pairs = [
        Pair(task.prompt(p, None), strong(p), weak(p)) for p in task.problems("elicit")[:32] if strong(p) != weak(p)
    ]
    ref = copy.deepcopy(tiny_model)
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    stats = train_dpo(
        tiny_model,
        ref,
        tokenizer,
        pairs,
        TrainConfig(optimizer="adamw", lr=3e-3, batch_size=8, warmup_steps=0),
        seed=0,
        epochs=3,
    )
    assert stats["steps"] == 3 * -(-len(pairs) // 8) and len(pairs) > 16
    assert stats["margin"] > 0.1  # β × log-ratio gap: the chosen answers became likelier than the rejected
    assert stats["loss"] < math.log(2)
    for k, v in ref.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("iterated", [False, True])
def test_dpo_elicitation_samples_from_the_reference_and_trains_on_differing_pairs(
    task, tokenizer, tiny_model, iterated
):
    from pwlock.elicit.dpo import dpo_elicitation
    from tests.test_evaluate import _half_trained
    from tests.test_expert_iteration import RecordingGenerator

    problems = _half_trained(task, tokenizer, tiny_model)[:24]  # some right, some wrong: pairs to learn from
    start = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    gen = RecordingGenerator(copy.deepcopy(tiny_model), tokenizer)  # the sampler holds its own weights
    loaded = []
    gen.load_weights = lambda state, g=gen: (
        loaded.append({k: v.clone() for k, v in state.items()}),
        RecordingGenerator.load_weights(g, state),
    )
    ref = copy.deepcopy(tiny_model)  # the locked model; for iterated DPO, the model at the round's start
    gen.load_weights(ref.state_dict())
    records = dpo_elicitation(
        tiny_model,
        ref,
        tokenizer,
        task,
        gen,
        problems,
        task.problems("val")[:30],
        TrainConfig(optimizer="adamw", lr=1e-3, batch_size=4, warmup_steps=0),
        seed=0,
        rounds=2,
        iterated=iterated,
        max_new_tokens=task.max_new_tokens,
    )
    assert [r["samples"] for r in records] == [48, 96]
    assert all(len(out) == 24 and all(len(two) == 2 for two in out) for _, out in gen.calls)
    assert all(r["pairs"] > 0 for r in records)
    # Round 1 samples from the locked model; round 2 from it again (DPO) or from the model after round 1.
    assert all(torch.equal(loaded[0][k], v) for k, v in start.items())
    assert len(loaded) == (2 if iterated else 1)
    assert [r["candidate"] for r in records] == [1, 2]
    if iterated:
        assert any(not torch.equal(loaded[1][k], v) for k, v in start.items())
