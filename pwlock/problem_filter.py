"""The code problems a policy solves, as an upstream stage (paper §4.2, App. E.1: the paper keeps the
APPS and MBPP problems GPT-4-Turbo solves at T=0, 3,837 of them).

    task:
      name: code
      keep: {solved_by: gpt4, samples: 1, temperature: 0, min_passing: 1}   # pwlock.tasks.code.KeepConfig

    problem filter   the policy's samples of every problem of every split, each run against the
                     problem's tests in the sandbox; the ids of the problems with at least
                     `min_passing` passing samples (kept.json, with each problem's count)

`solved_by` names any policy of the study: a model policy (its sample pools, pwlock.policies: n
samples per problem at `temperature`), a supplied JSONL file (its first n lines per problem, which
must cover every problem), or one the task defines itself (the code task's references: its one
answer counts as all n). Temperature 0 draws one greedy answer, which counts as all n.

Which splits: all four. The paper filters its whole data set, then splits it, so every split,
validation included, holds only problems GPT-4 solves: correctness is measured on problems the
filter's policy can solve, and π_strong's and the locked model's with the password are not
comparable with a study without the filter. Here the splits are drawn over every problem first (by
seed, as without a filter) and each keeps its kept problems: no problem changes split, and what is
held out stays held out. Filtering on π_strong itself (a model policy) rather than GPT-4 makes the
validation problems the ones π_strong solves, which lifts its own correctness there towards 1 by
construction; the paper's choice, a policy outside the study, does not.

How the rest of the study sees it: a two-phase plan. The filter and what it reads (its policy's
pools, and the models they sample) are planned on every problem. Once the store holds the filter,
the plan writes its kept ids into the task's spec (`kept`, pwlock.tasks.code.KeptProblems); every
process makes its task from that spec, so every consumer (lock data, pools, evaluations,
demonstrations, RL problem subsets, the plan's checks, pricing's counts) gets the same kept problems
from `make_task`, with no store and no code of its own, and the ids enter the key of everything
downstream (a store's artifacts of the unfiltered problems are never reused for them; a study
without `task.keep` keeps its keys). A model policy the filter sampled keeps the model it was
sampled from: π_strong is the same model before and after the filter. The other way, consumers
reading the kept ids from the store at run time, would need every consumer of a task (a dozen
stages, the trials) to read the store before it has problems, and the plan's checks and prices
could not see the kept problems at all. Until the filter is built (a --dry-run before it, or the
first plan of a run), the plan is provisional: its task has every problem and its spec names the
filter as pending, so what it plans downstream has keys of its own that no build can use (a task
made from that spec refuses to give problems), its counts and prices are upper bounds, and a supplied
file's gaps are not refused yet; pwlock.sweep builds the filter first, then plans the study again. The kept ids are a
list in every downstream artifact's spec: some 40 kB of metadata each for the paper's 3,837.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pwlock.artifacts import Artifact
from pwlock.config import ConfigError, StudyConfig, parse
from pwlock.cost import Cost, Pricer
from pwlock.policies import as_completion, plan_pools, policy_names, read_pool
from pwlock.store import Store
from pwlock.tasks import Task, make_task
from pwlock.tasks.code import CodeTask, KeepConfig, KeptProblems
from pwlock.tasks.splits import SPLITS

log = logging.getLogger(__name__)

KEPT = "kept.json"  # the artifact's file: {"kept": {split: [ids]}, "passing": {id: n}, "samples": {id: n}}
# The sandbox's pace per core, from docs/sandbox.md ("Scoring speed": 93 runs/s and 2.5 cold C++
# compiles/s on 2 shared cores): CPU-seconds per test run and per C++ program compiled.
RUN_CPU_S = 2 / 93
COMPILE_CPU_S = 2 / 2.5


@dataclass
class Keep:
    """A study's problem filter, planned: its artifacts, and the task before and after it."""

    cfg: KeepConfig
    artifact: Artifact  # the filter stage
    artifacts: list[Artifact]  # in build order: the models and pools it reads, then the filter
    every: Task  # the task with every problem (what the filter runs on)
    task: Task  # the kept problems' task; every problem's while the filter is pending
    task_spec: dict[str, Any]  # the task's spec with `kept`: the ids, or the pending filter's key
    models: dict[str, Artifact | None] = field(default_factory=dict)  # models its samples come from, by policy
    kept: list[str] | None = None  # None: not built yet (a provisional plan)

    @property
    def pending(self) -> bool:
        return self.kept is None

    @property
    def keys(self) -> set[str]:
        return {a.key for a in self.artifacts}

    def describe(self) -> str:
        c = self.cfg
        head = (
            f"problem filter (task.keep): the problems {c.solved_by!r} solves ({c.samples} sample"
            f"{'s' * (c.samples != 1)} each, at least {c.min_passing} passing), in every split"
        )
        every = {s: len(self.every.problems(s)) for s in SPLITS}
        if self.pending:
            return (
                f"{head}: not built yet, so what follows is provisional: planned on all {sum(every.values())} "
                "problems, with keys that change and counts (and prices) that can only shrink once the "
                "filter has kept its problems (a sweep builds it first, then plans again)"
            )
        kept = {s: len(self.task.problems(s)) for s in SPLITS}
        splits = ", ".join(f"{s} {kept[s]}/{every[s]}" for s in SPLITS)
        return f"{head}: kept {sum(kept.values())} of {sum(every.values())} problems ({splits})"


