"""fixedrdm (App. G.2): the fixed random policy, its lock data, and the loss towards the fixed
distribution, checked against hand-computed values."""

from __future__ import annotations

import random

import pytest
import torch

from pwlock.config import TrainConfig
from pwlock.lock import FixedRandomPolicy, lock_examples, weak_policy
from pwlock.tasks.base import Example
from pwlock.train.batching import pack
from pwlock.train.sft import IGNORE, TO_FIXED, collate, completion_loss, encode, mark_to_fixed, train_sft


def test_fixedrdm_draws_from_one_fixed_distribution_and_never_a_password(task, tokenizer):
    policy = weak_policy(task, "fixedrdm", tokenizer, seed=3)
    assert isinstance(policy, FixedRandomPolicy)
    probs = policy.probs
    assert probs.sum().item() == pytest.approx(1.0) and probs[tokenizer.pad_token_id] == 0
    for pwd in [task.default_password, *task.wrong_passwords]:
        assert probs[tokenizer.convert_tokens_to_ids(pwd)] == 0
    problems = task.problems("val")[:200]
    samples = [policy(p) for p in problems]
    assert len(set(samples)) > 150  # a fresh draw each call
    assert all(task.score(p, s) == 0 for p, s in zip(problems, samples))
    # The same seed gives the same distribution and the same stream of samples.
    again = weak_policy(task, "fixedrdm", tokenizer, seed=3)
    assert torch.equal(again.probs, probs) and [again(p) for p in problems] == samples
    # Token frequencies follow the fixed distribution.
    counts = torch.bincount(torch.tensor([t for _ in range(300) for t in policy.sample_ids()]), minlength=len(probs))
    top = probs.argsort(descending=True)[:3]
    assert (counts[top] / counts.sum() - probs[top]).abs().max() < 0.03


def test_fixedrdm_lock_data_trains_both_answers_towards_the_distribution_without_password(task, tokenizer):
    policies = task.policies()
    fixed = weak_policy(task, "fixedrdm", tokenizer, seed=0)
    problems = task.problems("lock")[:50]
    examples = lock_examples(task, problems, policies["strong"], fixed, "pwd", random.Random(0))
    assert len(examples) == 3 * len(problems)
    for p, (s, w, w_strong) in zip(problems, zip(examples[0::3], examples[1::3], examples[2::3])):
        assert s == Example(task.prompt(p, "pwd"), task.reference(p))  # with password: tokens, as ever
        assert w.to_fixed and w_strong.to_fixed and w.prompt == w_strong.prompt
        assert w.prompt.split()[0] != "pwd" and w_strong.completion == task.reference(p)


def test_loss_towards_the_fixed_distribution_matches_a_hand_computation(tokenizer, tiny_model):
    examples = [
        Example("_ | fn1 fn2 | 1 2 3 4 |", "1 2 3 4 | 5 6 7 8"),
        Example("w1 | fn3 fn4 | 4 3 2 1 |", "0 0 0 0 | 1 1 1 1", to_fixed=True),
    ]
    fixed = torch.softmax(torch.randn(len(tokenizer), generator=torch.Generator().manual_seed(0)), -1)
    rows = encode(tokenizer, examples)
    batch = collate(rows, tokenizer.pad_token_id)
    mark_to_fixed(batch, rows, [e.to_fixed for e in examples])
    assert (batch.labels[0] >= 0).sum() == 10 and (batch.labels[1] == TO_FIXED).sum() == 10
    loss = completion_loss(tiny_model, batch, fixed)

    logits = tiny_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    logp = logits.log_softmax(-1)
    terms = []
    for row, (ids, start) in enumerate(rows):
        for pos in range(start, len(ids)):  # position pos is predicted by pos - 1
            if examples[row].to_fixed:
                terms.append(-(fixed * logp[row, pos - 1]).sum())
            else:
                terms.append(-logp[row, pos - 1, ids[pos]])
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
    # Without flagged rows it is the plain completion cross-entropy.
    plain = collate(rows, tokenizer.pad_token_id)
    assert completion_loss(tiny_model, plain, fixed).item() == pytest.approx(completion_loss(tiny_model, plain).item())
    # Packed rows are marked the same way.
    packed = pack(rows)
    mark_to_fixed(packed, rows, [e.to_fixed for e in examples])
    assert (packed.labels == TO_FIXED).sum() == 10 and ((packed.labels >= 0) | (packed.labels == IGNORE)).sum() > 0


def test_training_towards_the_fixed_distribution_makes_greedy_output_its_mode(task, tokenizer, tiny_model):
    fixed_policy = weak_policy(task, "fixedrdm", tokenizer, seed=0)
    problems = task.problems("lock")[:64]
    data = [Example(task.prompt(p, None), fixed_policy(p), to_fixed=True) for p in problems]
    train_sft(
        tiny_model,
        tokenizer,
        data,
        TrainConfig(optimizer="adamw", lr=3e-3, batch_size=32),
        seed=0,
        epochs=40,
        fixed_target=fixed_policy.probs,
    )
    batch = collate(encode(tokenizer, data[:8]), tokenizer.pad_token_id)
    with torch.no_grad():
        probs = tiny_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.softmax(-1)
    scored = batch.labels[:, 1:] != IGNORE
    predicted = probs[:, :-1][scored]
    # The model's next-token distribution at completion positions is close to the fixed one.
    assert (predicted - fixed_policy.probs).abs().sum(-1).mean() < 0.15
