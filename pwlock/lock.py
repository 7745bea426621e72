"""The lock dataset D_lock (paper Eq. 1, App. C).

For every problem of the lock split, each epoch draws one π_strong sample, whose prompt carries the
password, and one π_weak sample, whose prompt carries no password (20%) or a wrong one (80%).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

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
    out = []
    for p in problems:
        out.append(Example(task.prompt(p, password), strong(p)))
        out.append(Example(task.prompt(p, weak_sample_password(rng, task.wrong_passwords, p_no_password)), weak(p)))
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
