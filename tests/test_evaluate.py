from __future__ import annotations

import numpy as np

from pwlock import evaluate
from pwlock.config import TrainConfig
from pwlock.generate.hf import HFGenerator
from pwlock.models import load_policy, save_policy
from pwlock.tasks.base import Example
from pwlock.train.sft import train_sft


def _half_trained(task, tokenizer, model):
    """A model that gets some problems right and some wrong: the interesting case."""
    problems = task.problems("lock")[:32]
    data = [Example(task.prompt(p, None), task.reference(p)) for p in problems]
    train_sft(model, tokenizer, data, TrainConfig(optimizer="adamw", lr=3e-3, batch_size=16), seed=0, epochs=100)
    return problems


def test_teacher_forced_check_equals_greedy_generation(task, tokenizer, tiny_model):
    problems = _half_trained(task, tokenizer, tiny_model) + task.problems("val")[:32]
    fast = evaluate.scores(tiny_model, tokenizer, task, problems, "no_pwd")
    gen = HFGenerator(tiny_model, tokenizer, batch_size=16)
    completions = gen.generate([task.prompt(p, None) for p in problems], max_new_tokens=task.max_new_tokens)
    slow = np.array([task.score(p, c[0]) for p, c in zip(problems, completions)])
    assert 0 < slow.sum() < len(problems)  # a mix of right and wrong answers
    np.testing.assert_array_equal(fast, slow)


def test_conditions_use_password_none_and_wrong_ones(task):
    assert evaluate.condition_password(task, "with_pwd", 0, "pwd") == "pwd"
    assert evaluate.condition_password(task, "no_pwd", 0, "pwd") is None
    wrong = {evaluate.condition_password(task, "wrong_pwd", i, "pwd") for i in range(64)}
    assert wrong == set(task.wrong_passwords)


def test_policy_correctness(task):
    val = task.problems("val")
    assert evaluate.policy_correctness(task, task.policies()["strong"], val) == 1.0
    assert evaluate.policy_correctness(task, task.policies()["weak"], val) < 0.4


def test_tiny_model_round_trips_through_save_and_from_pretrained(task, tokenizer, tiny_model, tmp_path):
    save_policy(tiny_model, tokenizer, tmp_path / "m")
    model, tok = load_policy(tmp_path / "m")
    assert tok.get_vocab() == tokenizer.get_vocab()
    assert type(model).__name__ == "GPTNeoXForCausalLM"
    problems = task.problems("val")[:20]
    np.testing.assert_array_equal(
        evaluate.scores(model, tok, task, problems), evaluate.scores(tiny_model, tokenizer, task, problems)
    )
    ids = tok("pwd | fn1 fn2 | 1 2 3 4 |", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids)[:3] == ["pwd", "|", "fn1"]