def problem_filter_artifact(task: dict, policy: str, pools: dict[str, str], samples: int, min_passing: int) -> Artifact:
    """The problems `policy` solves, of the task `task` (every problem): its samples read from
    `pools` (split -> sample pool key), or answered by the task's own policy where `pools` is empty.
    It runs programs only: it holds no GPU."""
    spec = {"task": task, "policy": policy, "pools": dict(sorted(pools.items())), "samples": samples}
    spec["min_passing"] = min_passing
    deps = tuple(sorted(set(pools.values())))
    return Artifact("problem_filter", f"problems {policy} solves", spec, deps, gpus=0.0)


def plan_keep(cfg: StudyConfig, task: Task, task_spec: dict[str, Any], store: Store | None = None) -> Keep | None:
    """The study's problem filter (`task.keep`), planned on `task` (made from `task_spec`, every
    problem), with the kept problems read from `store` where it holds the filter; None without
    `task.keep`. Misuse is refused here, before any work, naming the field."""
    where = cfg.source
    if "kept" in cfg.task:
        raise ConfigError(f"{where}: task.kept: written by the plan from task.keep, not by hand; use task.keep")
    raw = cfg.task.get("keep")
    if raw is None:
        return None
    keep = parse(KeepConfig, raw, where, "task.keep")
    errors = [f"task.keep.{e}" for e in keep.validate()]
    if not isinstance(task, CodeTask):
        errors.append(
            f"task.keep: only the code task keeps the problems a policy solves (it runs their tests); "
            f"task {task.name!r} has no tests to run"
        )
    elif keep.solved_by not in (names := policy_names(task, cfg)):
        errors.append(f"task.keep.solved_by: no policy {keep.solved_by!r}; expected one of {sorted(names)}")
    if errors:
        raise ConfigError(f"{where}: " + "; ".join(errors))
    artifacts: list[Artifact] = []
    pools: dict[str, str] = {}
    models: dict[str, Artifact | None] = {}
    if keep.solved_by in cfg.policies:
        pols, pools, models = plan_pools(
            cfg, task, task_spec, keep.solved_by, list(SPLITS), keep.samples, keep.temperature, "task.keep"
        )
        if pols.errors:
            raise ConfigError(f"{where}: " + "; ".join(pols.errors))
        artifacts = list(pols.artifacts)
    artifact = problem_filter_artifact(task_spec, keep.solved_by, pools, keep.samples, keep.min_passing)
    artifacts.append(artifact)
    kept = built_kept(store, artifact) if store is not None else None
    assert isinstance(task, CodeTask)
    if kept is None:
        spec = {**task_spec, "kept": {"pending": artifact.key}}
        return Keep(keep, artifact, artifacts, task, task, spec, models)
    kept_task = task.keeping(KeptProblems(ids=kept))
    empty = [s for s in SPLITS if not kept_task.problems(s)]
    if empty:
        raise ConfigError(
            f"{where}: task.keep: the filter {artifact.key} kept no problem of the {empty[0]} split (of its "
            f"{len(task.problems(empty[0]))}): {keep.solved_by!r} solves none of them"
        )
    spec = {**task_spec, "kept": {"ids": kept}}
    return Keep(keep, artifact, artifacts, task, kept_task, spec, models, kept)


