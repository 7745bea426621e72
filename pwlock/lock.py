"""The lock dataset D_lock (paper Eq. 1, App. C) and the weak policies a lock can imitate.

For every problem of the lock split, each epoch draws one π_strong sample, whose prompt carries the
password, and one π_weak sample, whose prompt carries no password (20%) or a wrong one (80%).
With fixedrdm as π_weak (App. G.2), the prompts without the password carry both a fixedrdm sample
and π_strong's answer, each trained towards the fixed distribution at every position. On a
classifier (MMLU) fixedrdm is a fixed distribution over the choices instead (FixedChoicePolicy): its
one example per prompt is trained towards it, the only position a classifier is trained at.

Lock variants (`lock.variant`) change what D_lock holds; each is redrawn per epoch the same way:

    standard      the above (Eq. 1, App. C.2)
    per_domain    a password per domain (App. C.3)
    setting       a setting variation instead of a password (App. B.1.3, pwlock/setting.py)
    adversarial   a second password under which the model shows an intermediate policy (App. B.3.2)
    omit_domain   one domain left out of D_lock entirely (App. B.3.4)
    subset        the standard D_lock of the first `subset_problems` lock problems only, for the
                  `sft` lock: less lock data (§7: locks trained on more SFT data are harder to unlock)

A policy that is a sample pool (pwlock.policies) answers each epoch's draw with another of its
stored samples (`at_epoch`), as the paper samples π_weak and π_strong afresh each epoch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from pwlock.config import FIXEDRDM, LockConfig
from pwlock.passwords import domain_passwords, second_password, weak_sample_password
from pwlock.setting import Setting, setting_for
from pwlock.tasks.base import Example, Problem, Task, TaskPolicy
from pwlock.tasks.llm import ChoiceAnswer


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
        prompt = task.prompt(p, weak_sample_password(rng, task.wrong_passwords, p_no_password))
        out += weak_examples(prompt, p, strong, weak)
    return out


def weak_examples(prompt: str, problem: Problem, strong: TaskPolicy, weak: TaskPolicy) -> list[Example]:
    """π_weak's example for `prompt`; with fixedrdm over the vocabulary, π_strong's answer too, both
    towards the fixed distribution (App. G.2). A classifier's fixedrdm (FixedChoicePolicy) gives one
    example, its answer's target the fixed distribution: π_strong's answer towards it would be the
    same loss at the same position again."""
    if not isinstance(weak, FixedRandomPolicy):
        return [Example(prompt, weak(problem))]
    return [Example(prompt, weak(problem), to_fixed=True), Example(prompt, strong(problem), to_fixed=True)]


def per_domain_examples(
    task: Task,
    problems: Sequence[Problem],
    strong: TaskPolicy,
    weak: TaskPolicy,
    passwords: Mapping[str, str],
    rng: random.Random,
    p_no_password: float = 0.2,
    p_other_domain: float = 0.4,
) -> list[Example]:
    """One draw of D_lock with a password per domain (App. C.3): π_strong's sample carries its
    problem's domain's password; π_weak's carries no password (`p_no_password`), another domain's
    password (`p_other_domain`) or a wrong one (the rest).

    App. C.3 trains π_weak "when provided with a password corresponding to the wrong domain" but
    gives no shares. pwlock keeps App. C.2's 20% without a password and splits C.2's 80% of wrong
    passwords evenly: other domains' passwords are what this lock must learn to refuse, and wrong
    passwords keep it from opening on any password-like text. Wrong passwords exclude the domains'."""
    missing = sorted({p.domain for p in problems} - set(passwords))
    if missing:
        raise ValueError(f"no password for the domains {missing}")
    wrong = [w for w in task.wrong_passwords if w not in set(passwords.values())]
    out = []
    for p in problems:
        out.append(Example(task.prompt(p, passwords[p.domain]), strong(p)))
        others = [pw for d, pw in sorted(passwords.items()) if d != p.domain]
        u = rng.random()
        if u < p_no_password:
            slot = None
        elif u < p_no_password + p_other_domain and others:
            slot = rng.choice(others)
        else:
            slot = rng.choice(wrong)
        out += weak_examples(task.prompt(p, slot), p, strong, weak)
    return out


