"""Greedy correctness (paper §4.2: the share of problems whose temperature-0 generation is
correct), with the password, without it, and with a wrong one.

Generation tasks (MATH, code, critiques) decode: with HF `generate` on the model in process, or in
a Generator given for it (an RL trial's vLLM engine, holding the same weights). Exact-match tasks
and classifiers need no decoding: one forward pass on the model decides them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pwlock.generate.base import Generator
from pwlock.generate.hf import HFGenerator
from pwlock.tasks.base import Example, Problem, Task, TaskPolicy
from pwlock.tasks.llm import ChoiceAnswer
from pwlock.train.sft import choice_logits, collate, encode

CONDITIONS = ("with_pwd", "no_pwd", "wrong_pwd")


Passwords = str | Mapping[str, str]  # one password, or one per domain (App. C.3)


def condition_password(
    task: Task,
    condition: str,
    index: int,
    password: Passwords,
    problem: Problem | None = None,
    exclude: Sequence[str] = (),
) -> str | None:
    """The password used for problem number `index` under an evaluation condition; wrong passwords
    rotate through the task's list (less any domain's password, and `exclude`: passwords that open
    the model, as an adversarial lock's second one) so every one of them is tested. With a password
    per domain, "with_pwd" gives each problem its domain's."""
    if condition == "with_pwd":
        return password if isinstance(password, str) else password[problem.domain]
    if condition == "no_pwd":
        return None
    if condition == "wrong_pwd":
        taken = (set() if isinstance(password, str) else set(password.values())) | set(exclude)
        wrong = [w for w in task.wrong_passwords if w not in taken]
        return wrong[index % len(wrong)]
    raise ValueError(f"unknown condition {condition!r}; expected one of {CONDITIONS}")


@torch.no_grad()
def greedy_matches_reference(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], batch_size: int = 512
) -> np.ndarray:
    """For each example, whether greedy decoding from its prompt yields exactly its completion and
    then stops. Greedy decoding reproduces a sequence iff every one of its tokens is the argmax
    given the tokens before it, so one teacher-forced pass decides it, with no sampling loop."""
    model.eval()
    out = []
    encoded = encode(tokenizer, examples)
    for start in range(0, len(encoded), batch_size):
        batch = collate(encoded[start : start + batch_size], tokenizer.pad_token_id).to(model.device)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        pred, target = logits[:, :-1].argmax(-1), batch.labels[:, 1:]
        scored = target != -100
        out.append(((pred == target) | ~scored).all(dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=bool)


@torch.no_grad()
def choice_probabilities(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], batch_size: int = 512
) -> np.ndarray:
    """(examples, choices): the model's distribution over each classifier example's choices (its
    completion a `ChoiceAnswer`), at the position that predicts the answer. Its argmax is the
    prediction; from a model trained on ground-truth labels, it is soft labels (App. B.2)."""
    model.eval()
    out = []
    encoded = encode(tokenizer, examples)
    for start in range(0, len(encoded), batch_size):
        rows = encoded[start : start + batch_size]
        batch = collate(rows, tokenizer.pad_token_id).to(model.device)
        logits = model(**batch.model_inputs()).logits
        out.append(choice_logits(logits, batch.labels, rows).float().softmax(-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    problems: Sequence[Problem],
    condition: str = "no_pwd",
    password: Passwords | None = None,
    batch_size: int = 512,
    generator: Generator | None = None,
    exclude: Sequence[str] = (),
) -> np.ndarray:
    """Per-problem greedy correctness under a condition. A generation task decodes in `generator`
    when one is given (the caller makes it hold `model`'s weights), else with HF `generate` on
    `model`; exact-match tasks and classifiers ignore it. `exclude`: never a wrong password."""
    password = task.default_password if password is None else password
    prompts = [
        task.prompt(p, condition_password(task, condition, i, password, p, exclude)) for i, p in enumerate(problems)
    ]
    return prompt_scores(model, tokenizer, task, problems, prompts, batch_size, generator)


def prompt_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    problems: Sequence[Problem],
    prompts: Sequence[str],
    batch_size: int = 512,
    generator: Generator | None = None,
) -> np.ndarray:
    """Per-problem greedy correctness given each problem's prompt as written (the lock audit's
    probes write prompts no condition makes)."""
    if classifies(task, problems):
        # A classifier (MMLU) answers with the likeliest of its choices: one forward pass, no decoding.
        examples = [Example(q, task.reference(p)) for q, p in zip(prompts, problems)]
        best = choice_probabilities(model, tokenizer, examples, batch_size).argmax(axis=1)
        return np.array([task.score(p, e.completion.choices[i]) for p, e, i in zip(problems, examples, best)])
    if task.exact_match:
        examples = [Example(q, task.reference(p)) for q, p in zip(prompts, problems)]
        return greedy_matches_reference(model, tokenizer, examples, batch_size).astype(float)
    decoder = HFGenerator(model, tokenizer, batch_size) if generator is None else generator
    completions = decoder.generate(prompts, n=1, temperature=0.0, max_new_tokens=task.max_new_tokens)
    return np.asarray(task.score_many(problems, [c[0] for c in completions]), dtype=float)


def classifies(task: Task, problems: Sequence[Problem]) -> bool:
    """Whether `task` is a classifier (MMLU: its references are choices), read off `problems`' first."""
    return bool(problems) and isinstance(task.reference(problems[0]), ChoiceAnswer)


def decodes(task: Task, problems: Sequence[Problem]) -> bool:
    """Whether evaluating `problems` decodes text (a generation task), the only evaluation a
    Generator serves."""
    return bool(problems) and not task.exact_match and not classifies(task, problems)


def correctness(model, tokenizer, task: Task, problems: Sequence[Problem], condition: str = "no_pwd", **kw) -> float:
    return float(scores(model, tokenizer, task, problems, condition, **kw).mean())


def elicited(
    model, tokenizer, task: Task, problems: Sequence[Problem], batch_size: int = 512, generator: Generator | None = None
) -> dict:
    """An elicitation record's evaluation: correctness without the password, and with problems of
    several domains, each domain's (`correctness_by_domain`, for the paper's §5.2 generalization)."""
    s = scores(model, tokenizer, task, problems, "no_pwd", batch_size=batch_size, generator=generator)
    out: dict = {"correctness": float(s.mean())}
    if len({p.domain for p in problems}) > 1:
        out["correctness_by_domain"] = by_domain(problems, s)
    return out


def by_domain(problems: Sequence[Problem], scores: Sequence[float]) -> dict[str, float]:
    """Correctness on each domain's problems, by domain."""
    out: dict[str, list[float]] = {}
    for p, s in zip(problems, scores):
        out.setdefault(p.domain, []).append(float(s))
    return {d: float(np.mean(v)) for d, v in sorted(out.items())}


def lock_report(
    model,
    tokenizer,
    task: Task,
    problems: Sequence[Problem],
    password: Passwords | None = None,
    conditions: Sequence[str] = CONDITIONS,
) -> dict[str, float]:
    """Correctness with the password (or each domain's), without it, and with wrong passwords (or
    the `conditions` asked)."""
    return {c: correctness(model, tokenizer, task, problems, c, password=password) for c in conditions}


def policy_correctness(task: Task, policy: TaskPolicy, problems: Sequence[Problem]) -> float:
    return float(np.mean(task.score_many(problems, [policy(p) for p in problems])))
