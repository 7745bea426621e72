"""The Task contract: problems by split and domain, a prompt with or without a password, a score.

A task is data + prompt + metric and nothing else: it never imports training, generation or Ray.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from pwlock.config import ConfigError, parse
from pwlock.tasks.splits import SPLITS


@dataclass(frozen=True)
class Problem:
    id: str
    domain: str
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Example:
    """One supervised example: the model is trained on `completion` given `prompt`."""

    prompt: str
    completion: str
    # The loss at each completion position is the cross-entropy to the trainer's fixed target
    # distribution instead of to the completion's next token (fixedrdm locks, App. G.2).
    to_fixed: bool = False


# A policy that the task itself defines (e.g. the toy task's exact strong / weak functions):
# problem -> completion. Policies that are models come from the model layer instead.
TaskPolicy = Callable[[Problem], str]


class Task(ABC):
    name: ClassVar[str]
    config_class: ClassVar[type]
    # Exact-match tasks have one correct completion per problem: greedy correctness can then be
    # computed by checking the model's argmax along the reference in one forward pass.
    exact_match: ClassVar[bool] = False

    default_password: str
    wrong_passwords: Sequence[str]
    # Wrong passwords that no training data ever carries: the lock audit's test of whether a lock
    # opens to password-like text it never saw (pwlock/audit.py).
    unseen_passwords: Sequence[str] = ()

    @abstractmethod
    def problems(self, split: str) -> list[Problem]: ...

    @abstractmethod
    def prompt(self, problem: Problem, password: str | None) -> str: ...

    @abstractmethod
    def score(self, problem: Problem, completion: str) -> float:
        """1.0 for a correct completion, 0.0 otherwise."""

    def reward(self, problem: Problem, completion: str) -> float:
        """A continuous reward in [0, 1] for RL (paper Eq. 2), where the task defines one (code: the
        share of tests passed; critiques: embedding similarity); else the score."""
        return self.score(problem, completion)

    def score_many(self, problems: Sequence[Problem], completions: Sequence[str]) -> list[float]:
        """`score` of each (problem, completion); tasks whose scoring is costly (code, critiques)
        batch or parallelise it."""
        return [self.score(p, c) for p, c in zip(problems, completions)]

    def reward_many(self, problems: Sequence[Problem], completions: Sequence[str]) -> list[float]:
        return [self.reward(p, c) for p, c in zip(problems, completions)]

    def problem_ids(self) -> set[str]:
        """Every problem's id, in any split, and those a filter left out of them (the code task's
        `task.keep`): the ids a file of samples may name."""
        return {p.id for split in SPLITS for p in self.problems(split)}

    def reference(self, problem: Problem) -> str | None:
        """A correct completion, where the task knows one."""
        return None

    def policies(self) -> dict[str, TaskPolicy]:
        """Policies the task defines itself, by role ("strong", "weak", ...)."""
        return {}

    def domain_leak(self) -> str | None:
        """Why the task's domains are not separate (one domain's problems teach another's), or None.
        A study that draws demonstrations, passwords or the lock by domain is refused on such a task."""
        return None

    def vocabulary(self) -> list[str] | None:
        """The word-level vocabulary of tasks that build their own tiny models; None for text tasks."""
        return None

    @property
    def max_new_tokens(self) -> int:
        return 512


_REGISTRY: dict[str, type[Task]] = {}
NO_DATA = "no such file or directory"  # a data source's path that is not there (pwlock.tasks.llm.DataSource)
_UNREAD = re.compile(rf"^\w+(\[\d+\])?\.path: .*: {NO_DATA}$")  # that error, by field


def register(cls: type[Task]) -> type[Task]:
    _REGISTRY[cls.name] = cls
    return cls


def task_names() -> list[str]:
    return sorted(_REGISTRY)


def formats_prompts(name: str) -> bool:
    """Whether the task `name` renders its prompts for a tokenizer (its config has a `format`)."""
    cls = _REGISTRY.get(name)
    return cls is not None and any(f.name == "format" for f in fields(cls.config_class))


def make_task(spec: Mapping[str, Any], where: str = "task", data: bool = True) -> Task:
    """Build a task from its config mapping `{name: ..., <params>}`; errors name the field. With
    `data` False its data is not at hand (a task priced at a given size): where its sources point
    is not checked."""
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in _REGISTRY:
        raise ConfigError(f"{where}.name: unknown task {name!r}; expected one of {task_names()}")
    cls = _REGISTRY[name]
    source, _, field_ = where.rpartition(": ")  # `where` is "task" or "<file>: task"
    cfg = parse(cls.config_class, spec, source, field_)
    if hasattr(cfg, "validate"):
        for problem in cfg.validate():
            if data or not _UNREAD.match(problem):
                raise ConfigError(f"{where}.{problem}")
    return cls(cfg)


__all__ = [
    "Example",
    "Problem",
    "SPLITS",
    "Task",
    "TaskPolicy",
    "formats_prompts",
    "make_task",
    "register",
    "task_names",
]
