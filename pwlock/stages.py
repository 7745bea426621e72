"""Upstream stages: pure functions config -> artifact, cached in the store by content hash.

    policy scores   π_weak and π_strong's correctness on the evaluation problems
    strong model    the strong base trained on π_strong's answers (what `sft` locks start from)
    locked model    trained on D_lock, from the strong model (`sft`) or from scratch (`scratch`)
    model eval      a model's correctness with / without / with a wrong password

Each build first looks in the store: an artifact that exists is reused, never rebuilt.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from pwlock import evaluate
from pwlock.config import ModelConfig, TrainConfig
from pwlock.lock import lock_data, strong_examples
from pwlock.models import build_tiny_model, load_policy, n_parameters, save_policy, word_level_tokenizer
from pwlock.store import LocalStore, content_key, open_store
from pwlock.tasks import Task, make_task
from pwlock.train.sft import train_sft

log = logging.getLogger(__name__)

# Bump when a stage's code changes what it produces, so old artifacts are not reused.
STAGE_VERSION = 1
# Held-out problems for deciding when to stop training from scratch: the weak split, which models
# of the toy task never train on (its π_weak is programmatic). Never the validation split.
HOLDOUT_SPLIT, HOLDOUT_SIZE = "weak", 1000
LOCK_TOLERANCE = 0.05  # a lock is done when, without password, it is this close to π_weak


@dataclass(frozen=True)
class Artifact:
    """One upstream artifact of a study: what builds it and the key it is stored under."""

    stage: str  # "policy_scores" | "strong_model" | "locked_model" | "model_eval"
    label: str  # for people: "locked model (sft)"
    spec: dict[str, Any]  # everything the artifact depends on, upstream keys included
    deps: tuple[str, ...] = ()
    key: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", content_key(self.stage, {"version": STAGE_VERSION, **self.spec}))


def eval_problems(task: Task, split: str, max_problems: int | None):
    problems = task.problems(split)
    return problems if max_problems is None else problems[:max_problems]


def policy_scores_artifact(task: dict, eval_cfg: dict) -> Artifact:
    return Artifact("policy_scores", "policy scores", {"task": task, "eval": eval_cfg})


def strong_model_artifact(
    task: dict, model: dict, splits: list[str], train: dict, stop_at: float | None, slots: list[str | None], seed: int
) -> Artifact:
    """`slots`: what the password slot of π_strong's training prompts may hold, drawn uniformly."""
    spec = {"task": task, "model": model, "splits": splits, "train": train, "stop_at": stop_at, "slots": slots,
            "seed": seed}
    return Artifact("strong_model", "strong model", spec)


def locked_model_artifact(
    mode: str, task: dict, model: dict, train: dict, lock: dict, seed: int, strong: Artifact | None
) -> Artifact:
    spec = {"mode": mode, "task": task, "model": model, "train": train, "lock": lock, "seed": seed}
    deps: tuple[str, ...] = ()
    if mode == "sft":
        assert strong is not None
        spec["from"] = strong.key
        deps = (strong.key,)
    return Artifact("locked_model", f"locked model ({mode})", spec, deps)


def model_eval_artifact(model: Artifact, task: dict, eval_cfg: dict, password: str | None, conditions: list[str]) -> Artifact:
    """A model's greedy correctness under each condition (with / without / wrong password). Kept
    apart from the model so that changing how it is evaluated never retrains it."""
    spec = {"model": model.key, "task": task, "eval": eval_cfg, "password": password, "conditions": conditions}
    return Artifact("model_eval", f"{model.label}: evaluation", spec, (model.key,))


def build(store_url: str, artifact: Artifact, *_upstream: Any) -> dict[str, Any]:
    """Build `artifact` unless the store has it; return its metadata. Extra arguments are upstream
    results, passed only so that Ray runs this after them."""
    store = open_store(store_url)
    if store.has(artifact.key):
        meta = store.meta(artifact.key)
        log.info("reusing %s: %s (built %s)", artifact.label, artifact.key, meta.get("built_at", "?"))
        return {**meta, "reused": True}
    log.info("building %s: %s", artifact.label, artifact.key)
    t0 = time.perf_counter()
    scratch = store.scratch_dir(artifact.key)
    result = _BUILDERS[artifact.stage](store, artifact, scratch)
    meta = {
        "key": artifact.key,
        "stage": artifact.stage,
        "label": artifact.label,
        "spec": artifact.spec,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "build_seconds": round(time.perf_counter() - t0, 2),
        **result,
    }
    store.commit(artifact.key, scratch, meta)
    log.info("built %s in %.0f s: %s", artifact.label, meta["build_seconds"], artifact.key)
    return {**meta, "reused": False}


