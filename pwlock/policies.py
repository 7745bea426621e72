"""Policies that are models or supplied samples (paper §4.1, Table 1, App. E), as upstream stages.

    policy model   a base fine-tuned on the task's references or on another policy's samples, on
                   one split (π_weak: the weak base on π_strong's samples on the weak split)
    sample pool    n samples per problem of one split, from a policy's model (HF `generate` or a
                   vLLM engine) or read from a user's JSONL file, kept as JSONL in the artifact
    soft labels    a classifier's policy as its model's distributions over the choices on every
                   problem (App. B.2; pwlock.soft_labels), one artifact for every use
    PoolPolicy     a pool as a TaskPolicy (problem -> completion); in D_lock, drawn again each
                   epoch, epoch e shows the problem's sample e (App. C.1: a fresh sample per epoch);
                   soft labels' answer is the problem's distribution, the same each epoch

A study's `policies:` (config.PolicyModelConfig) add to and override the task's own policies by
name. `plan_policies` makes the artifacts their uses need: pools on the lock split (one sample per
lock epoch) for the lock's π_strong, π_weak and intermediate policy, on the elicit split for
demonstrators, on the evaluation split at temperature 0 for their scores (greedy correctness, like
every policy score), and on a policy's training split for the policy trained on its samples.
`resolve` gives the task's policies with those pools in place, for stages and trials alike.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer

from pwlock.artifacts import Artifact, eval_problems
from pwlock.config import (
    FIXEDRDM,
    REFERENCES,
    PolicyModelConfig,
    StudyConfig,
    TrainConfig,
    VLLMConfig,
    resolve_engine,
)
from pwlock.elicit.base import Method, SameModel, problem_subset
from pwlock.elicit.dpo import dpo_elicitation
from pwlock.elicit.expert_iteration import filtering_draws
from pwlock.evaluate import choice_probabilities, classifies
from pwlock.generate.hf import HFGenerator
from pwlock.generate.vllm_actor import vllm_generator
from pwlock.model_source import local_dir
from pwlock.models import load_policy, n_parameters, save_policy
from pwlock.soft_labels import SOFT_LABELS, soft_answer, soft_labels_artifact
from pwlock.store import Store
from pwlock.tasks import Task, make_task
from pwlock.tasks.base import Example, Problem, TaskPolicy
from pwlock.tasks.llm import ChoiceAnswer, LLMTask
from pwlock.tasks.mmlu import read_soft_labels
from pwlock.tasks.sized import is_sized
from pwlock.train.sft import train_sft

log = logging.getLogger(__name__)

SAMPLES = "samples.jsonl"  # a pool's file: {"id": problem id, "completions": [...]} per line


# -- samples a user supplies ----------------------------------------------------------------------
def read_jsonl(path: str | os.PathLike, where: str) -> dict[str, list[tuple[int, str]]]:
    """Problem id -> (line number, completion) of each of its samples, in file order. Lines are
    {"id": <problem id>, "completion": <text>}; errors name the file and the line."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"{where}: {path}: cannot read: {e.strerror}") from None
    out: dict[str, list[tuple[int, str]]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: {path}:{n}: not valid JSON: {e}") from None
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("id"), (str, int))
            or not isinstance(row.get("completion"), str)
        ):
            raise ValueError(
                f'{where}: {path}:{n}: expected {{"id": <problem id>, "completion": <text>}}, got {line[:120]}'
            )
        out.setdefault(str(row["id"]), []).append((n, row["completion"]))
    if not out:
        raise ValueError(f"{where}: {path}: no samples")
    return out


def file_digest(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).expanduser().read_bytes()).hexdigest()


def coverage_errors(
    samples: Mapping[str, list], path: str, problems: Sequence[Problem], split: str, where: str
) -> list[str]:
    """What a supplied file lacks for `problems` (at least one sample each)."""
    missing = [p.id for p in problems if p.id not in samples]
    if not missing:
        return []
    return [
        f"{where}: {path}: no sample for {len(missing)} of the {len(problems)} problems of the {split} split, "
        f"e.g. id {missing[0]!r}" + (f", {missing[1]!r}" if len(missing) > 1 else "")
    ]


