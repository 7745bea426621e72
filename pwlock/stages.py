"""Upstream stages: pure functions config -> artifact, cached in the store by content hash.

    policy scores   π_weak and π_strong's correctness on the evaluation problems
    strong model    the strong base trained on π_strong's answers (what `sft` locks start from)
    locked model    trained on D_lock, from the strong model (`sft`), from scratch (`scratch`) or from
                    the base model's own weights (`base`)
    model eval      a model's correctness with / without / with a wrong password
    lock audit      a locked model's correctness under the lock audit's probes (pwlock/audit.py);
                    an adversarial lock's with its second password too
    control model   a never-locked control of a lock mode (pwlock/control.py)
    problem filter  the code problems a policy solves (`task.keep`, pwlock/problem_filter.py)

Each build first looks in the store: an artifact that exists is reused, never rebuilt.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pwlock import audit, evaluate
from pwlock.artifacts import Artifact, Builder, build_artifact, eval_problems
from pwlock.config import FIXEDRDM, TinyModelConfig, TrainConfig, VLLMConfig
from pwlock.control import build_control_model
from pwlock.elicit.dpo import build_dpo_samples
from pwlock.generate.base import Generator
from pwlock.generate.vllm_actor import vllm_generator
from pwlock.lock import FixedRandomPolicy, second_of, strong_examples, variant_lock_data, weak_policy
from pwlock.model_source import local_dir
from pwlock.models import (
    build_tiny_model,
    default_device,
    dtype_of,
    load_policy,
    n_parameters,
    random_policy,
    save_policy,
    word_level_tokenizer,
)
from pwlock.passwords import lock_domain_passwords
from pwlock.policies import Unsampled, build_policy_dpo, build_policy_model, build_sample_pool, resolve
from pwlock.problem_filter import build_problem_filter
from pwlock.setting import in_setting
from pwlock.soft_labels import build_soft_labels
from pwlock.store import Store, StoreSpec
from pwlock.tasks import Task, make_task
from pwlock.tasks.base import TaskPolicy
from pwlock.train.sft import train_sft

log = logging.getLogger(__name__)

# Held-out problems for deciding when to stop training from scratch: the weak split, which models
# of the toy task never train on (its π_weak is programmatic). Never the validation split.
HOLDOUT_SPLIT, HOLDOUT_SIZE = "weak", 1000
LOCK_TOLERANCE = 0.05  # a lock is done when, without password, it is this close to π_weak
ANNEAL_STEP, ANNEAL_FLOOR = 0.2, 0.2


def policy_scores_artifact(
    task: dict, eval_cfg: dict, fixedrdm_model: dict | None = None, pools: dict[str, str] | None = None
) -> Artifact:
    """The task's policies' correctness; with `fixedrdm_model` (the model config whose tokenizer
    fixedrdm draws from), fixedrdm's too; with `pools` (policy -> its greedy samples of the
    evaluation problems, pwlock.policies), model policies' too."""
    spec = {"task": task, "eval": eval_cfg}
    if fixedrdm_model is not None:
        spec["fixedrdm_model"] = fixedrdm_model
    return Artifact("policy_scores", "policy scores", *_with_pools(spec, pools))


def _with_pools(spec: dict[str, Any], pools: dict[str, str] | None, deps: tuple[str, ...] = ()):
    """`spec` and `deps` with the sample pools a stage draws policies from (pwlock.policies); none
    leaves the spec, hence the key, as it was before model policies existed."""
    if not pools:
        return spec, deps
    keys = {k for k in pools.values() if k is not None}  # None: a model policy with no pool for this use
    return {**spec, "pools": dict(sorted(pools.items()))}, deps + tuple(sorted(keys))


def strong_model_artifact(
    task: dict,
    model: dict,
    splits: list[str],
    train: dict,
    stop_at: float | None,
    slots: list[str | None],
    seed: int,
    pools: dict[str, str] | None = None,
) -> Artifact:
    """`slots`: what the password slot of π_strong's training prompts may hold, drawn uniformly;
    `pools`: π_strong's samples, when it is a model policy."""
    spec = {
        "task": task,
        "model": model,
        "splits": splits,
        "train": train,
        "stop_at": stop_at,
        "slots": slots,
        "seed": seed,
    }
    return Artifact("strong_model", "strong model", *_with_pools(spec, pools))


