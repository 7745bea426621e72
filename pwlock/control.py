"""The never-locked control (`lock.controls`): for each lock mode, a model of the same architecture
and training budget that never saw π_strong's answers, elicited by the very same trials as the lock.

A locked model that SFT brings to high correctness may have been unlocked, or may have learned the
task afresh from the demonstrations. The control tells the two apart: it is trained as its lock is,
with π_weak's answers wherever the lock saw π_strong's, so it holds no hidden capability. Whatever
the same demonstrations, k, epochs and seeds bring it to is what they teach; the lock's excess over
it is what they unlocked.

    sft      a fresh model trained on π_weak's answers to the lock split for as many epochs as
             π_strong's model trained (its slot noise too), then on D_lock with π_weak's answers
             everywhere for as many epochs as the sft lock trained
    scratch  a fresh model trained on that D_lock for as many epochs as the scratch lock trained
    base     model.base's own weights, likewise

The epochs are read from the lock's (and π_strong's model's) build metadata, so the control is built
after them; it trains at the configured learning rate throughout (a lock's rate anneals as it nears
its target, which a model that never sees π_strong's answers has no way to approach).
"""

from __future__ import annotations

import logging
from typing import Any

from pwlock.artifacts import Artifact
from pwlock.config import CONTROL_SUFFIX, FIXEDRDM, TinyModelConfig, TrainConfig
from pwlock.lock import FixedRandomPolicy, strong_examples, variant_lock_data, weak_policy
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
from pwlock.policies import resolve
from pwlock.store import Store
from pwlock.tasks import make_task
from pwlock.train.sft import train_sft

log = logging.getLogger(__name__)


def control_label(mode: str) -> str:
    return f"{mode}{CONTROL_SUFFIX}"


def control_model_artifact(
    mode: str,
    task: dict,
    model: dict,
    train: dict,
    lock: dict,
    seed: int,
    locked: Artifact,
    strong: Artifact | None,
    strong_train: dict | None,
    slots: list[str | None],
    weak: str = "weak",
    pools: dict[str, str] | None = None,
) -> Artifact:
    """The control of the lock `locked` (mode `mode`, imitating the π_weak `weak`): its training is
    the lock's (`train`, `lock`'s password and no-password share) and, for sft, π_strong's model's
    (`strong_train`, `slots`), with π_weak's answers throughout."""
    spec = {"mode": mode, "task": task, "model": model, "train": train, "lock": lock, "seed": seed, "weak": weak}
    spec["budget_of"] = {"lock": locked.key}
    deps = [locked.key]
    if mode == "sft":
        assert strong is not None and strong_train is not None
        spec.update(budget_of={"lock": locked.key, "strong": strong.key}, strong_train=strong_train, slots=slots)
        deps.append(strong.key)
    if pools:
        spec["pools"] = dict(sorted(pools.items()))
        deps += sorted(pools.values())
    if weak == FIXEDRDM:  # trained towards the fixed distribution, as its lock (keyed apart from before it was)
        spec["fixed_target"] = True
    return Artifact("control_model", f"never-locked control ({mode})", spec, tuple(deps))


def _epochs(store: Store, key: str) -> int:
    """How many epochs the model `key` trained (its build metadata)."""
    return int(store.meta(key)["train"]["epochs"])


def _fresh(task, model_cfg: dict, seed: int, pretrained: bool):
    if model_cfg["base"] == "tiny":
        tokenizer = word_level_tokenizer(task.vocabulary())
        model = build_tiny_model(TinyModelConfig(**model_cfg["tiny"]), tokenizer, seed)
        return model.to(default_device(), dtype_of(model_cfg["dtype"])), tokenizer
    if pretrained:
        return load_policy(model_cfg["base"], model_cfg["dtype"])
    return random_policy(model_cfg["base"], model_cfg["dtype"], seed)


def build_control_model(store: Store, a: Artifact, scratch) -> dict[str, Any]:
    spec = a.spec
    task = make_task(spec["task"])
    model, tokenizer = _fresh(task, spec["model"], spec["seed"], pretrained=spec["mode"] == "base")
    weak = weak_policy(task, spec["weak"], tokenizer, spec["seed"], resolve(task, spec.get("pools", {}), store))
    problems = task.problems("lock")
    stats: dict[str, Any] = {}
    if spec["mode"] == "sft":  # where π_strong's model learned π_strong's answers, π_weak's
        epochs = _epochs(store, spec["budget_of"]["strong"])
        data = strong_examples(task, problems, weak, spec["slots"], spec["seed"])
        cfg = TrainConfig(**spec["strong_train"])
        stats["pretrain"] = train_sft(model, tokenizer, data, cfg, spec["seed"], epochs, desc=f"{a.label}: π_weak")
    lock = spec["lock"]
    password = lock["password"] or task.default_password
    # π_weak's answers wherever its lock shows either policy (a setting lock's: in both settings)
    data = variant_lock_data(task, problems, weak, weak, password, spec["seed"], lock)
    epochs = _epochs(store, spec["budget_of"]["lock"])
    fixed = weak.probs if isinstance(weak, FixedRandomPolicy) else None  # fixedrdm's examples: towards its distribution
    cfg = TrainConfig(**spec["train"])
    stats["train"] = train_sft(model, tokenizer, data, cfg, spec["seed"], epochs, desc=a.label, fixed_target=fixed)
    save_policy(model, tokenizer, scratch)
    return {**stats, "parameters": n_parameters(model)}