def unknown_ids(samples: Mapping[str, list[tuple[int, str]]], path: str, task: Task, where: str) -> list[str]:
    known = task.problem_ids()  # a problem a filter left out (the code task's task.keep) is still one
    bad = [(lines[0][0], pid) for pid, lines in samples.items() if pid not in known]
    if not bad:
        return []
    line, pid = min(bad)
    return [
        f"{where}: {path}:{line}: id {pid!r} is no problem of task {task.name!r}"
        + (f" ({len(bad)} ids like it)" if len(bad) > 1 else "")
        + f"; its ids look like {next(iter(known))!r}"
    ]


def as_completion(task: Task, problem: Problem, text: str, supplied: bool = False) -> str:
    """A sample as a completion of the task: a classifier's (MMLU) becomes its `ChoiceAnswer`; a
    supplied answer text of a text task gets the task's completion format (after a plain prompt's
    cue, a space), like the task's references."""

    ref = task.reference(problem)
    if isinstance(ref, ChoiceAnswer):
        match = [c for c in ref.choices if c.strip() == text.strip()]
        if not match:
            raise ValueError(f"problem {problem.id}: sample {text[:40]!r} is none of the choices {ref.choices}")
        return ChoiceAnswer(match[0], ref.choices)
    if supplied and isinstance(task, LLMTask):
        return task.format.completion(text.lstrip(" "))
    return text


# -- a pool as a policy ---------------------------------------------------------------------------
def read_pool(artifact_dir: Path) -> dict[str, list[str]]:
    """A sample pool artifact's samples: problem id -> its completions."""
    rows = (artifact_dir / SAMPLES).read_text().splitlines()
    return {row["id"]: row["completions"] for row in map(json.loads, rows)}


class _Pool:
    """A pool's samples, read from the store on first use (trials resolve pools they may not use);
    or soft labels (pwlock.soft_labels), each problem's distribution over the choices."""

    def __init__(self, name: str, key: str, store: Store, task: Task):
        self.name, self.key, self.store, self.task = name, key, store, task

    @cached_property
    def dir(self) -> Path:
        return self.store.artifact_dir(self.key)

    @cached_property
    def soft(self) -> dict[str, tuple[float, ...]] | None:
        path = self.dir / SOFT_LABELS
        return read_soft_labels(path) if path.is_file() else None

    @cached_property
    def samples(self) -> dict[str, list[str]]:
        return read_pool(self.dir)

    def get(self, problem: Problem, draw: int) -> str:
        if self.soft is not None:  # one distribution per problem: every draw is it
            if problem.id not in self.soft:
                raise ValueError(
                    f"policy {self.name!r}: its soft labels {self.key} have no distribution for problem {problem.id!r}"
                )
            return soft_answer(self.task, problem, self.soft[problem.id])
        completions = self.samples.get(problem.id)
        if not completions:
            raise ValueError(
                f"policy {self.name!r}: its pool {self.key} has no sample for problem {problem.id!r} "
                f"(it holds {len(self.samples)} problems)"
            )
        return as_completion(self.task, problem, completions[draw % len(completions)])


class PoolPolicy:
    """A TaskPolicy served from a sample pool: a problem's first sample; `for_epoch(e)` gives a view
    whose answer is the problem's sample e (mod the pool's n), the same on every rerun."""

    def __init__(self, pool: _Pool, epoch: int = 0):
        self.pool, self.epoch = pool, epoch

    def __call__(self, problem: Problem) -> str:
        return self.pool.get(problem, self.epoch)

    def for_epoch(self, epoch: int) -> PoolPolicy:
        return PoolPolicy(self.pool, epoch)

    def __repr__(self) -> str:
        return f"PoolPolicy({self.pool.name!r}, {self.pool.key}, epoch {self.epoch})"


