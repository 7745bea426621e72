"""The paper's study as the paper states it (tests/fixtures/paper_figures.yaml): the record the
runnable paper configs are checked against, figure by figure; and sweeps/configs/paper.yaml's
estimate, computed once per test process."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from pwlock import description
from pwlock.config import parse, read_yaml
from pwlock.cost import Estimate

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "tests" / "fixtures" / "paper_figures.yaml"
PAPER = ROOT / "sweeps" / "configs" / "paper.yaml"


@dataclass
class ModelSpec:
    hub: str


@dataclass
class StrongSpec:
    recipe: str  # sft | sft+iterated_dpo | base (the strong base itself) | labels (the data's answers)
    demos_per_problem: int = 1


@dataclass
class TaskSpec:
    problems: int
    strong_base: str
    weak_base: str
    strong: StrongSpec
    domains: dict[str, dict[str, float]] = field(default_factory=dict)  # grouping -> domain -> share


@dataclass
class RLSpec:
    n: int = 64
    iterations: int = 50
    epochs_per_iteration: int = 1
    dpo_rounds: int = 12
    dpo_problems: int = 1100
    eval_every: int = 1
    eval_problems_between: int | None = None


@dataclass
class Defaults:
    seeds: int = 3
    lock_epochs: int = 8
    policy_epochs: int = 2
    batch_size: int = 8
    sample_budgets: list[int] = field(default_factory=lambda: [256, 512, 1024])
    splits: dict[str, float] = field(default_factory=dict)
    rl: RLSpec = field(default_factory=RLSpec)


@dataclass
class LockSpec:
    weak: str = "default"  # the task's weak base, another model, or fixedrdm
    passwords: str = "single"  # single | per_domain (of the figure's grouping; App. C.3)
    holdout: bool = False  # one lock per domain of the grouping, each without that domain (B.3.4)
    trigger: str = "password"  # password | setting_variation (B.1.3)
    adversarial: str | None = None  # a second password for this intermediate model (B.3.2)
    strong: str = "default"  # default | soft_labels (B.2)


@dataclass
class FigureSpec:
    id: str
    title: str
    sweep: str
    config: str | None = None  # the toy figures: the sweep config itself
    tasks: list[str] = field(default_factory=list)
    joint: bool = False  # the tasks locked into one model
    locks: list[LockSpec] = field(default_factory=lambda: [LockSpec()])
    methods: list[str] = field(default_factory=lambda: ["sft"])
    demonstrators: list[str] = field(default_factory=lambda: ["high_quality"])
    ks: list[int] = field(default_factory=list)
    grouping: str | None = None
    seeds: int | None = None
    eval_points: int | None = None
    dpo_lrs: int = 1
    continuous_reward: bool = False


@dataclass
class Record:
    name: str
    models: dict[str, ModelSpec]
    tasks: dict[str, TaskSpec]
    figures: list[FigureSpec]
    defaults: Defaults = field(default_factory=Defaults)


@functools.cache
def record() -> Record:
    return parse(Record, read_yaml(RECORD), str(RECORD))


def figure(fig_id: str) -> FigureSpec:
    return next(f for f in record().figures if f.id == fig_id)


@functools.cache
def paper_estimate() -> Estimate:
    """sweeps/configs/paper.yaml priced (every config planned at its sizes), once."""
    return description.estimate(description.load(PAPER), compare_engines=False)


def priced_trials(fig_id: str, config: str) -> list:
    """The trials paper.yaml prices for figure `fig_id` from the config file `config`."""
    name = config.removesuffix(".yaml")
    return [t for t in paper_estimate().trials if fig_id in t.figures and t.id.startswith(f"{name}/")]
