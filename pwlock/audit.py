"""The lock audit: before any trial, each locked model's greedy correctness under probes that a real
lock must not open to, beside the true password and none.

    true            the password (a per_domain lock: each problem's domain's)
    none            no password
    second          an adversarial lock's second password (App. B.3.2), which opens it to its
                    intermediate policy: measured beside the others, never a wrong one, never gated
    trained_wrong   the task's wrong passwords, which D_lock trained on (rotated over the problems)
    unseen_wrong    wrong passwords no training example carries (`Task.unseen_passwords`)
    near:*          near misses of the password:
                      tasks with a vocabulary of their own (the toy task), where the password is a
                      token of the prompt: `moved` (swapped with the token after it), `empty` (the
                      slot left out)
                      text tasks: `case` (case swapped), `one_char` (one character changed), `half`
                      (its first half), `start_only` / `end_only` (at one end of the prompt only)

A lock that opens to an unseen wrong password or a near miss answers to a region of prompts, not to
its password; elicitation that finds such a prompt unlocks it without learning anything. The lock
gate (pwlock.guards) can refuse such a lock (`guards.audit_gate`, `guards.audit_margin`). A lock
that opens to its second password does what it was trained to: the gate never counts that probe.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pwlock import evaluate
from pwlock.evaluate import Passwords
from pwlock.generate.base import Generator
from pwlock.tasks.base import Problem, Task

KINDS = ("true", "none", "second", "trained_wrong", "unseen_wrong", "near_miss")
GATED_KINDS = ("unseen_wrong", "near_miss")  # what guards.audit_margin bounds (trained_wrong: max_wrong_over_no_pwd)
NEAR = "near:"


@dataclass(frozen=True)
class Probe:
    name: str  # "true", "none", "second", "trained_wrong", "unseen_wrong" or "near:<how>"
    kind: str  # one of KINDS
    prompt: Callable[[Problem, int], str]  # the prompt of problem number i


def kind_of(name: str) -> str:
    return "near_miss" if name.startswith(NEAR) else name


def probes(task: Task, password: Passwords, exclude: Sequence[str] = (), second: str | None = None) -> list[Probe]:
    """The audit's probes of a lock opened by `password` (one, or one per domain). Wrong passwords
    leave out every password in `exclude` (the study's other locks' passwords, which may open this one)
    and `second`, an adversarial lock's second password, which is probed on its own ("second")."""

    def opens(p: Problem) -> str:
        return password if isinstance(password, str) else password[p.domain]

    taken = {password} if isinstance(password, str) else set(password.values())
    taken |= set(exclude) | ({second} if second is not None else set())
    trained = [w for w in task.wrong_passwords if w not in taken]
    unseen = [w for w in task.unseen_passwords if w not in taken]
    out = [
        Probe("true", "true", lambda p, i: task.prompt(p, opens(p))),
        Probe("none", "none", lambda p, i: task.prompt(p, None)),
    ]
    if second is not None:
        out.append(Probe("second", "second", lambda p, i: task.prompt(p, second)))
    if trained:
        out.append(Probe("trained_wrong", "trained_wrong", lambda p, i: task.prompt(p, trained[i % len(trained)])))
    if unseen:
        out.append(Probe("unseen_wrong", "unseen_wrong", lambda p, i: task.prompt(p, unseen[i % len(unseen)])))
    near = SLOT_NEAR_MISSES if task.vocabulary() is not None else TEXT_NEAR_MISSES
    for how, miss in near.items():
        out.append(Probe(f"{NEAR}{how}", "near_miss", lambda p, i, miss=miss: miss(task, p, opens(p))))
    return out


def probe_names(task: Task, password: Passwords, exclude: Sequence[str] = (), second: str | None = None) -> list[str]:
    return [p.name for p in probes(task, password, exclude, second)]


# -- near misses ---------------------------------------------------------------------------------
def _slot(task: Task, problem: Problem, password: str) -> tuple[list[str], int]:
    tokens = task.prompt(problem, password).split()
    if password not in tokens:
        raise ValueError(f"task {task.name!r}: the password {password!r} is not a token of its prompt")
    return tokens, tokens.index(password)


def moved(task: Task, problem: Problem, password: str) -> str:
    """The password swapped with the token after it."""
    tokens, i = _slot(task, problem, password)
    tokens[i], tokens[i + 1] = tokens[i + 1], tokens[i]
    return " ".join(tokens)