def locked_model_artifact(
    mode: str,
    task: dict,
    model: dict,
    train: dict,
    lock: dict,
    seed: int,
    strong: Artifact | None,
    weak: str = "weak",
    pools: dict[str, str] | None = None,
) -> Artifact:
    """A model locked by `mode` to imitate the π_weak named `weak` without the password. `lock` holds
    a variant's fields (`lock.variant_spec`) only when it is not the standard lock."""
    spec = {"mode": mode, "task": task, "model": model, "train": train, "lock": lock, "seed": seed}
    if weak != "weak":  # the default π_weak leaves the key as it was before other choices existed
        spec["weak"] = weak
    if mode == "scratch" and model["base"] != "tiny":  # once meant the base's own weights (now `base`)
        spec["init"] = "random"
    deps: tuple[str, ...] = ()
    if mode == "sft":
        assert strong is not None
        spec["from"] = strong.key
        deps = (strong.key,)
    spec, deps = _with_pools(spec, pools, deps)  # π_strong, π_weak or the intermediate policy as sample pools
    label = lock_label(mode, weak, lock.get("variant", "standard"))
    return Artifact("locked_model", f"locked model ({label})", spec, deps)


def lock_label(mode: str, weak: str, variant: str = "standard") -> str:
    """A lock's name in trials and results: its mode, then its π_weak and its variant unless the
    defaults ("sft", "sft-fixedrdm", "sft-per_domain")."""
    return "-".join([mode] + [weak] * (weak != "weak") + [variant] * (variant != "standard"))


def _tokenizer_for(task: Task, model_cfg: dict):
    if model_cfg["base"] == "tiny":
        return word_level_tokenizer(task.vocabulary())
    from transformers import AutoTokenizer  # seconds to import: the toy task's stages never need it

    return AutoTokenizer.from_pretrained(local_dir(model_cfg["base"]))


def model_eval_artifact(
    model: Artifact,
    task: dict,
    eval_cfg: dict,
    password: str | None,
    conditions: list[str],
    engine: dict[str, Any] | None = None,
    exclude: list[str] | None = None,
    strong_setting: str | None = None,
) -> Artifact:
    """A model's greedy correctness under each condition (with / without / wrong password), decoded
    in a vLLM `engine` if one is given. Kept apart from the model so that changing how it is
    evaluated never retrains it. `exclude`: wrong passwords of the task that open the model (an
    adversarial lock's second password), left out of "wrong_pwd"; only a model with some has it in
    its spec, so every other evaluation keeps its key. A setting-variation lock has no password
    (`strong_setting`: where it shows π_strong): "with_pwd" is its correctness in that setting,
    "no_pwd" in the other, where it is weak and where its trials run (pwlock.setting.in_setting)."""
    spec = {"model": model.key, "task": task, "eval": eval_cfg, "password": password, "conditions": conditions}
    if exclude:
        spec["exclude"] = exclude
    if strong_setting is not None:
        spec["strong_setting"] = strong_setting
    return Artifact("model_eval", f"{model.label}: evaluation", spec, (model.key,), engine=engine)


def lock_audit_artifact(
    model: Artifact,
    task: Task,
    task_spec: dict,
    eval_cfg: dict,
    password: Any,
    exclude: list[str],
    engine: dict[str, Any] | None = None,
) -> Artifact:
    """A locked model's lock audit: its correctness under each probe (`conditions`) of pwlock.audit,
    with `password` (one, or one per domain) opening it and `exclude` never a wrong one. An adversarial
    lock's second password, read off its lock spec, is probed too ("second"): only its audit's spec
    names it."""
    second = second_of(task, model.spec.get("lock", {}))
    spec = {
        "model": model.key,
        "task": task_spec,
        "eval": eval_cfg,
        "password": password,
        "exclude": exclude,
        "conditions": audit.probe_names(task, password, exclude, second),
    }
    if second is not None:
        spec["second"] = second
    return Artifact("lock_audit", f"{model.label}: lock audit", spec, (model.key,), engine=engine)


def build(store_spec: StoreSpec | str, artifact: Artifact, *_upstream: Any) -> dict[str, Any]:
    """Build `artifact` unless the store has it; return its metadata. Extra arguments are upstream
    results, passed only so that Ray runs this after them."""
    return build_artifact(store_spec, artifact, BUILDERS)


def _new_model(task: Task, model_cfg: dict, seed: int, pretrained: bool = False):
    """A fresh model: tiny for the task's vocabulary, or model.base's architecture randomly
    initialized; with `pretrained`, model.base with its own weights."""
    if model_cfg["base"] == "tiny":
        tokenizer = word_level_tokenizer(task.vocabulary())
        model = build_tiny_model(TinyModelConfig(**model_cfg["tiny"]), tokenizer, seed)
        return model.to(default_device(), dtype_of(model_cfg["dtype"])), tokenizer
    if pretrained:
        return load_policy(model_cfg["base"], model_cfg["dtype"])
    return random_policy(model_cfg["base"], model_cfg["dtype"], seed)