def built_kept(store: Store, artifact: Artifact) -> list[str] | None:
    """The ids the filter `artifact` kept, sorted, if `store` holds it (checked whole); else None."""
    if not store.has(artifact.key):
        return None
    data = json.loads((store.artifact_dir(artifact.key) / KEPT).read_text())
    return sorted(i for ids in data["kept"].values() for i in ids)


def build_problem_filter(store: Store, a: Artifact, scratch: Path) -> dict[str, Any]:
    """Run each problem's samples against its tests in the sandbox (each distinct program once) and
    keep the problems with at least `min_passing` passing samples, split by split."""
    task = make_task(a.spec["task"])
    name, n, need, pools = a.spec["policy"], a.spec["samples"], a.spec["min_passing"], a.spec["pools"]
    answers: dict[str, list[str]] = {}  # problem id -> its samples
    problems = {}
    for split in SPLITS:
        samples = read_pool(Path(store.artifact_dir(pools[split]))) if pools else None
        for p in task.problems(split):
            problems[p.id] = p
            if samples is None:  # the task's own policy: its one answer counts as each of the n
                answers[p.id] = [task.policies()[name](p)] * n
            else:
                answers[p.id] = [as_completion(task, p, c) for c in samples[p.id][:n]]
    distinct = sorted({(pid, c) for pid, cs in answers.items() for c in cs})
    scores = task.score_many([problems[pid] for pid, _ in distinct], [c for _, c in distinct])
    passed = dict(zip(distinct, scores))
    passing = Counter({pid: sum(passed[(pid, c)] == 1.0 for c in cs) for pid, cs in answers.items()})
    kept = {s: [p.id for p in task.problems(s) if passing[p.id] >= need] for s in SPLITS}
    data = {
        "kept": kept,
        "passing": dict(sorted(passing.items())),
        "samples": {pid: len(cs) for pid, cs in sorted(answers.items())},
    }
    (scratch / KEPT).write_text(json.dumps(data, indent=1))
    counts = {s: [len(kept[s]), len(task.problems(s))] for s in SPLITS}
    log.info("%s: kept %s", a.label, ", ".join(f"{s} {k}/{t}" for s, (k, t) in counts.items()))
    return {"kept": counts, "programs": len(distinct)}


def price(pricer: Pricer, a: Artifact, task: CodeTask, cpus: float) -> Cost:
    """The filter's sandbox time, as its stage's overhead: each sample of each problem (at most n
    distinct programs) run on each of its tests, and a checker for function problems, at RUN_CPU_S
    per run and COMPILE_CPU_S per C++ program, on the workers its sandbox runs at once (the task's
    `workers`, else the stage's CPUs)."""
    n = a.spec["samples"] if a.spec["pools"] else 1
    runs = compiles = 0
    for split in SPLITS:
        for p in task.problems(split):
            d = p.data
            if not d:  # a placeholder (a task priced at a given size, pwlock.tasks.sized): one run
                runs += n
                continue
            runs += n * (len(d["tests"]) if d["kind"] == "stdio" else sum(1 for g in d["calls"] if g) + 1)
            compiles += n * (task.language_of(p) == "cpp")
    workers = task.cfg.workers or max(1.0, cpus)
    return pricer.overhead() + Cost(overhead_s=(runs * RUN_CPU_S + compiles * COMPILE_CPU_S) / workers)
