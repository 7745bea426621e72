"""A study description: a study's figures, each run by one or more sweep configs, and the sizes of
the tasks whose data is not at hand. Pricing it plans each config once (pwlock.plan, a task named
in `sizes` at that size, its data not read) and prices those plans (pwlock.pricing); an artifact
that several configs need (one key) is priced once.

    python -m pwlock cost sweeps/configs/paper.yaml
    python sweeps/rl.py --config sweeps/configs/paper.yaml --dry-run
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pwlock.config import ConfigError, config_from_dict, parse, read_yaml
from pwlock.cost import Assumptions, Estimate, Item
from pwlock.plan import Plan, plan
from pwlock.pricing import estimate_plan
from pwlock.store import Store
from pwlock.tasks import task_names
from pwlock.tasks.sized import TaskSize

SWEEPS = ("sample_efficiency", "generalization", "rl", "from_scratch")  # the entry points in sweeps/


@dataclass
class Figure:
    id: str
    title: str
    sweep: str  # the entry point in sweeps/ that runs it (one of SWEEPS)
    configs: list[str]  # the sweep configs that run it, between them; paths from the description's folder


@dataclass
class Description:
    name: str
    figures: list[Figure]
    # Task name -> its size, for tasks whose data is not at hand (pwlock.tasks.sized): their configs
    # are planned at that size. A task not named here is planned on its data, as a sweep plans it.
    sizes: dict[str, TaskSize] = field(default_factory=dict)
    assumptions: dict[str, Any] = field(default_factory=dict)  # pwlock.cost.Assumptions' fields
    reference_gpu_hours: float | None = None  # what to compare the total with ...
    reference: str = ""  # ... and where that figure comes from
    source: str = ""

    def path(self, config: str) -> Path:
        """A figure's config file."""
        return Path(self.source).parent / config


@dataclass
class Planned:
    """One of the description's configs, planned once, with the figures it runs."""

    path: Path
    plan: Plan
    figures: tuple[str, ...]


def is_description(raw: Any) -> bool:
    """A study description (it lists `figures:`), not a sweep config."""
    return isinstance(raw, dict) and "figures" in raw


def load(path: str | Path) -> Description:
    """The description in the YAML file `path`, checked."""
    return from_dict(read_yaml(path, "study description"), str(path))


def from_dict(raw: Any, source: str = "<dict>") -> Description:
    """The description `raw` (parsed YAML), checked field by field before anything is planned."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    d = parse(Description, {**raw, "source": source}, source)
    errors = [] if d.figures else ["figures: expected at least one figure"]
    seen: set[str] = set()
    for i, f in enumerate(d.figures):
        where = f"figures[{i}] ({f.id})"
        if f.id in seen:
            errors.append(f"{where}.id: {f.id!r} names two figures")
        seen.add(f.id)
        if f.sweep not in SWEEPS:
            errors.append(f"{where}.sweep: expected one of {list(SWEEPS)}, got {f.sweep!r}")
        if not f.configs:
            errors.append(f"{where}.configs: expected the sweep configs that run it")
        errors += [f"{where}.configs: {d.path(c)}: no such file" for c in f.configs if not d.path(c).is_file()]
    for name, size in d.sizes.items():
        if name not in task_names():
            errors.append(f"sizes.{name}: no task {name!r}; expected one of {task_names()}")
        errors += [f"sizes.{name}.{e}" for e in size.validate()]
    if d.reference_gpu_hours is not None and d.reference_gpu_hours <= 0:
        errors.append(f"reference_gpu_hours: expected > 0, got {d.reference_gpu_hours}")
    if errors:
        raise ConfigError(f"{source}: " + "; ".join(errors))
    return d


def plans(d: Description, store: Store | None = None) -> list[Planned]:
    """Each config the figures name, planned once (in the order they are first named), with the
    figures that name it; a task in `d.sizes` at that size."""
    figures: dict[str, list[str]] = {}
    for f in d.figures:
        for c in f.configs:
            figures.setdefault(c, []).append(f.id)
    out = []
    for c, ids in figures.items():
        raw = read_yaml(d.path(c))
        task = raw.get("task", {}).get("name") if isinstance(raw, dict) and isinstance(raw.get("task"), dict) else None
        cfg = config_from_dict(raw, str(d.path(c)), data=task not in d.sizes)
        out.append(Planned(d.path(c), plan(cfg, store, d.sizes), tuple(ids)))
    return out


def estimate(
    d: Description, store: Store | None = None, overrides: dict[str, Any] | None = None, compare_engines: bool = True
) -> Estimate:
    """The description priced: every config's plan, each artifact once, each trial under its figures."""
    a = Assumptions().with_overrides(d.assumptions).with_overrides(overrides or {}, "--assume")
    planned = plans(d, store)
    est = _priced(d, planned, store, a)
    if compare_engines and est.evaluates_by_generation:
        other = dataclasses.replace(a, evaluation_engine="vllm" if a.evaluation_engine == "hf" else "hf")
        est.other_engine_gpu_hours = _priced(d, planned, store, other).gpu_hours
    return est