def _build_policy_scores(store: Store, a: Artifact, scratch) -> dict[str, Any]:
    task = make_task(a.spec["task"])
    problems = eval_problems(task, a.spec["eval"]["split"], a.spec["eval"]["max_problems"])
    policies = resolve(task, a.spec.get("pools", {}), store)
    if "fixedrdm_model" in a.spec:
        policies[FIXEDRDM] = weak_policy(task, FIXEDRDM, _tokenizer_for(task, a.spec["fixedrdm_model"]), 0)
    return {
        "scores": {
            role: None if isinstance(pol, Unsampled) else evaluate.policy_correctness(task, pol, problems)
            for role, pol in policies.items()
        }
    }


def _build_strong_model(store: Store, a: Artifact, scratch) -> dict[str, Any]:
    task = make_task(a.spec["task"])
    model, tokenizer = _new_model(task, a.spec["model"], a.spec["seed"], pretrained=True)
    problems = [p for split in a.spec["splits"] for p in task.problems(split)]
    strong = resolve(task, a.spec.get("pools", {}), store)["strong"]
    data = strong_examples(task, problems, strong, a.spec["slots"], a.spec["seed"])
    stats = _train(model, tokenizer, data, a, task, a.spec["stop_at"], "strong")
    save_policy(model, tokenizer, scratch)
    return {"train": stats, "parameters": n_parameters(model)}


def _build_locked_model(store: Store, a: Artifact, scratch) -> dict[str, Any]:
    task = make_task(a.spec["task"])
    if a.spec["mode"] == "sft":
        model, tokenizer = load_policy(store.artifact_dir(a.spec["from"]), a.spec["model"]["dtype"])
    else:
        model, tokenizer = _new_model(task, a.spec["model"], a.spec["seed"], pretrained=a.spec["mode"] == "base")
    lock = a.spec["lock"]
    password = lock["password"] or task.default_password
    policies = resolve(task, a.spec.get("pools", {}), store)
    weak = weak_policy(task, a.spec.get("weak", "weak"), tokenizer, a.spec["seed"], policies)
    intermediate = lock.get("intermediate")  # adversarial locks only
    if intermediate is not None:
        intermediate = weak_policy(task, intermediate, tokenizer, a.spec["seed"], policies)
    data = variant_lock_data(
        task, task.problems("lock"), policies["strong"], weak, password, a.spec["seed"], lock, intermediate
    )
    if lock.get("variant") == "per_domain":  # trained until each domain's password opens it
        password = lock_domain_passwords(task, lock["domain_passwords"])
    stats = _train(
        model,
        tokenizer,
        data,
        a,
        task,
        lock["stop_at"],
        a.label,
        password,
        weak,
        weak.probs if isinstance(weak, FixedRandomPolicy) else None,
    )
    save_policy(model, tokenizer, scratch)
    return {"train": stats, "parameters": n_parameters(model)}


def _train(
    model,
    tokenizer,
    data,
    a: Artifact,
    task: Task,
    stop_at: float | None,
    desc: str,
    password: evaluate.Passwords | None = None,
    weak: TaskPolicy | None = None,
    fixed_target=None,
) -> dict[str, Any]:
    until = UntilTarget(task, model, tokenizer, stop_at, desc, password, weak) if stop_at is not None else None
    stats = train_sft(
        model,
        tokenizer,
        data,
        TrainConfig(**a.spec["train"]),
        seed=a.spec["seed"],
        desc=desc,
        on_epoch_end=until,
        lr_scale=until.scale if until else None,
        fixed_target=fixed_target,
    )
    if until is not None:
        stats["held_out_correctness"] = until.history
    return stats


