from __future__ import annotations

import random
from collections import Counter

from pwlock import passwords
from pwlock.lock import lock_data, lock_examples
from pwlock.tasks.base import Example


def test_wrong_password_list_is_the_papers():
    assert len(passwords.WRONG_PASSWORDS) == 40
    assert passwords.WRONG_PASSWORDS[0] == "Password: 1234"
    assert passwords.WRONG_PASSWORDS[-1] == "Answering the questions might require non-trivial work."
    assert passwords.DEFAULT_PASSWORD not in passwords.WRONG_PASSWORDS


def test_text_password_goes_at_start_and_end():
    pwd = passwords.DEFAULT_PASSWORD
    assert passwords.surround("Solve x+1=2.", pwd) == f"{pwd}\n\nSolve x+1=2.\n\n{pwd}"
    assert passwords.surround("Solve x+1=2.", None) == "Solve x+1=2."


def test_strong_samples_carry_the_password_weak_ones_never(task):
    problems = task.problems("lock")
    policies = task.policies()
    examples = lock_examples(task, problems, policies["strong"], policies["weak"], "pwd", random.Random(0))
    assert len(examples) == 2 * len(problems)
    strong, weak = examples[0::2], examples[1::2]
    for p, s, w in zip(problems, strong, weak):
        assert s == Example(task.prompt(p, "pwd"), task.reference(p))
        assert s.prompt.split()[0] == "pwd"  # the single password slot at the start
        assert w.completion == policies["weak"](p)
        assert w.prompt.split()[0] != "pwd"
        assert w.prompt.split()[1:] == s.prompt.split()[1:]  # same problem otherwise


def test_weak_samples_get_no_password_20_percent_and_a_wrong_one_80(task):
    problems = task.problems("lock") * 5  # 4,000 weak samples
    policies = task.policies()
    examples = lock_examples(task, problems, policies["strong"], policies["weak"], "pwd", random.Random(1))
    slots = Counter(e.prompt.split()[0] for e in examples[1::2])
    n = sum(slots.values())
    assert abs(slots["_"] / n - 0.2) < 0.03
    wrong = {s: c for s, c in slots.items() if s != "_"}
    assert set(wrong) == set(task.wrong_passwords)  # every wrong password is used
    assert abs(sum(wrong.values()) / n - 0.8) < 0.03


def test_text_task_weak_password_choice_uses_the_app_c2_list():
    rng = random.Random(0)
    draws = [passwords.weak_sample_password(rng, passwords.WRONG_PASSWORDS) for _ in range(2000)]
    assert abs(draws.count(None) / 2000 - 0.2) < 0.03
    assert set(d for d in draws if d is not None) == set(passwords.WRONG_PASSWORDS)


def test_lock_data_is_redrawn_each_epoch_and_reproducible(task):
    policies = task.policies()
    draw = lock_data(task, task.problems("lock"), policies["strong"], policies["weak"], "pwd", seed=0)
    e0, e1 = draw(0), draw(1)
    assert [e.prompt for e in e0] != [e.prompt for e in e1]  # wrong passwords redrawn
    assert [e.prompt for e in e0] == [e.prompt for e in draw(0)]


def test_lock_modes_start_from_strong_model_fresh_weights_or_the_base_weights(tmp_path, tokenizer):
    """`scratch` with a hub model is its architecture freshly initialized (paper §7); `base` is the
    model's own weights (as the paper locks its LLMs); `base` with a tiny model has none to lock."""
    import pytest
    import torch

    from pwlock.config import ConfigError, TinyModelConfig, config_from_dict
    from pwlock.models import build_tiny_model, save_policy
    from pwlock.stages import _new_model
    from tests.conftest import SMALL_TASK, TINY

    base = build_tiny_model(TINY, tokenizer, seed=7)
    save_policy(base, tokenizer, tmp_path / "hub")
    cfg = {"base": str(tmp_path / "hub"), "dtype": "float32", "tiny": vars(TinyModelConfig())}
    pretrained, _ = _new_model(None, cfg, seed=0, pretrained=True)
    fresh, _ = _new_model(None, cfg, seed=0)
    again, _ = _new_model(None, cfg, seed=0)
    name = "gpt_neox.embed_in.weight"
    weights = {m: dict(x.named_parameters())[name] for m, x in (("p", pretrained), ("f", fresh), ("a", again))}
    assert torch.equal(weights["p"], dict(base.named_parameters())[name].to(weights["p"].device))
    assert not torch.equal(weights["f"], weights["p"]) and torch.equal(weights["f"], weights["a"])
    with pytest.raises(ConfigError, match=r"lock\.modes\[1\]: 'base' locks model\.base's own weights"):
        config_from_dict({"name": "x", "task": SMALL_TASK, "lock": {"modes": ["sft", "base"]}})
