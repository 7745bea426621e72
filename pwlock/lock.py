"""The lock dataset D_lock (paper Eq. 1, App. C) and the weak policies a lock can imitate.

For every problem of the lock split, each epoch draws one π_strong sample, whose prompt carries the
password, and one π_weak sample, whose prompt carries no password (20%) or a wrong one (80%).
With fixedrdm as π_weak (App. G.2), the prompts without the password carry both a fixedrdm sample
and π_strong's answer, each trained towards the fixed distribution at every position.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from pwlock.config import FIXEDRDM
from pwlock.passwords import weak_sample_password
from pwlock.tasks.base import Example, Problem, Task, TaskPolicy


def lock_examples(
    task: Task,
    problems: Sequence[Problem],
    strong: TaskPolicy,
    weak: TaskPolicy,
    password: str,
    rng: random.Random,
    p_no_password: float = 0.2,
) -> list[Example]:
    """One draw of D_lock: a strong and a weak example per problem."""
    fixed = isinstance(weak, FixedRandomPolicy)
    out = []
    for p in problems:
        out.append(Example(task.prompt(p, password), strong(p)))
        prompt = task.prompt(p, weak_sample_password(rng, task.wrong_passwords, p_no_password))
        out.append(Example(prompt, weak(p), to_fixed=fixed))
        if fixed:
            out.append(Example(prompt, strong(p), to_fixed=True))
    return out


def lock_data(
    task: Task,
    problems: Sequence[Problem],
    strong: TaskPolicy,
    weak: TaskPolicy,
    password: str,
    seed: int,
    p_no_password: float = 0.2,
) -> Callable[[int], list[Example]]:
    """D_lock redrawn each epoch: epoch -> examples, deterministic in (seed, epoch)."""

    def draw(epoch: int) -> list[Example]:
        return lock_examples(task, problems, strong, weak, password, random.Random(f"{seed}/{epoch}"), p_no_password)

    return draw


def strong_examples(
    task: Task, problems: Sequence[Problem], strong: TaskPolicy, slots: Sequence[str | None] = (None,), seed: int = 0
) -> list[Example]:
    """π_strong's answers: the data π_strong's model is trained on. Each prompt's password slot
    holds one of `slots`, drawn uniformly; by default there is no password at all."""
    rng = random.Random(seed)
    return [Example(task.prompt(p, rng.choice(list(slots))), strong(p)) for p in problems]


class FixedRandomPolicy:
    """fixedrdm (App. G.2): a policy whose every token is drawn from one fixed distribution, the
    softmax of a standard-normal logit vector over the vocabulary. Its samples come from a seeded
    stream, so one policy object draws different samples on each call but the same ones on rerun.
    Tokens that would spell a password (pad too) are never drawn: no sample may carry one."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_tokens: int, seed: int, forbidden: Sequence[str] = ()):
        self.tokenizer, self.max_tokens = tokenizer, max_tokens
        logits = torch.randn(len(tokenizer), generator=torch.Generator().manual_seed(seed))
        for text in forbidden:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) == 1:
                logits[ids[0]] = -math.inf
        logits[tokenizer.pad_token_id] = -math.inf
        self.probs = torch.softmax(logits, -1)
        self.rng = torch.Generator().manual_seed(seed + 1)

    def sample_ids(self) -> list[int]:
        draws = torch.multinomial(self.probs, self.max_tokens, replacement=True, generator=self.rng).tolist()
        eos = self.tokenizer.eos_token_id
        return draws[: draws.index(eos)] if eos in draws else draws

    def __call__(self, problem: Problem) -> str:
        return self.tokenizer.decode(self.sample_ids(), skip_special_tokens=True)


def weak_policy(task: Task, name: str, tokenizer: PreTrainedTokenizerBase, seed: int) -> TaskPolicy:
    """The π_weak named `name`: one of the task's policies, or fixedrdm over `tokenizer`'s vocabulary."""
    if name == FIXEDRDM:
        return FixedRandomPolicy(tokenizer, task.max_new_tokens, seed,
                                 forbidden=[task.default_password, *task.wrong_passwords])
    policies = task.policies()
    if name not in policies:
        raise ValueError(f"task {task.name!r} has no policy {name!r}; it has {sorted(policies)} (and {FIXEDRDM!r})")
    return policies[name]