def _priced(d: Description, planned: list[Planned], store: Store | None, a: Assumptions) -> Estimate:
    artifacts: dict[str, Item] = {}
    trials: list[Item] = []
    generation = False
    for pl in planned:
        est = estimate_plan(pl.plan, store, a, compare_engines=False)
        generation |= est.evaluates_by_generation
        task = pl.plan.task.name
        for i in est.artifacts:
            artifacts.setdefault(i.id, dataclasses.replace(i, label=f"{task}: {i.label}"))
        name = pl.path.stem  # a trial's name is its config's own: the file's name says which
        trials += [
            dataclasses.replace(t, id=f"{name}/{t.id}", label=f"{name}/{t.label}", figures=pl.figures)
            for t in est.trials
        ]
    return Estimate(
        d.name,
        d.source,
        a,
        list(artifacts.values()),
        trials,
        {f.id: f.title for f in d.figures},
        evaluates_by_generation=generation,
        reference=None if d.reference_gpu_hours is None else (d.reference_gpu_hours, d.reference),
    )


def describe(d: Description, est: Estimate, sweep: str | None = None) -> str:
    """What `sweeps/<sweep>.py --config <description> --dry-run` prints: the plan and cost of the
    figures that sweep runs (every figure for None), then the whole study's total, sweep by sweep."""
    mine = [f.id for f in d.figures if sweep is None or f.sweep == sweep]
    if not mine:
        raise ConfigError(
            f"{d.source}: no figure is run by sweep {sweep!r}; its figures' sweeps are "
            f"{sorted({f.sweep for f in d.figures})}"
        )
    runs = f"the {len(mine)} of its {len(d.figures)} figures that sweeps/{sweep}.py runs" if sweep else "every figure"
    lines = [f"study {d.name!r} from {d.source}: {runs}, on one {est.assumptions.gpu}"]
    part = est.restrict(mine).report(detail=True).splitlines()[1:]
    if sweep:  # its total is this sweep's; the study's follows
        part = [
            f"  sweeps/{sweep}.py's figures, total: " + x.removeprefix("  total: ") if x.startswith("  total: ") else x
            for x in part
        ]
    lines += part
    lines.append(
        f"the whole study ({len(d.figures)} figures; an artifact two sweeps need counts in both lines "
        "below and once in the total):"
    )
    for name in SWEEPS:
        figures = [f.id for f in d.figures if f.sweep == name]
        if figures:
            part_est = est.restrict(figures)
            built = [i for i in part_est.artifacts if not i.in_store]
            plural = "s" * (len(figures) != 1)
            lines.append(
                f"  sweeps/{name}.py: {len(figures)} figure{plural}, {len(part_est.trials):,} trials and "
                f"{len(built)} artifacts {_hours(part_est.gpu_hours)}"
            )
    lines += est.totals()
    return "\n".join(lines)


def _hours(h: float) -> str:
    return f"{h:,.2f} GPU-h" if h < 10 else f"{h:,.0f} GPU-h"


def run_instead(d: Description, sweep: str | None = None) -> str:
    """Why a study description cannot run, and the configs that run the figures of `sweep`."""
    figures = [f for f in d.figures if sweep is None or f.sweep == sweep]
    cmd = f"sweeps/{sweep}.py" if sweep else "the sweep"
    runs = "; ".join(f"{f.id}: {', '.join(str(d.path(c)) for c in f.configs)}" for f in figures)
    return (
        f"{d.source} is a study description (`figures:`), not a sweep config: it plans and prices the study "
        f"but runs nothing. Print this sweep's part of it with --dry-run; to run a figure, give {cmd} one of "
        f"its configs with --config: {runs}"
    )


__all__ = [
    "SWEEPS",
    "Description",
    "Figure",
    "Planned",
    "describe",
    "estimate",
    "from_dict",
    "is_description",
    "load",
    "plans",
    "run_instead",
]
