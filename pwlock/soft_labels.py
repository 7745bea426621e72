"""Soft labels (App. B.2, Fig. 7, 12) as an upstream stage: a classifier's policy whose answer is a
model's distribution over the choices (MMLU's four letters), not a sample of it.

A policy with `soft_labels: true` (config.PolicyModelConfig) is a model trained on the task's
ground-truth labels (the `policy_model` stage, `train_on: references`) on a split distinct from
where its answers are read: the weak split by default (the paper's "distinct training set"),
never the elicit or validation split. This stage reads that model's distribution over the choices
on every problem of the task, one forward pass each, from prompts without any password, and keeps
them as JSON lines {"id": problem id, "probs": [pA, pB, pC, pD]} (`tasks.mmlu.write_soft_labels`).
One artifact serves every use of the policy (the lock's π_strong, demonstrations, its score, a
policy trained on it): pwlock.policies serves it as answers whose `probs` are those distributions,
which training then targets (`llm.ChoiceAnswer`; `train.sft`'s classifier rows).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pwlock.artifacts import Artifact
from pwlock.config import SOFT_LABEL_SPLITS
from pwlock.evaluate import choice_probabilities
from pwlock.models import load_policy
from pwlock.store import Store
from pwlock.tasks import Task, make_task
from pwlock.tasks.base import Example, Problem
from pwlock.tasks.llm import ChoiceAnswer
from pwlock.tasks.mmlu import write_soft_labels
from pwlock.tasks.splits import SPLITS

log = logging.getLogger(__name__)

SOFT_LABELS = "soft_labels.jsonl"  # the artifact's file


def soft_labels_artifact(name: str, task: dict, model: Artifact, base: str, dtype: str) -> Artifact:
    """Policy `name`'s distributions over the choices on every problem of the task, read from
    `model` (its `policy_model`: `base` trained on the labels of one split). Its spec keeps the base
    and dtype, as a pool's source does, for loading and pricing."""
    spec = {"task": task, "model": model.key, "base": base, "dtype": dtype, "splits": list(SPLITS)}
    return Artifact("soft_labels", f"soft labels of {name}", spec, (model.key,))


def build_soft_labels(store: Store, a: Artifact, scratch: Path) -> dict[str, Any]:
    task = make_task(a.spec["task"])
    trained = store.meta(a.spec["model"])["spec"]
    if trained.get("split") not in SOFT_LABEL_SPLITS or "references" not in trained.get("train_on", {}):
        raise ValueError(
            f"{a.label}: its model was trained on {trained.get('train_on')} of the {trained.get('split')!r} split; "
            f"soft labels come from a model trained on the labels of the {' or '.join(SOFT_LABEL_SPLITS)} split only"
        )
    problems = [p for split in a.spec["splits"] for p in task.problems(split)]
    model, tokenizer = load_policy(store.artifact_dir(a.spec["model"]), a.spec["dtype"])
    probs = distributions(task, model, tokenizer, problems)
    write_soft_labels(scratch / SOFT_LABELS, problems, probs)
    log.info("%s: %d problems, trained on the %s split", a.label, len(problems), trained["split"])
    return {"problems": len(problems), "trained_on": trained["split"]}


def distributions(task: Task, model: Any, tokenizer: Any, problems: Sequence[Problem]):
    """(problems, choices): the model's distribution over each problem's choices, prompted
    without a password."""
    refs = [task.reference(p) for p in problems]
    if not refs or not all(isinstance(r, ChoiceAnswer) for r in refs):
        raise ValueError(f"task {task.name!r}: soft labels need a classifier's problems (answers over choices)")
    return choice_probabilities(model, tokenizer, [Example(task.prompt(p, None), r) for p, r in zip(problems, refs)])


def soft_answer(task: Task, problem: Problem, probs: Sequence[float]) -> ChoiceAnswer:
    """The problem's answer as soft labels: its likeliest choice, trained towards `probs`."""
    choices = task.reference(problem).choices
    return ChoiceAnswer(choices[max(range(len(probs)), key=probs.__getitem__)], choices, probs)
