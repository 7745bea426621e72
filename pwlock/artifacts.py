"""An upstream artifact: what builds it, the content key it is stored under, and how a build runs
(reused when the store has it whole, checked file by file; written to a scratch directory,
committed whole, or nothing).
The stages themselves are in pwlock.stages and pwlock.policies."""

from __future__ import annotations

import logging
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pwlock.store import Store, StoreSpec, content_key, open_store
from pwlock.tasks import Task

log = logging.getLogger("pwlock.stages")

# Bump when a stage's code changes what it produces, so old artifacts are not reused.
STAGE_VERSION = 2


@dataclass(frozen=True)
class Artifact:
    """One upstream artifact of a study: what builds it and the key it is stored under."""

    stage: str  # "policy_scores" | "strong_model" | "locked_model" | "model_eval" | "policy_model" | "sample_pool"
    label: str  # for people: "locked model (sft)"
    spec: dict[str, Any]  # everything the artifact depends on, upstream keys included
    deps: tuple[str, ...] = ()
    key: str = field(init=False)
    gpus: float | None = None  # GPUs its build holds, where not ray.gpus_per_stage (not part of the key)
    # The vLLM engine (VLLMConfig's fields) an evaluation decodes in; None: HF generate. Not part of
    # the key: an engine decodes as HF greedy does (tests/test_vllm_eval.py, tests/test_real_smoke.py).
    engine: dict[str, Any] | None = None
    # Where its build reads inputs the key holds only by content (a supplied file's path): moving
    # the file, or the checkout a job runs from, must not rebuild what depends on it.
    inputs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", content_key(self.stage, {"version": STAGE_VERSION, **self.spec}))


def eval_problems(task: Task, split: str, max_problems: int | None):
    problems = task.problems(split)
    return problems if max_problems is None else problems[:max_problems]


# A stage's builder: (store, artifact, scratch directory) -> what its metadata adds.
Builder = Callable[[Store, "Artifact", Path], dict[str, Any]]


def build_artifact(store_spec: StoreSpec | str, artifact: Artifact, builders: Mapping[str, Builder]) -> dict[str, Any]:
    """Build `artifact` with its stage's builder unless the store has it; return its metadata."""
    store = open_store(store_spec)
    state = store.check_artifact(artifact.key)  # every file hashed: a damaged artifact is never reused
    if state.built:
        log.info("reusing %s: %s (built %s)", artifact.label, artifact.key, state.meta.get("built_at", "?"))
        return {**state.meta, "reused": True}
    if state.meta is not None:
        log.warning("%s %s is damaged (%s): building it again", artifact.label, artifact.key, state.why())
    log.info("building %s: %s", artifact.label, artifact.key)
    t0 = time.perf_counter()
    scratch = store.scratch_dir(artifact.key)
    try:
        result = builders[artifact.stage](store, artifact, scratch)
    except BaseException:
        store.drop_scratch(scratch)  # a failed build leaves nothing behind
        raise
    build_id = uuid.uuid4().hex
    meta = {
        "key": artifact.key,
        "build": build_id,
        "stage": artifact.stage,
        "label": artifact.label,
        "spec": artifact.spec,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "build_seconds": round(time.perf_counter() - t0, 2),
        "node_id": _node_id(),
        **result,
    }
    store.commit(artifact.key, scratch, meta, replace=state.meta is not None)
    stored = store.meta(artifact.key)
    if stored.get("build") != build_id:  # another worker published the same artifact first: it is used
        log.info("built %s, but another build of it was published first and is used: %s", artifact.label, artifact.key)
        return {**stored, "reused": False}
    log.info("built %s in %.0f s: %s", artifact.label, meta["build_seconds"], artifact.key)
    return {**meta, "reused": False}


def _node_id() -> str | None:
    """The Ray node this build ran on (None outside Ray): where an artifact came from on a cluster."""
    ray = sys.modules.get("ray")  # never imported here: the CLI's checks run without Ray
    return ray.get_runtime_context().get_node_id() if ray is not None and ray.is_initialized() else None