class Unsampled:
    """A model policy with no pool where it is called: says so instead of answering."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, problem: Problem) -> str:
        raise ValueError(
            f"policy {self.name!r} is a model (policies.{self.name}) with no samples here "
            f"(problem {problem.id!r}): the plan made no pool of it for this use"
        )


def resolve(task: Task, pools: Mapping[str, str | None], store: Store) -> dict[str, TaskPolicy]:
    """The task's own policies with model policies in place: `pools` maps a policy's name to the key
    of its sample pool for this use (None: a model policy with no pool here, which raises if called)."""
    out = dict(task.policies())
    for name, key in pools.items():
        out[name] = Unsampled(name) if key is None else PoolPolicy(_Pool(name, key, store, task))
    return out


# -- artifacts ------------------------------------------------------------------------------------
def policy_model_artifact(
    name: str, task: dict, p: PolicyModelConfig, train_on: dict, seed: int, deps: tuple[str, ...] = ()
) -> Artifact:
    """`p.base` fine-tuned on `train_on` ({"references": true}, {"task_policy": name} or {"pool": key})
    for the problems of `p.train_split`."""
    spec = {
        "task": task,
        "base": p.base,
        "dtype": p.dtype,
        "train": asdict(p.train),
        "train_on": train_on,
        "split": p.train_split,
        "samples": p.train_samples,
        "seed": seed,
    }
    return Artifact("policy_model", f"policy model ({name})", spec, deps)


def policy_dpo_artifact(
    name: str, task: dict, p: PolicyModelConfig, model: Artifact, seed: int, generator: dict[str, Any]
) -> Artifact:
    """`model` (the policy fine-tuned on its `train_on`) improved by iterated DPO on the task's reward
    (`p.dpo`), sampling the policy's `train_split` with its generator. Its spec keeps the base and dtype:
    pools sampled from it and their price read them as from any policy model."""
    spec = {
        "task": task,
        "model": model.key,
        "base": p.base,
        "dtype": p.dtype,
        "dpo": asdict(p.dpo),
        "split": p.train_split,
        "generator": generator,
        "seed": seed,
    }
    gpus = 0.0 if generator["backend"] == "vllm" else None  # as a pool's: the engine takes its own share
    return Artifact("policy_dpo", f"policy model ({name}, iterated DPO)", spec, (model.key,), gpus=gpus)


def sample_pool_artifact(
    name: str,
    task: dict,
    source: dict,
    split: str,
    n: int,
    temperature: float | None,
    max_problems: int | None,
    seed: int,
    generator: dict | None,
    deps: tuple[str, ...] = (),
    inputs: dict[str, Any] | None = None,
) -> Artifact:
    """n samples per problem of `split` (its first `max_problems`) from `source`: {"model": key},
    {"base": hub id or path, "dtype": ...} or {"jsonl": sha256 digest} (the file's path in `inputs`)."""
    spec = {
        "task": task,
        "source": source,
        "split": split,
        "n": n,
        "temperature": temperature,
        "max_problems": max_problems,
        "seed": seed,
        "generator": generator,
    }
    what = "from a file" if "jsonl" in source else "greedy" if temperature == 0 else f"{n}/problem"
    # A vLLM engine takes its GPU share itself: the stage that drives it holds none; nor does one
    # that copies a supplied file.
    gpus = 0.0 if "jsonl" in source or (generator is not None and generator["backend"] == "vllm") else None
    return Artifact("sample_pool", f"samples of {name} ({split}, {what})", spec, deps, gpus=gpus, inputs=inputs or {})


@dataclass
class PolicyPlan:
    """The artifacts of a study's model policies and which pool serves each use."""

    artifacts: list[Artifact] = field(default_factory=list)  # each after those it needs
    lock: dict[str, str] = field(default_factory=dict)  # policy -> pool on the lock split
    elicit: dict[str, str] = field(default_factory=dict)  # policy -> pool on the elicit split
    scores: dict[str, str] = field(default_factory=dict)  # policy -> greedy pool on the eval split
    names: tuple[str, ...] = ()  # every model policy of the study
    errors: list[str] = field(default_factory=list)

    def lock_pools(self, *names: str | None) -> dict[str, str]:
        """The lock-split pools of those of `names` that are model policies."""
        return {n: self.lock[n] for n in names if n in self.lock}

    def trial_pools(self) -> dict[str, str | None]:
        """What a trial resolves: each model policy's elicit-split pool (None where it has none)."""
        return {n: self.elicit.get(n) for n in self.names}


def policy_names(task: Task, cfg: StudyConfig) -> set[str]:
    """Every policy a study can name: the task's own and its model policies."""
    return set(task.policies()) | set(cfg.policies)


def plan_policies(
    cfg: StudyConfig,
    task: Task,
    task_spec: dict,
    methods: Mapping[str, Method],
    models: Mapping[str, Artifact | None] | None = None,
    defer_coverage: bool = False,
) -> PolicyPlan:
    """The artifacts the study's model policies need for their uses, or the errors that stop them
    (naming `policies.<name>.<field>` or the file and line); reads supplied JSONL files. `models`:
    policies whose model is already planned (the code task's problem filter samples them before it
    keeps problems, pwlock.problem_filter), used as they are. `defer_coverage`: a supplied file that
    lacks some problems is not refused yet (a plan made before the filter kept its problems)."""
    plan = PolicyPlan(names=tuple(cfg.policies))
    if not cfg.policies:
        return plan
    lock_roles = ["strong", *[w for w in cfg.lock.weak if w != FIXEDRDM]]
    if "adversarial" in cfg.lock.variants and cfg.lock.intermediate:
        lock_roles.append(cfg.lock.intermediate)
    demonstrators = list(cfg.elicit.demonstrators) if any(m.demonstrations == "trial" for m in methods.values()) else []
    if any(m.demonstrations == "rl" for m in methods.values()):
        demonstrators.append(cfg.elicit.rl.sft_demonstrator)
    # Filtering's π_weak: a model's elicit-split pool holds a fresh sample per problem for each round it is drawn in.
    filtered = [w for w in cfg.lock.weak if any(m.samples_from == "weak" for m in methods.values())]
    plan.errors.extend(_use_errors(cfg, task, methods))
    if plan.errors:
        return plan
    planner = _PolicyPlanner(cfg, task, task_spec, plan, defer_coverage)
    planner.trained.update(models or {})
    epochs = max(cfg.lock.train_of(m).epochs for m in cfg.lock.modes)
    try:
        for name in [n for n in dict.fromkeys(lock_roles + demonstrators + filtered) if n in cfg.policies]:
            p = cfg.policies[name]
            if name in lock_roles and (
                a := planner.pool(name, "lock", p.samples_per_problem or epochs, p.temperature, "lock data")
            ):
                plan.lock[name] = a.key
            draws = filtering_draws(cfg.elicit.rl, len(task.problems("elicit"))) if name in filtered else 1
            why = "samples for filtering" if name in filtered else "demonstrations"
            if name in demonstrators + filtered and (a := planner.pool(name, "elicit", draws, p.temperature, why)):
                plan.elicit[name] = a.key
            if a := planner.pool(name, cfg.eval.split, 1, 0.0, "scores", cfg.eval.max_problems):
                plan.scores[name] = a.key
    except ValueError as e:  # a supplied file that cannot be read
        plan.errors.append(str(e))
    return plan


def plan_pools(
    cfg: StudyConfig,
    task: Task,
    task_spec: dict,
    name: str,
    splits: Sequence[str],
    n: int,
    temperature: float,
    why: str,
) -> tuple[PolicyPlan, dict[str, str], dict[str, Artifact | None]]:
    """Model policy `name`'s pools of n samples per problem of each of `splits` at `temperature` (a
    supplied file's: what it holds) for a use of the study's own (`why`, in errors): the artifacts
    they need, each pool's key by split, and the models planned for them (its own, and those of
    the policies it trains on), by policy."""
    plan = PolicyPlan(names=(name,))
    planner = _PolicyPlanner(cfg, task, task_spec, plan)
    pools = {}
    try:
        for split in splits:
            if a := planner.pool(name, split, n, temperature, why):
                pools[split] = a.key
    except ValueError as e:  # a supplied file that cannot be read
        plan.errors.append(str(e))
    return plan, pools, dict(planner.trained)


def _use_errors(cfg: StudyConfig, task: Task, methods: Mapping[str, Method]) -> list[str]:
    """What stops the model policies before any artifact is planned: unknown training sources, and
    uses pwlock cannot serve with a model π_weak."""
    errors = _soft_labels_errors(cfg, task)
    known = policy_names(task, cfg)
    for name, p in cfg.policies.items():
        if p.train_on not in (None, REFERENCES) and p.train_on not in known:
            errors.append(
                f"policies.{name}.train_on: no policy {p.train_on!r}; expected {REFERENCES!r} or one of {sorted(known)}"
            )
        if p.train_on == REFERENCES and any(task.reference(q) is None for q in task.problems(p.train_split)[:1]):
            errors.append(f"policies.{name}.train_on: task {task.name!r} has no reference answers")
    weak_models = [w for w in cfg.lock.weak if w in cfg.policies]
    if weak_models and cfg.lock.stop_at is not None:
        errors.append(
            f"lock.stop_at: measures π_weak on the weak split, which π_weak {weak_models[0]!r} "
            f"(policies.{weak_models[0]}) may train on; set lock epochs instead"
        )
    return errors


def _soft_labels_errors(cfg: StudyConfig, task: Task) -> list[str]:
    """Soft-label policies the task cannot serve: a task that is no classifier, and π_strong's soft
    labels asked of the stage and supplied as a file at once."""
    soft = [name for name, p in cfg.policies.items() if p.soft_labels]
    if not soft:
        return []
    if not classifies(task, task.problems("lock")[:1]):
        return [
            f"policies.{name}.soft_labels: task {task.name!r} is no classifier; soft labels are a "
            "distribution over a classifier's choices (MMLU's letters, App. B.2)"
            for name in soft
        ]
    supplied = cfg.task.get("soft_labels")
    if "strong" in soft and supplied is not None:
        return [
            f"policies.strong.soft_labels: π_strong's soft labels are made by pwlock here, and task.soft_labels "
            f"supplies them as a file ({supplied}) too; drop task.soft_labels (and task.strong: soft_labels) "
            "or policies.strong"
        ]
    return []


def _planned(cfg: StudyConfig, p: PolicyModelConfig) -> PolicyModelConfig:
    """A policy as the plan builds it: a soft-label policy without a base is model.base, in model.dtype."""
    if p.soft_labels and p.base is None:
        return dataclasses.replace(p, base=cfg.model.base, dtype=cfg.model.dtype)
    return p


class _PolicyPlanner:
    """Plans each model policy's artifacts once: its trained model (if it is trained) and its
    sample pools, shared by every use (a soft-label policy's distributions: one artifact for
    all); supplied JSONL files are read once."""

    def __init__(self, cfg: StudyConfig, task: Task, task_spec: dict, plan: PolicyPlan, defer_coverage: bool = False):
        self.cfg, self.task, self.task_spec, self.plan = cfg, task, task_spec, plan
        self.defer_coverage = defer_coverage
        self.models = {name: _planned(cfg, p) for name, p in cfg.policies.items()}
        self.classifier = classifies(task, task.problems("elicit")[:1])
        self.supplied: dict[str, tuple[dict, dict]] = {}  # name -> (samples by id, source spec)
        self.built: dict[str, Artifact] = {}
        self.trained: dict[str, Artifact | None] = {}

    def add(self, a: Artifact) -> Artifact:
        if a.key not in self.built:
            self.built[a.key] = a
            self.plan.artifacts.append(a)
        return self.built[a.key]

    def jsonl(self, name: str) -> tuple[dict, dict]:
        path = self.models[name].jsonl
        if name not in self.supplied and is_sized(self.task) and not Path(path).expanduser().exists():
            # priced at a given size without the file: a sample for every problem, keyed by its path
            self.supplied[name] = {pid: [(1, "")] for pid in self.task.problem_ids()}, {"jsonl": f"unread {path}"}
        if name not in self.supplied:
            samples = read_jsonl(path, f"policies.{name}.jsonl")
            self.plan.errors.extend(unknown_ids(samples, path, self.task, f"policies.{name}.jsonl"))
            self.supplied[name] = samples, {"jsonl": file_digest(path)}  # by content: its path is an input
        return self.supplied[name]

    def source(self, name: str) -> tuple[dict, tuple[str, ...]]:
        p = self.models[name]
        if p.jsonl is not None:
            return self.jsonl(name)[1], ()
        model = self.model(name)
        if model is None:
            return {"base": p.base, "dtype": p.dtype}, ()
        return {"model": model.key, "dtype": p.dtype}, (model.key,)

    def pool(
        self, name: str, split: str, n: int, temperature: float, why: str, max_problems: int | None = None
    ) -> Artifact | None:
        p = self.models[name]
        if p.soft_labels:  # its distributions on every problem serve every split and use
            model = self.model(name)
            return self.add(soft_labels_artifact(name, self.task_spec, model, p.base, p.dtype)) if model else None
        source, deps = self.source(name)
        if p.jsonl is not None:
            problems = eval_problems(self.task, split, max_problems)
            missing = coverage_errors(self.jsonl(name)[0], p.jsonl, problems, split, f"policies.{name}.jsonl ({why})")
            if missing:
                if why == "scores":  # a file without the evaluation problems leaves its policy unscored
                    log.info("policy %s: %s; it is not scored", name, missing[0])
                    return None
                if not self.defer_coverage:
                    self.plan.errors.extend(missing)
                    return None
                log.info("%s; checked again once task.keep's filter has kept its problems", missing[0])
            temperature, generator = None, None  # what the file holds
        else:
            generator = self.generator(name)
        inputs = {"jsonl": str(Path(p.jsonl).expanduser())} if p.jsonl is not None else None
        return self.add(
            sample_pool_artifact(
                name,
                self.task_spec,
                source,
                split,
                n,
                temperature,
                max_problems,
                self.cfg.seed,
                generator,
                deps,
                inputs,
            )
        )

    def generator(self, name: str) -> dict[str, Any]:
        generator = asdict(self.models[name].generator)
        if self.classifier:  # one forward pass over the letters, in the stage's own process: no engine
            if generator["backend"] == "vllm":
                self.plan.errors.append(
                    f"policies.{name}.generator.backend: task {self.task.name!r} samples a letter from "
                    "the model's distribution over the choices in one forward pass; set hf or auto"
                )
            generator["backend"] = "hf"
        else:  # "auto" becomes vLLM where stages have GPUs (the cluster's image has it)
            generator["backend"] = resolve_engine(generator["backend"], self.cfg.ray.gpus_per_stage)
        return generator

    def model(self, name: str) -> Artifact | None:
        """`name`'s fine-tuned model, or None where it is its base as is."""
        if name not in self.trained:
            self.trained[name] = self._train(name)
        return self.trained[name]

    def _train(self, name: str) -> Artifact | None:
        p = self.models[name]
        if p.train_on is None:
            return None
        deps: tuple[str, ...] = ()
        if p.train_on == REFERENCES:
            train_on: dict[str, Any] = {"references": True}
        elif p.train_on in self.models:
            src = self.pool(
                p.train_on,
                p.train_split,
                p.train_samples,
                self.models[p.train_on].temperature,
                f"training data of {name}",
            )
            if src is None:
                return None
            train_on, deps = {"pool": src.key}, (src.key,)
        else:
            train_on = {"task_policy": p.train_on}
        trained = self.add(policy_model_artifact(name, self.task_spec, p, train_on, self.cfg.seed, deps))
        if p.dpo is None:
            return trained
        if self.classifier:
            self.plan.errors.append(f"policies.{name}.dpo: task {self.task.name!r} is a classifier; DPO needs text")
            return trained
        return self.add(policy_dpo_artifact(name, self.task_spec, p, trained, self.cfg.seed, self.generator(name)))


# -- builders -------------------------------------------------------------------------------------
def build_policy_model(store: Store, a: Artifact, scratch: Path) -> dict[str, Any]:

    task = make_task(a.spec["task"])
    problems = task.problems(a.spec["split"])
    src, k = a.spec["train_on"], a.spec["samples"]
    if "references" in src:
        answers = [[task.reference(p)] for p in problems]
    else:
        policy = (
            PoolPolicy(_Pool("training data", src["pool"], store, task))
            if "pool" in src
            else task.policies()[src["task_policy"]]
        )
        view = getattr(policy, "for_epoch", lambda i: policy)
        # App. E.1: k samples per problem, exact repeats removed.
        answers = [list(dict.fromkeys(view(i)(p) for i in range(k))) for p in problems]
    data = [Example(task.prompt(p, None), answer) for p, ans in zip(problems, answers) for answer in ans]
    model, tokenizer = load_policy(a.spec["base"], a.spec["dtype"])
    stats = train_sft(model, tokenizer, data, TrainConfig(**a.spec["train"]), seed=a.spec["seed"], desc=a.label)
    save_policy(model, tokenizer, scratch)
    return {"train": stats, "examples": len(data), "parameters": n_parameters(model)}


def build_policy_dpo(store: Store, a: Artifact, scratch: Path) -> dict[str, Any]:
    """Iterated DPO on the fine-tuned policy (`policy_dpo_artifact`): each round samples from, and
    takes as reference, the model as it was at the round's start (HF in process, or a vLLM engine
    given each round's weights)."""
    task = make_task(a.spec["task"])
    d = a.spec["dpo"]
    model_dir = store.artifact_dir(a.spec["model"])
    model, tokenizer = load_policy(model_dir, a.spec["dtype"])
    ref = copy.deepcopy(model)
    problems = problem_subset(task.problems(a.spec["split"]), d["problems"], a.spec["seed"])
    generator = a.spec["generator"]
    with contextlib.ExitStack() as stack:
        if generator["backend"] == "vllm":
            cfg = VLLMConfig(**{**generator["vllm"], "seed": a.spec["seed"]})
            gen = stack.enter_context(vllm_generator(str(model_dir), tokenizer, cfg))
        else:
            gen = SameModel(ref, tokenizer, generator["batch_size"])  # the reference is the sampler
        records = dpo_elicitation(
            model,
            ref,
            tokenizer,
            task,
            gen,
            problems,
            [],
            TrainConfig(**d["train"]),
            a.spec["seed"],
            d["rounds"],
            iterated=True,
            beta=d["beta"],
            weighted=d["continuous_reward"],
            temperature=d["temperature"],
            max_new_tokens=task.max_new_tokens,
            on_round=lambda r: log.info(
                "%s: round %d, %d pairs, margin %.3f", a.label, r["candidate"], r["pairs"], r["margin"]
            ),
        )
    save_policy(model, tokenizer, scratch)
    return {"rounds": [{k: r[k] for k in ("candidate", "pairs", "margin", "steps")} for r in records]}


def build_sample_pool(store: Store, a: Artifact, scratch: Path) -> dict[str, Any]:
    task = make_task(a.spec["task"])
    problems = eval_problems(task, a.spec["split"], a.spec["max_problems"])
    src, n = a.spec["source"], a.spec["n"]
    if "jsonl" in src:
        path, where = a.inputs["jsonl"], a.label
        if file_digest(path) != src["jsonl"]:
            raise ValueError(f"{where}: {path} changed since the study was planned; plan it again")
        samples = read_jsonl(path, where)
        errors = coverage_errors(samples, path, problems, a.spec["split"], where)
        if errors:
            raise ValueError(errors[0])
        rows = {p.id: [as_completion(task, p, c, supplied=True) for _, c in samples[p.id][:n]] for p in problems}
    else:
        model_dir = str(store.artifact_dir(src["model"])) if "model" in src else src["base"]
        rows = generate_samples(
            task, model_dir, src["dtype"], problems, n, a.spec["temperature"], a.spec["seed"], a.spec["generator"]
        )
    with open(scratch / SAMPLES, "w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps({"id": p.id, "completions": [str(c) for c in rows[p.id]]}) + "\n")
    return {"problems": len(problems), "samples": sum(len(c) for c in rows.values())}


def generate_samples(
    task: Task,
    model_dir: str,
    dtype: str,
    problems: Sequence[Problem],
    n: int,
    temperature: float,
    seed: int,
    generator: Mapping[str, Any],
) -> dict[str, list[str]]:
    """n samples per problem, prompts without any password. Greedy (temperature 0) is drawn once
    and repeated. A classifier (MMLU) samples one of its choices from the model's distribution
    over them (sharpened or flattened by the temperature; its argmax when greedy)."""
    prompts = [task.prompt(p, None) for p in problems]
    draws = 1 if temperature == 0 else n
    if classifies(task, problems):
        return _sample_choices(task, model_dir, dtype, problems, prompts, n, temperature, seed)
    if generator["backend"] == "vllm":
        out = _vllm_generate(model_dir, prompts, draws, temperature, task.max_new_tokens, seed, generator["vllm"])
    else:
        model, tokenizer = load_policy(model_dir, dtype)
        torch.manual_seed(seed)
        gen = HFGenerator(model, tokenizer, max(1, generator["batch_size"] // draws))
        out = gen.generate(prompts, n=draws, temperature=temperature, max_new_tokens=task.max_new_tokens)
    return {p.id: (c * n)[:n] for p, c in zip(problems, out)}


def _sample_choices(
    task: Task,
    model_dir: str,
    dtype: str,
    problems: Sequence[Problem],
    prompts: list[str],
    n: int,
    temperature: float,
    seed: int,
) -> dict[str, list[str]]:
    model, tokenizer = load_policy(model_dir, dtype)
    refs = [task.reference(p) for p in problems]
    probs = choice_probabilities(model, tokenizer, [Example(q, r) for q, r in zip(prompts, refs)])
    rng = np.random.default_rng(seed)
    out = {}
    for p, r, row in zip(problems, refs, probs):
        if temperature == 0:
            picks = [int(row.argmax())] * n
        else:
            q = np.exp(np.log(np.maximum(row, 1e-30)) / temperature)
            picks = rng.choice(len(row), size=n, p=q / q.sum()).tolist()
        out[p.id] = [r.choices[i] for i in picks]
    return out


def _vllm_generate(
    model_dir: str,
    prompts: list[str],
    n: int,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    vllm_cfg: Mapping[str, Any],
) -> list[list[str]]:
    """A vLLM engine actor (pwlock.generate.vllm_actor) serving the model, given the token ids the HF
    backend would see. In an actor, not in this process: vLLM patches transformers' model classes
    in the process it runs in, and stage workers are reused. The stage holds no GPU; the engine
    takes `gpu_fraction` of one (see `plan_policies`)."""
    model_dir = local_dir(model_dir)  # a GGUF source: its converted directory
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with vllm_generator(model_dir, tokenizer, VLLMConfig(**{**vllm_cfg, "seed": seed})) as gen:
        return gen.generate(prompts, n=n, temperature=temperature, max_new_tokens=max_new_tokens)