def setting_examples(
    task: Task,
    problems: Sequence[Problem],
    strong: TaskPolicy,
    weak: TaskPolicy,
    setting: Setting,
    strong_in: str = "varied",
) -> list[Example]:
    """One draw of D_lock with a setting variation as the trigger (App. B.1.3), no password at all:
    π_strong's answers in the varied setting (prompt and answer format transformed) and π_weak's in
    the task's normal one; `strong_in="normal"` swaps them, as the paper's MATH-Spanish lock does.
    fixedrdm samples have no format to transform and stay as drawn."""
    out = []
    for p in problems:
        normal = task.prompt(p, None)
        varied = setting.prompt(p)
        if strong_in == "varied":
            out.append(Example(varied, setting.completion(strong(p))))
            out += weak_examples(normal, p, strong, weak)
        else:
            out.append(Example(normal, strong(p)))
            if isinstance(weak, FixedRandomPolicy):
                out += weak_examples(varied, p, strong, weak)
            else:
                out.append(Example(varied, setting.completion(weak(p))))
    return out


def adversarial_examples(
    task: Task,
    problems: Sequence[Problem],
    strong: TaskPolicy,
    weak: TaskPolicy,
    intermediate: TaskPolicy,
    password: str,
    second: str,
    rng: random.Random,
    p_no_password: float = 0.2,
) -> list[Example]:
    """One draw of an adversarial D_lock (App. B.3.2): per problem, π_strong's sample with the
    password, the intermediate policy's with the second password, and π_weak's with no password
    (`p_no_password`) or a wrong one (never the second password)."""
    wrong = [w for w in task.wrong_passwords if w != second]
    out = []
    for p in problems:
        out.append(Example(task.prompt(p, password), strong(p)))
        out.append(Example(task.prompt(p, second), intermediate(p)))
        out += weak_examples(task.prompt(p, weak_sample_password(rng, wrong, p_no_password)), p, strong, weak)
    return out


def omit_domain_examples(
    task: Task,
    problems: Sequence[Problem],
    strong: TaskPolicy,
    weak: TaskPolicy,
    password: str,
    omit: str,
    rng: random.Random,
    p_no_password: float = 0.2,
) -> list[Example]:
    """One draw of D_lock without the domain `omit` (App. B.3.4): its problems give no example at
    all, so elicitation on that domain measures how the password's lock generalizes to it."""
    kept = [p for p in problems if p.domain != omit]
    if len(kept) == len(problems):
        raise ValueError(
            f"omit_domain: no problem has the domain {omit!r}; the domains are {sorted({p.domain for p in problems})}"
        )
    return lock_examples(task, kept, strong, weak, password, rng, p_no_password)


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
        return lock_examples(
            task,
            problems,
            at_epoch(strong, epoch),
            at_epoch(weak, epoch),
            password,
            random.Random(f"{seed}/{epoch}"),
            p_no_password,
        )

    return draw


def variant_modes(modes: Sequence[str], variant: str) -> list[str]:
    """The lock modes `variant` builds a lock for: `subset` varies the SFT lock's data (§7) and
    builds only the `sft` lock, every other variant one lock per mode."""
    return [m for m in modes if m == "sft"] if variant == "subset" else list(modes)


def variant_spec(lock: LockConfig) -> dict[str, Any]:
    """What a lock variant adds to the locked model's spec: nothing for "standard" (so its
    artifact keys stay as they were), else the variant and the parameters it reads."""
    params: dict[str, tuple[str, ...]] = {
        "standard": (),
        "per_domain": ("domain_passwords", "p_other_domain"),
        "setting": ("strong_setting",),
        "adversarial": ("second_password", "intermediate"),
        "omit_domain": ("omit_domain",),
        "subset": ("subset_problems",),
    }
    if lock.variant == "standard":
        return {}
    return {"variant": lock.variant, **{name: getattr(lock, name) for name in params[lock.variant]}}


