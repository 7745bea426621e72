"""A task at a given size, standing in for one whose data is not at hand: the real task's class,
settings, passwords and domains' names, with placeholder problems of the counts, domain shares and
token lengths a study description gives (pwlock.description). It is planned and priced, never
trained on or scored."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from pwlock.config import ConfigError
from pwlock.cost import CHARS_PER_TOKEN
from pwlock.tasks.base import Problem, Task
from pwlock.tasks.llm import seeded_splits
from pwlock.tasks.splits import SPLITS


@dataclass
class TokenSize:
    prompt: float  # tokens of a prompt, with the password at both ends
    completion: float  # tokens of a reference completion, with its end token


@dataclass
class TaskSize:
    tokens: TokenSize
    problems: int = 0  # in all, split 10 / 40 / 30 / 20 (pwlock.tasks.splits) ...
    splits: dict[str, int] = field(default_factory=dict)  # ... or each split's, where the task keeps its data set's
    # Shares of the problems by domain, under the name of the task's `domains` setting ("type" or
    # "level" for MATH) or of its one grouping (MMLU's "category"); none: one domain, "all".
    domains: dict[str, dict[str, float]] = field(default_factory=dict)

    def validate(self) -> list[str]:
        if self.splits:
            errors = [] if not self.problems else ["problems: expected either problems or splits, not both"]
            if set(self.splits) != set(SPLITS) or min(self.splits.values()) < 1:
                errors.append(f"splits: expected a count >= 1 for each of {list(SPLITS)}, got {self.splits}")
        else:
            few = self.problems < len(SPLITS)
            errors = [f"problems: expected >= {len(SPLITS)}, got {self.problems}"] if few else []
        errors += [f"tokens.{k}: expected > 0, got {v}" for k, v in vars(self.tokens).items() if not v > 0]
        for kind, shares in self.domains.items():
            if not shares or any(s <= 0 for s in shares.values()) or abs(sum(shares.values()) - 1) > 0.01:
                errors.append(f"domains.{kind}: expected shares > 0 that sum to 1, got {shares}")
        return errors


class _Sized:
    """What a sized task overrides of its task's class (placed first in the view's bases)."""

    _size: TaskSize
    _domains: dict[str, float]

    @cached_property
    def _sized_splits(self) -> dict[str, list[Problem]]:
        return _placeholders(self._size.problems, tuple(self._size.splits.items()), tuple(self._domains.items()))

    def problems(self, split: str) -> list[Problem]:
        if split not in SPLITS:
            raise KeyError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
        return self._sized_splits[split]

    def problem_ids(self) -> set[str]:  # its placeholders' (the task's own may read its data)
        return {p.id for split in SPLITS for p in self.problems(split)}

    def prompt(self, problem: Problem, password: str | None) -> str:
        length = round(self._size.tokens.prompt * CHARS_PER_TOKEN)
        ends = f"{password} " if password else ""
        body = "x" * max(1, length - 2 * len(ends))
        return f"{ends}{body}{ends[::-1]}"

    def reference(self, problem: Problem):
        answer = getattr(self, "answer", None)  # a classifier's choices (MMLU): a choice, not text
        if callable(answer) and hasattr(self, "choices"):
            return answer(int(problem.id.rpartition("/")[2]) % len(self.choices))
        return "x" * round(max(1.0, self._size.tokens.completion - 1) * CHARS_PER_TOKEN)

    def score(self, problem: Problem, completion: str) -> float:
        raise RuntimeError(f"task {self.name!r} at a given size has placeholder problems: it plans, it cannot score")


@functools.cache  # one size serves every config of its task in a description
def _placeholders(
    problems: int, splits: tuple[tuple[str, int], ...], domains: tuple[tuple[str, float], ...]
) -> dict[str, list[Problem]]:
    """Placeholder problems by split: `splits`' counts (drawn at random from all), or `problems`
    split 10 / 40 / 30 / 20; problem i's domain by its place in 0..n, so that every split, drawn at
    random, gets each domain's share."""
    counts = dict(splits)
    n = sum(counts.values()) if counts else problems
    names = [d for d, _ in domains]
    bounds = np.cumsum([share for _, share in domains])
    which = np.minimum(np.searchsorted(bounds, (np.arange(n) + 0.5) / n), len(names) - 1)
    every = [Problem(f"sized/{i}", names[w]) for i, w in enumerate(which.tolist())]
    if counts:
        order = np.random.default_rng(0).permutation(n).tolist()
        starts = np.cumsum([0] + [counts[s] for s in SPLITS]).tolist()
        idx = {s: sorted(order[starts[i] : starts[i + 1]]) for i, s in enumerate(SPLITS)}
    else:
        idx = seeded_splits(n, 0)
    return {s: [every[i] for i in ids] for s, ids in idx.items()}


_VIEWS: dict[type, type] = {}


def sized(task: Task, size: TaskSize, where: str = "sizes") -> Task:
    """`task` at `size`: an instance of `task`'s class (whatever tests its type sees the same), with
    `size`'s placeholder problems in place of its data."""
    cls = type(task)
    kind = getattr(getattr(task, "cfg", None), "domains", None)
    if not size.domains:
        domains = {"all": 1.0}
    elif isinstance(kind, str):
        if kind not in size.domains:
            raise ConfigError(f"{where}.domains: task {task.name!r} groups by {kind!r}; expected its shares there")
        domains = size.domains[kind]
    elif len(size.domains) == 1:
        domains = next(iter(size.domains.values()))
    else:
        raise ConfigError(f"{where}.domains: task {task.name!r} has one grouping; expected one entry")
    if cls not in _VIEWS:
        _VIEWS[cls] = type(f"Sized{cls.__name__}", (_Sized, cls), {"__module__": __name__})
    view = object.__new__(_VIEWS[cls])
    view.__dict__.update(task.__dict__)
    view._size, view._domains = size, domains
    return view


def is_sized(task: Task) -> bool:
    """Whether `task` is a stand-in at a given size (its problems are placeholders)."""
    return isinstance(task, _Sized)


__all__ = ["TaskSize", "TokenSize", "is_sized", "sized"]