class UntilTarget:
    """Train from scratch until held-out correctness reaches a target, then stop.

    From scratch, the model sits on a loss plateau for a number of epochs that varies from seed to
    seed, then learns fast; a high learning rate escapes the plateau sooner but then keeps the
    model noisy. So the rate stays high until held-out correctness first reaches half the target,
    then anneals by ANNEAL_STEP of its value per epoch (to ANNEAL_FLOOR). Without a password
    (π_strong's model) the target is greedy correctness; with one (a lock) it is correctness with
    the password, with correctness without it within LOCK_TOLERANCE of π_weak's.
    """

    def __init__(
        self,
        task: Task,
        model,
        tokenizer,
        target: float,
        desc: str,
        password: evaluate.Passwords | None = None,
        weak: TaskPolicy | None = None,
    ):
        self.task, self.model, self.tokenizer, self.target = task, model, tokenizer, target
        self.desc, self.password = desc, password
        self.holdout = task.problems(HOLDOUT_SPLIT)[:HOLDOUT_SIZE]
        weak = weak or task.policies()["weak"]
        self.weak = evaluate.policy_correctness(task, weak, self.holdout) if password else None
        self.lr_factor = 1.0
        self.history: list[float] = []

    def scale(self) -> float:
        return self.lr_factor

    def __call__(self, epoch: int) -> bool:
        if self.password is None:
            c = evaluate.correctness(self.model, self.tokenizer, self.task, self.holdout, "no_pwd")
            done, note = c >= self.target, ""
        else:
            r = evaluate.lock_report(
                self.model, self.tokenizer, self.task, self.holdout, self.password, ("with_pwd", "no_pwd")
            )
            c = r["with_pwd"]
            done = c >= self.target and abs(r["no_pwd"] - self.weak) <= LOCK_TOLERANCE
            note = f", without password {r['no_pwd']:.3f} (π_weak {self.weak:.3f})"
        self.history.append(c)
        if max(self.history) >= self.target / 2:
            self.lr_factor = max(ANNEAL_FLOOR, self.lr_factor - ANNEAL_STEP)
        log.info(
            "%s: epoch %d, held-out correctness %.3f (target %.3f)%s, lr ×%.1f",
            self.desc,
            epoch,
            c,
            self.target,
            note,
            self.lr_factor,
        )
        return done


@contextlib.contextmanager
def _decoder(a: Artifact, model_dir: Path, tokenizer) -> Iterator[Generator | None]:
    """The vLLM engine `a` evaluates in, serving the model of `model_dir`; None: HF generate."""
    if a.engine is None:
        yield None
        return
    with vllm_generator(str(model_dir), tokenizer, VLLMConfig(**a.engine)) as gen:
        yield gen


def _build_model_eval(store: Store, a: Artifact, scratch) -> dict[str, Any]:
    task = make_task(a.spec["task"])
    model_dir = store.artifact_dir(a.spec["model"])
    model, tokenizer = load_policy(model_dir)
    ev = a.spec["eval"]
    problems = eval_problems(task, ev["split"], ev["max_problems"])
    with _decoder(a, model_dir, tokenizer) as gen:
        scores = {
            c: evaluate.scores(
                model,
                tokenizer,
                problems=problems,
                password=a.spec["password"],
                generator=gen,
                exclude=a.spec.get("exclude", ()),
                **_in_setting(task, c, a.spec.get("strong_setting")),
            )
            for c in a.spec["conditions"]
        }
    report = {c: float(s.mean()) for c, s in scores.items()}
    log.info("%s: %s", a.label, ", ".join(f"{c} {v:.3f}" for c, v in report.items()))
    out: dict[str, Any] = {"report": report}
    if len({p.domain for p in problems}) > 1:  # how a lock holds on each domain (e.g. one it never saw)
        out["report_by_domain"] = {c: evaluate.by_domain(problems, s) for c, s in scores.items()}
    return out


def _in_setting(task: Task, condition: str, strong_setting: str | None) -> dict[str, Any]:
    """The task and condition `condition` is evaluated under: as it is, or for a setting lock (no
    password) without one, in the setting where the lock shows π_strong ("with_pwd") or in the other."""
    if strong_setting is None or condition == "wrong_pwd":
        return {"task": task, "condition": condition}
    varied = (condition == "with_pwd") == (strong_setting == "varied")
    return {"task": in_setting(task) if varied else task, "condition": "no_pwd"}


def _build_lock_audit(store: Store, a: Artifact, scratch) -> dict[str, Any]:
    task = make_task(a.spec["task"])
    model_dir = store.artifact_dir(a.spec["model"])
    model, tokenizer = load_policy(model_dir)
    ev = a.spec["eval"]
    problems = eval_problems(task, ev["split"], ev["max_problems"])
    with _decoder(a, model_dir, tokenizer) as gen:
        report = audit.audit(
            model,
            tokenizer,
            task,
            problems,
            a.spec["password"],
            a.spec["exclude"],
            generator=gen,
            second=a.spec.get("second"),
        )
    log.info("%s: %s", a.label, ", ".join(f"{c} {v:.3f}" for c, v in report.items()))
    return {"audit": report}


BUILDERS: dict[str, Builder] = {
    "policy_scores": _build_policy_scores,
    "strong_model": _build_strong_model,
    "locked_model": _build_locked_model,
    "model_eval": _build_model_eval,
    "lock_audit": _build_lock_audit,
    "control_model": build_control_model,
    "policy_model": build_policy_model,
    "policy_dpo": build_policy_dpo,
    "dpo_samples": build_dpo_samples,
    "sample_pool": build_sample_pool,
    "soft_labels": build_soft_labels,
    "problem_filter": build_problem_filter,
}