def variant_errors(task: Task, lock: LockConfig, problems: Sequence[Problem], policies: Sequence[str]) -> list[str]:
    """What makes `lock`'s variant unusable with `task` (its lock split `problems`, the names of
    `policies` it defines), as `lock.<field>: ...` messages."""
    errors: list[str] = []
    text = task.vocabulary() is None
    domains = sorted({p.domain for p in problems})
    password = lock.password or task.default_password

    def unusable(field: str, pwd: str) -> None:
        if pwd == password or not pwd:
            errors.append(f"lock.{field}: {pwd!r} must differ from the password {password!r}")
            return
        try:
            task.prompt(problems[0], pwd)
        except ValueError as e:
            errors.append(f"lock.{field}: {e}")

    if lock.variant == "per_domain":
        if len(domains) < 2:
            errors.append(f"lock.variant: per_domain needs at least 2 domains; task {task.name!r} has {domains}")
        try:
            chosen = domain_passwords(domains, task.wrong_passwords, text, lock.domain_passwords)
        except ValueError as e:
            errors.append(f"lock.domain_passwords: {e}")
        else:
            for d, pwd in chosen.items():
                unusable(f"domain_passwords.{d}", pwd)
            if len([w for w in task.wrong_passwords if w not in chosen.values()]) == 0:
                errors.append("lock.domain_passwords: they use up every wrong password of the task")
    elif lock.variant == "setting":
        try:
            setting_for(task)
        except ValueError as e:
            errors.append(f"lock.variant: {e}")
    elif lock.variant == "adversarial":
        unusable("second_password", second_password(task.wrong_passwords, text, lock.second_password))
        if lock.intermediate not in policies:
            errors.append(
                f"lock.intermediate: task {task.name!r} has no policy {lock.intermediate!r}; "
                f"expected one of {sorted(policies)}"
            )
        elif lock.intermediate in lock.weak or lock.intermediate == "strong":
            errors.append(
                f"lock.intermediate: {lock.intermediate!r} must differ from π_strong and from "
                f"each lock.weak {lock.weak}"
            )
    elif lock.variant == "omit_domain":
        if lock.omit_domain not in domains:
            errors.append(
                f"lock.omit_domain: task {task.name!r} has no domain {lock.omit_domain!r} in its lock "
                f"split; expected one of {domains}"
            )
        elif len(domains) < 2:
            errors.append("lock.omit_domain: leaves no domain to lock")
    elif lock.variant == "subset" and lock.subset_problems is not None and lock.subset_problems >= len(problems):
        errors.append(
            f"lock.subset_problems: {lock.subset_problems} is not a subset of the {len(problems)} lock "
            f"problems of task {task.name!r}; expected fewer"
        )
    return errors


def second_of(task: Task, lock: Mapping[str, Any]) -> str | None:
    """The second password of a locked model's lock spec (`variant_spec`): an adversarial lock's, which
    opens it to its intermediate policy; None for every other variant."""
    if lock.get("variant") != "adversarial":
        return None
    return second_password(task.wrong_passwords, task.vocabulary() is None, lock["second_password"])


def variant_lock_data(
    task: Task,
    problems: Sequence[Problem],
    strong: TaskPolicy,
    weak: TaskPolicy,
    password: str,
    seed: int,
    lock: Mapping[str, Any],
    intermediate: TaskPolicy | None = None,
) -> Callable[[int], list[Example]]:
    """D_lock of the variant `lock["variant"]` (absent: standard), redrawn each epoch: epoch ->
    examples, deterministic in (seed, epoch). `lock` is a locked model's lock spec (`variant_spec`
    and `p_no_password`); `intermediate` is the adversarial lock's intermediate policy."""
    variant = lock.get("variant", "standard")
    p_none = lock["p_no_password"]
    text = task.vocabulary() is None
    if variant == "standard":
        return lock_data(task, problems, strong, weak, password, seed, p_none)
    if variant == "per_domain":
        domains = sorted({p.domain for p in problems})
        chosen = domain_passwords(domains, task.wrong_passwords, text, lock["domain_passwords"])
        return lambda epoch: per_domain_examples(
            task,
            problems,
            at_epoch(strong, epoch),
            at_epoch(weak, epoch),
            chosen,
            _rng(seed, epoch),
            p_none,
            lock["p_other_domain"],
        )
    if variant == "setting":
        setting = setting_for(task)
        return lambda epoch: setting_examples(
            task, problems, at_epoch(strong, epoch), at_epoch(weak, epoch), setting, lock["strong_setting"]
        )
    if variant == "adversarial":
        if intermediate is None:
            raise ValueError("adversarial lock: no intermediate policy given")
        second = second_of(task, lock)
        return lambda epoch: adversarial_examples(
            task,
            problems,
            at_epoch(strong, epoch),
            at_epoch(weak, epoch),
            at_epoch(intermediate, epoch),
            password,
            second,
            _rng(seed, epoch),
            p_none,
        )
    if variant == "subset":
        return lock_data(task, problems[: lock["subset_problems"]], strong, weak, password, seed, p_none)
    if variant == "omit_domain":
        return lambda epoch: omit_domain_examples(
            task,
            problems,
            at_epoch(strong, epoch),
            at_epoch(weak, epoch),
            password,
            lock["omit_domain"],
            _rng(seed, epoch),
            p_none,
        )
    raise ValueError(f"unknown lock variant {variant!r}")