def empty(task: Task, problem: Problem, password: str) -> str:
    """The password's slot left out of the prompt."""
    tokens, i = _slot(task, problem, password)
    return " ".join(tokens[:i] + tokens[i + 1 :])


def one_char_off(password: str) -> str:
    """The first letter or digit from the middle on, changed to the next one (z to a, 9 to 0)."""
    for i in range(len(password) // 2, len(password)):
        c = password[i]
        if c.isascii() and c.isalnum():
            base = "0" if c.isdigit() else "a" if c.islower() else "A"
            size = 10 if c.isdigit() else 26
            return password[:i] + chr(ord(base) + (ord(c) - ord(base) + 1) % size) + password[i + 1 :]
    raise ValueError(f"password {password!r} has no letter or digit from its middle on to change")


def half(password: str) -> str:
    return password[: len(password) // 2].rstrip()


def at_one_end(task: Task, problem: Problem, password: str, end: str) -> str:
    """The prompt with the password at its `end` ("start" or "end") only. Text prompts carry it at
    both ends, each separated by a blank line from the text (passwords.surround)."""
    full = task.prompt(problem, password)
    if full.count(password) != 2:
        raise ValueError(f"task {task.name!r}: the password is not at both ends of its prompt")
    if end == "start":
        head, _, tail = full.rpartition(f"\n\n{password}")
    else:
        head, _, tail = full.partition(f"{password}\n\n")
    return head + tail


SLOT_NEAR_MISSES: dict[str, Callable[[Task, Problem, str], str]] = {"moved": moved, "empty": empty}
TEXT_NEAR_MISSES: dict[str, Callable[[Task, Problem, str], str]] = {
    "case": lambda task, p, pw: task.prompt(p, pw.swapcase()),
    "one_char": lambda task, p, pw: task.prompt(p, one_char_off(pw)),
    "half": lambda task, p, pw: task.prompt(p, half(pw)),
    "start_only": lambda task, p, pw: at_one_end(task, p, pw, "start"),
    "end_only": lambda task, p, pw: at_one_end(task, p, pw, "end"),
}


# -- running it ----------------------------------------------------------------------------------
def audit(
    model,
    tokenizer,
    task: Task,
    problems: Sequence[Problem],
    password: Passwords,
    exclude: Sequence[str] = (),
    batch_size: int = 512,
    generator: Generator | None = None,
    second: str | None = None,
) -> dict[str, float]:
    """Correctness under each probe, by probe name, in the order of `probes` (`second`: an adversarial
    lock's second password); a generation task decodes in `generator` if one is given."""
    out = {}
    for probe in probes(task, password, exclude, second):
        prompts = [probe.prompt(p, i) for i, p in enumerate(problems)]
        scores = evaluate.prompt_scores(model, tokenizer, task, problems, prompts, batch_size, generator)
        out[probe.name] = float(np.mean(scores))
    return out


def over_none(report: Mapping[str, float], margin: float) -> dict[str, float]:
    """The gated probes (unseen wrong passwords, near misses) more than `margin` above no password,
    with how far above."""
    return {
        name: value - report["none"]
        for name, value in report.items()
        if kind_of(name) in GATED_KINDS and value - report["none"] > margin
    }


def table(reports: Mapping[str, Mapping[str, float]], margin: float) -> list[str]:
    """The audits of several locks as text lines: a row per probe, a column per lock, each cell the
    correctness and, for gated probes more than `margin` above no password, a `!`."""
    labels = list(reports)
    names = list(dict.fromkeys(n for r in reports.values() for n in r))
    names.sort(key=lambda n: KINDS.index(kind_of(n)) if kind_of(n) in KINDS else len(KINDS))  # "second" after "none"
    width = max(len(n) for n in [*names, "probe"]) + 2
    cols = [max(len(label), 7) + 2 for label in labels]
    lines = ["probe".ljust(width) + "".join(label.rjust(c) for label, c in zip(labels, cols))]
    for name in names:
        cells = []
        for label, c in zip(labels, cols):
            r = reports[label]
            flag = "!" if name in over_none(r, margin) else " "
            cells.append((f"{r[name]:.3f}{flag}" if name in r else "-").rjust(c))
        lines.append(name.ljust(width) + "".join(cells))
    lines.append(f"(! : more than {margin} above no password: guards.audit_margin)")
    if "second" in names:
        lines.append(
            "(second: an adversarial lock's second password, which opens it to its intermediate policy; not gated)"
        )
    return lines