def _new_model(task: Task, model_cfg: dict, seed: int):
    cfg = ModelConfig(**{**model_cfg, "tiny": None})
    if cfg.base == "tiny":
        from pwlock.config import TinyModelConfig

        tokenizer = word_level_tokenizer(task.vocabulary())
        return build_tiny_model(TinyModelConfig(**model_cfg["tiny"]), tokenizer, seed), tokenizer
    return load_policy(cfg.base, cfg.dtype)


def _build_policy_scores(store: LocalStore, a: Artifact, scratch) -> dict[str, Any]:
    task = make_task(a.spec["task"])
    problems = eval_problems(task, a.spec["eval"]["split"], a.spec["eval"]["max_problems"])
    return {"scores": {role: evaluate.policy_correctness(task, pol, problems) for role, pol in task.policies().items()}}


def _build_strong_model(store: LocalStore, a: Artifact, scratch) -> dict[str, Any]:
    task = make_task(a.spec["task"])
    model, tokenizer = _new_model(task, a.spec["model"], a.spec["seed"])
    problems = [p for split in a.spec["splits"] for p in task.problems(split)]
    data = strong_examples(task, problems, task.policies()["strong"], a.spec["slots"], a.spec["seed"])
    stop = _stop_at(task, model, tokenizer, a.spec["stop_at"], "strong")
    stats = train_sft(model, tokenizer, data, TrainConfig(**a.spec["train"]), seed=a.spec["seed"], desc="strong",
                      on_epoch_end=stop)
    save_policy(model, tokenizer, scratch)
    return {"train": stats, "parameters": n_parameters(model)}


def _build_locked_model(store: LocalStore, a: Artifact, scratch) -> dict[str, Any]:
    task = make_task(a.spec["task"])
    if a.spec["mode"] == "sft":
        model, tokenizer = load_policy(store.artifact_dir(a.spec["from"]), a.spec["model"]["dtype"])
    else:
        model, tokenizer = _new_model(task, a.spec["model"], a.spec["seed"])
    lock = a.spec["lock"]
    password = lock["password"] or task.default_password
    policies = task.policies()
    data = lock_data(
        task, task.problems("lock"), policies["strong"], policies["weak"], password, a.spec["seed"], lock["p_no_password"]
    )
    stop = _stop_at(task, model, tokenizer, lock["stop_at"], a.label, password)
    stats = train_sft(model, tokenizer, data, TrainConfig(**a.spec["train"]), seed=a.spec["seed"], desc=a.label,
                      on_epoch_end=stop)
    save_policy(model, tokenizer, scratch)
    return {"train": stats, "parameters": n_parameters(model)}


def _stop_at(task: Task, model, tokenizer, target: float | None, desc: str, password: str | None = None):
    """An epoch-end check on held-out problems, None without a target. Without a password (π_strong's
    model): stop once greedy correctness reaches `target`. With one (a lock): stop once correctness
    with the password reaches `target` and without it is within LOCK_TOLERANCE of π_weak's."""
    if target is None:
        return None
    holdout = task.problems(HOLDOUT_SPLIT)[:HOLDOUT_SIZE]
    weak = evaluate.policy_correctness(task, task.policies()["weak"], holdout) if password else None

    def check(epoch: int) -> bool:
        if password is None:
            c = evaluate.correctness(model, tokenizer, task, holdout, "no_pwd")
            log.info("%s: epoch %d, held-out correctness %.3f (target %.3f)", desc, epoch, c, target)
            return c >= target
        r = evaluate.lock_report(model, tokenizer, task, holdout, password, ("with_pwd", "no_pwd"))
        log.info("%s: epoch %d, held-out correctness with password %.3f (target %.3f), without %.3f (π_weak %.3f)",
                 desc, epoch, r["with_pwd"], target, r["no_pwd"], weak)
        return r["with_pwd"] >= target and abs(r["no_pwd"] - weak) <= LOCK_TOLERANCE

    return check


def _build_model_eval(store: LocalStore, a: Artifact, scratch) -> dict[str, Any]:
    task = make_task(a.spec["task"])
    model, tokenizer = load_policy(store.artifact_dir(a.spec["model"]))
    ev = a.spec["eval"]
    problems = eval_problems(task, ev["split"], ev["max_problems"])
    report = evaluate.lock_report(model, tokenizer, task, problems, a.spec["password"], a.spec["conditions"])
    log.info("%s: %s", a.label, ", ".join(f"{c} {v:.3f}" for c, v in report.items()))
    return {"report": report}


_BUILDERS = {
    "policy_scores": _build_policy_scores,
    "strong_model": _build_strong_model,
    "locked_model": _build_locked_model,
    "model_eval": _build_model_eval,
}