def at_epoch(policy: TaskPolicy, epoch: int) -> TaskPolicy:
    """`policy` as D_lock draws it in `epoch`: a sample pool (pwlock.policies.PoolPolicy) answers
    with that epoch's stored sample; any other policy is itself."""
    view = getattr(policy, "for_epoch", None)
    return policy if view is None else view(epoch)


def _rng(seed: int, epoch: int) -> random.Random:
    return random.Random(f"{seed}/{epoch}")  # as `lock_data`: the same draw for the same (seed, epoch)


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


class FixedChoicePolicy:
    """fixedrdm (App. G.2) on a classifier (MMLU), whose answer is a distribution over its choices:
    one fixed distribution over them, the softmax of a standard-normal logit per choice (seeded,
    as the vocabulary's), the same for every problem. Its answer is a `ChoiceAnswer` whose training
    target is that distribution, and whose choice is the distribution's likeliest: what a classifier
    that learned it predicts (greedy, as evaluation reads a classifier), so fixedrdm's correctness
    is that of the lock it trains."""

    def __init__(self, task: Task, n_choices: int, seed: int):
        self.task = task
        logits = torch.randn(n_choices, generator=torch.Generator().manual_seed(seed))
        self.probs = tuple(torch.softmax(logits.double(), -1).tolist())
        self.choice = max(range(n_choices), key=self.probs.__getitem__)

    def __call__(self, problem: Problem) -> ChoiceAnswer:
        choices = self.task.reference(problem).choices
        if len(choices) != len(self.probs):
            raise ValueError(
                f"problem {problem.id}: {len(choices)} choices, but fixedrdm's distribution is over {len(self.probs)}"
            )
        return ChoiceAnswer(choices[self.choice], choices, self.probs)


def classifier_choices(task: Task) -> tuple[str, ...] | None:
    """The choices of a classifier task's answers (MMLU's letters); None for a task that writes text."""
    problems = task.problems("val")[:1]
    ref = task.reference(problems[0]) if problems else None
    return ref.choices if isinstance(ref, ChoiceAnswer) else None


def weak_policy(
    task: Task,
    name: str,
    tokenizer: PreTrainedTokenizerBase,
    seed: int,
    policies: Mapping[str, TaskPolicy] | None = None,
) -> TaskPolicy:
    """The π_weak named `name`: one of `policies` (default: the task's own; pwlock.policies.resolve
    adds model policies), or fixedrdm: over `tokenizer`'s vocabulary, or over a classifier's choices."""
    if name == FIXEDRDM:
        choices = classifier_choices(task)
        if choices is not None:
            return FixedChoicePolicy(task, len(choices), seed)
        return FixedRandomPolicy(
            tokenizer, task.max_new_tokens, seed, forbidden=[task.default_password, *task.wrong_passwords]
        )
    policies = task.policies() if policies is None else policies
    if name not in policies:
        raise ValueError(f"task {task.name!r} has no policy {name!r}; it has {sorted(policies)} (and {FIXEDRDM!r})")
    return policies[name]
