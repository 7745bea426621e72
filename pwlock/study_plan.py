"""A study described by a plain data file, expanded into the upstream artifacts and trials each
figure needs, and priced by pwlock.cost.

The file lists models (parameters), tasks (problems, strong and weak base, how π_strong is made,
tokens per example, domains) and figures (tasks × locks × methods × demonstrators × k × seeds, or a
sweep config). Artifacts are shared across figures by what they are: one π_weak per task and base
model, one sample pool per policy and split, one locked model per lock. The LLM tasks' figures are
priced from this description (their datasets are not needed); they run as sweep configs whose
`policies:` build those models and pools (pwlock/policies.py). A figure that names a sweep config
(`config:`) is planned by pwlock.plan like any sweep, with its real artifact keys. Each figure names
the sweep that runs it (`sweep:`); that sweep's --dry-run prints its figures' plan and cost, then the
study's total.

    python -m pwlock cost sweeps/configs/paper.yaml
    python sweeps/rl.py --config sweeps/configs/paper.yaml --dry-run
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pwlock.config import (
    FIXEDRDM,
    ConfigError,
    TrainConfig,
    VLLMConfig,
    load_config,
    parse,
    read_yaml,
    rl_eval_errors,
)
from pwlock.cost import (
    DPO_METHODS,
    EVALUATIONS,
    KNOWN_ARCHS,
    Assumptions,
    Cost,
    Engine,
    Estimate,
    Item,
    Model,
    Pricer,
    Tokens,
    dpo_pairs,
)
from pwlock.elicit.dpo import SAMPLES_PER_PROBLEM
from pwlock.elicit.expert_iteration import eval_rounds, round_size
from pwlock.elicit.methods import METHODS, unknown
from pwlock.elicit.sft import epoch_candidates
from pwlock.plan import plan
from pwlock.pricing import estimate_plan

RECIPES = ("sft", "sft+iterated_dpo", "base", "labels")  # how π_strong is made (Table 1)
POOL_ENGINE = "vllm"  # sample pools, RL rollouts and RL trials' evaluation: in a vLLM engine
SPLIT_NAMES = ("weak", "lock", "elicit", "val")
SWEEPS = ("sample_efficiency", "generalization", "rl", "from_scratch")  # the entry points in sweeps/


@dataclass
class ModelSpec:
    params: float
    hub: str = ""


@dataclass
class StrongSpec:
    recipe: str  # sft | sft+iterated_dpo | base (the strong base itself) | labels (the data's answers)
    demos_per_problem: int = 1  # SFT examples per problem of the elicit split (App. E.4)


@dataclass
class TokensSpec:
    prompt: float
    completion: float
    generated: float | None = None  # new tokens of a sample or greedy answer; default: completion


@dataclass
class TaskSpec:
    problems: int
    strong_base: str
    weak_base: str
    strong: StrongSpec
    tokens: TokensSpec
    evaluation: str = "generate"  # generate | classify | forward
    domains: dict[str, dict[str, float]] = field(default_factory=dict)  # grouping -> domain -> share
    # As the task's sweep config: task.max_new_tokens (a locked model's samples are priced at
    # Assumptions.locked_new_tokens_share of it; None: at the reference's length), and the trials'
    # engine's elicit.rl.generator.vllm.max_model_len (None: the model's own context).
    max_new_tokens: int | None = None
    max_model_len: int | None = None


@dataclass
class RLSpec:
    n: int = 64
    iterations: int = 50
    epochs_per_iteration: int = 1
    dpo_rounds: int = 12
    dpo_problems: int = 1100
    # As RLConfig: the whole validation set every `eval_every` rounds and at the last; a fixed
    # subset of `eval_problems_between` problems at the rounds between.
    eval_every: int = 1
    eval_problems_between: int | None = None


@dataclass
class Defaults:
    seeds: int = 3
    lock_epochs: int = 8
    policy_epochs: int = 2
    batch_size: int = 8
    sample_budgets: list[int] = field(default_factory=lambda: [256, 512, 1024])
    splits: dict[str, float] = field(default_factory=lambda: {"weak": 0.1, "lock": 0.4, "elicit": 0.3, "val": 0.2})
    rl: RLSpec = field(default_factory=RLSpec)
    # How trials train (their GPU memory: the optimizer, fp32 master weights) and the vLLM engines
    # of trials and of the stages that evaluate locks (elicit.rl.generator.vllm), and of the stages
    # that sample a policy's pools on a GPU of their own (policies.<name>.generator.vllm).
    train: TrainConfig = field(default_factory=TrainConfig)
    engine: VLLMConfig = field(default_factory=VLLMConfig)
    pool_engine: VLLMConfig = field(default_factory=lambda: VLLMConfig(gpu_fraction=0.9, gpu_memory_utilization=0.85))


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
    sweep: str  # the entry point in sweeps/ that runs it, one of SWEEPS
    config: str | None = None  # a sweep config, planned by pwlock.sweep
    tasks: list[str] = field(default_factory=list)
    joint: bool = False  # the tasks are locked into one model; demonstrations come from one task at a time
    locks: list[LockSpec] = field(default_factory=lambda: [LockSpec()])
    methods: list[str] = field(default_factory=lambda: ["sft"])
    demonstrators: list[str] = field(default_factory=lambda: ["high_quality"])
    ks: list[int] = field(default_factory=list)
    grouping: str | None = None  # demonstrations from one domain of this grouping at a time
    seeds: int | None = None
    eval_points: int | None = None  # SFT: evaluations per trial (default: its epoch candidates)
    dpo_lrs: int = 1  # DPO learning rates tried per trial (App. G.3 tries 3)
    continuous_reward: bool = False  # DPO pairs weighted by a continuous reward (Fig. 14): nearly all differ


@dataclass
class StudySpec:
    name: str
    models: dict[str, ModelSpec]
    tasks: dict[str, TaskSpec]
    figures: list[FigureSpec]
    defaults: Defaults = field(default_factory=Defaults)
    assumptions: dict[str, Any] = field(default_factory=dict)
    # GPU-hours to compare the estimate with, and where they come from (the paper: App. F)
    reference_gpu_hours: float | None = None
    reference: str = ""
    source: str = "<dict>"


# -- loading -------------------------------------------------------------------------------------
def load(path: str | Path) -> StudySpec:
    """A study description from its YAML file."""
    return from_dict(read_yaml(path, "study file"), str(path))


def from_dict(raw: Any, source: str = "<dict>") -> StudySpec:
    """A study description from its parsed YAML, checked (errors name `source` and the field)."""
    if isinstance(raw, dict):
        raw = {**raw, "source": source}
    study = parse(StudySpec, raw, source)
    errors = _validate(study)
    if errors:
        raise ConfigError(f"{source}: " + "; ".join(errors))
    return study


def _validate(s: StudySpec) -> list[str]:
    e: list[str] = []
    d = s.defaults
    for name in ("seeds", "lock_epochs", "policy_epochs", "batch_size"):
        if getattr(d, name) < 1:
            e.append(f"defaults.{name}: expected >= 1, got {getattr(d, name)}")
    if not d.sample_budgets or any(b < 1 for b in d.sample_budgets):
        e.append(f"defaults.sample_budgets: expected positive numbers of samples, got {d.sample_budgets}")
    if set(d.splits) != set(SPLIT_NAMES) or abs(sum(d.splits.values()) - 1) > 1e-6 or min(d.splits.values()) <= 0:
        e.append(f"defaults.splits: expected positive shares of {list(SPLIT_NAMES)} summing to 1, got {d.splits}")
    for name in ("n", "iterations", "epochs_per_iteration", "dpo_rounds", "dpo_problems"):
        if getattr(d.rl, name) < 1:
            e.append(f"defaults.rl.{name}: expected >= 1, got {getattr(d.rl, name)}")
    e += rl_eval_errors(d.rl.eval_every, d.rl.eval_problems_between, "defaults.rl.")
    if s.reference_gpu_hours is not None and not s.reference_gpu_hours > 0:
        e.append(f"reference_gpu_hours: expected a positive number, got {s.reference_gpu_hours}")
    for name, m in s.models.items():
        if not m.params > 0:
            e.append(f"models.{name}.params: expected a positive number of parameters, got {m.params}")
    for name, t in s.tasks.items():
        w = f"tasks.{name}"
        if t.problems < 10:
            e.append(f"{w}.problems: expected >= 10, got {t.problems}")
        for role in ("strong_base", "weak_base"):
            if getattr(t, role) not in s.models:
                e.append(f"{w}.{role}: unknown model {getattr(t, role)!r}; expected one of {sorted(s.models)}")
        if t.strong.recipe not in RECIPES:
            e.append(f"{w}.strong.recipe: expected one of {list(RECIPES)}, got {t.strong.recipe!r}")
        if t.strong.demos_per_problem < 1:
            e.append(f"{w}.strong.demos_per_problem: expected >= 1, got {t.strong.demos_per_problem}")
        for part in ("prompt", "completion", "generated"):
            value = getattr(t.tokens, part)
            if value is not None and not value > 0:
                e.append(f"{w}.tokens.{part}: expected a positive number of tokens, got {value}")
        if t.evaluation not in EVALUATIONS:
            e.append(f"{w}.evaluation: expected one of {list(EVALUATIONS)}, got {t.evaluation!r}")
        for g, shares in t.domains.items():
            if not shares or abs(sum(shares.values()) - 1) > 0.01 or min(shares.values()) <= 0:
                e.append(f"{w}.domains.{g}: expected positive shares summing to 1, got {shares}")
    policies = {"default", FIXEDRDM, *s.models}
    ids = set()
    for i, f in enumerate(s.figures):
        w = f"figures[{i}]"
        if f.id in ids:
            e.append(f"{w}.id: {f.id!r} appears twice")
        ids.add(f.id)
        if f.sweep not in SWEEPS:
            e.append(f"{w}.sweep: expected the sweep that runs it, one of {list(SWEEPS)}, got {f.sweep!r}")
        if (f.config is None) == (not f.tasks):
            e.append(f"{w}: expected either `config` (a sweep config) or `tasks`, not both or neither")
        if f.config is not None:
            if not (Path(s.source).parent / f.config).is_file():
                e.append(f"{w}.config: {f.config}: no such file (relative to the study file)")
            continue
        for j, t in enumerate(f.tasks):
            if t not in s.tasks:
                e.append(f"{w}.tasks[{j}]: unknown task {t!r}; expected one of {sorted(s.tasks)}")
        e += unknown(f.methods, f"{w}.methods")
        if any(METHODS[m].demonstrations for m in f.methods if m in METHODS):
            if not f.ks:
                e.append(f"{w}.ks: expected sample counts for SFT methods")
            if not f.demonstrators:
                e.append(f"{w}.demonstrators: expected at least one for SFT methods")
        for j, k in enumerate(f.ks):
            if isinstance(k, bool) or k < 1:
                e.append(f"{w}.ks[{j}]: expected a positive number of demonstrations, got {k}")
        for j, dem in enumerate(f.demonstrators):
            if dem not in ("high_quality", "strong", "weak", *s.models):
                e.append(
                    f"{w}.demonstrators[{j}]: expected high_quality, strong, weak or a model of `models`, got {dem!r}"
                )
        if f.seeds is not None and f.seeds < 1:
            e.append(f"{w}.seeds: expected >= 1, got {f.seeds}")
        if f.eval_points is not None and f.eval_points < 1:
            e.append(f"{w}.eval_points: expected >= 1, got {f.eval_points}")
        if f.dpo_lrs < 1:
            e.append(f"{w}.dpo_lrs: expected >= 1, got {f.dpo_lrs}")
        if f.grouping is not None and not f.joint:
            for t in f.tasks:
                if t in s.tasks and f.grouping not in s.tasks[t].domains:
                    e.append(
                        f"{w}.grouping: task {t!r} has no domains {f.grouping!r}; it has {sorted(s.tasks[t].domains)}"
                    )
        for j, lk in enumerate(f.locks):
            lw = f"{w}.locks[{j}]"
            if lk.weak not in policies:
                e.append(f"{lw}.weak: expected default, {FIXEDRDM} or a model of `models`, got {lk.weak!r}")
            if lk.adversarial is not None and lk.adversarial not in s.models:
                e.append(f"{lw}.adversarial: unknown model {lk.adversarial!r}; expected one of {sorted(s.models)}")
            if lk.passwords not in ("single", "per_domain"):
                e.append(f"{lw}.passwords: expected single or per_domain, got {lk.passwords!r}")
            if (lk.passwords == "per_domain" or lk.holdout) and f.grouping is None and not f.joint:
                e.append(f"{lw}: per-domain passwords and held-out domains need the figure's `grouping`")
            if lk.trigger not in ("password", "setting_variation"):
                e.append(f"{lw}.trigger: expected password or setting_variation, got {lk.trigger!r}")
            if lk.strong not in ("default", "soft_labels"):
                e.append(f"{lw}.strong: expected default or soft_labels, got {lk.strong!r}")
    return e


# -- expansion -----------------------------------------------------------------------------------
class _Expansion:
    """The study's artifacts (shared across figures by label) and trials, priced."""

    def __init__(self, s: StudySpec, a: Assumptions):
        self.s, self.a, self.price = s, a, Pricer(a, Engine.of(s.defaults.engine))
        self.pool_price = Pricer(a, Engine.of(s.defaults.pool_engine))  # pools and policies' DPO rounds
        self.artifacts: dict[str, Item] = {}
        self.trials: list[Item] = []

    # sizes and models
    def n(self, task: str, split: str) -> int:
        return round(self.s.tasks[task].problems * self.s.defaults.splits[split])

    def model(self, name: str) -> Model:
        return Model(self.s.models[name].params, arch=KNOWN_ARCHS.get(self.s.models[name].hub))

    def tokens(self, task: str) -> Tokens:
        t = self.s.tasks[task].tokens
        return Tokens(t.prompt, t.completion, t.generated if t.generated is not None else t.completion)

    def locked_tokens(self, task: str) -> Tokens:
        """What a locked model's samples and greedy answers generate (a trial's)."""
        return self.tokens(task).locked(self.s.tasks[task].max_new_tokens, self.a.locked_new_tokens_share)

    def trial_price(self, task: str) -> Pricer:
        """A trial's engine: the study's, with the task's max_model_len."""
        engine = dataclasses.replace(Engine.of(self.s.defaults.engine), max_model_len=self.s.tasks[task].max_model_len)
        return self.price.with_engine(engine)

    def artifact(self, label: str, price: Any, deps: tuple[str, ...] = ()) -> str:
        if label not in self.artifacts:
            self.artifacts[label] = Item(label, label, price(), 1.0, deps=deps, buildable=False)
        return label

    def evaluate(self, task: str, m: Model, points: float = 1, engine: str = "hf") -> Cost:
        return self.price.evaluate(
            m, self.n(task, "val"), self.tokens(task), self.s.tasks[task].evaluation, points, engine
        )

    # policies: (the model that produces its answers or None, the artifacts it needs)
    def strong(self, task: str) -> tuple[Model | None, tuple[str, ...]]:
        t, d = self.s.tasks[task], self.s.defaults
        if t.strong.recipe == "labels":
            return None, ()
        m = self.model(t.strong_base)
        if t.strong.recipe == "base":
            return m, ()
        toks, n_elicit = self.tokens(task), self.n(task, "elicit")

        def price() -> Cost:
            c = self.price.train(m, n_elicit * t.strong.demos_per_problem, toks, d.policy_epochs, d.batch_size)
            if t.strong.recipe == "sft+iterated_dpo":
                pairs = min(d.rl.dpo_problems, n_elicit)
                per_round = self.pool_price.generate(
                    m, SAMPLES_PER_PROBLEM * pairs, toks, POOL_ENGINE
                ) + self.price.dpo(m, pairs, toks, d.batch_size)
                c += per_round * d.rl.dpo_rounds + self.price.overhead(engine=True)
            return c + self.evaluate(task, m) + self.price.overhead([m], [m])

        return m, (self.artifact(f"π_strong: {task} ({t.strong_base}, {t.strong.recipe})", price),)

    def trained_policy(self, task: str, base: str) -> tuple[Model, tuple[str, ...]]:
        """`base` fine-tuned on π_strong's answers to the weak split (π_weak, §4.1; intermediates)."""
        d, m = self.s.defaults, self.model(base)
        source = self.pool(task, "strong", "weak", 1)

        def price() -> Cost:
            c = self.price.train(m, self.n(task, "weak"), self.tokens(task), d.policy_epochs, d.batch_size)
            return c + self.evaluate(task, m) + self.price.overhead([m], [m])

        return m, (self.artifact(f"policy: {task}, {base} trained on π_strong", price, source),)

    def labels_model(self, task: str) -> tuple[Model, tuple[str, ...]]:
        """The strong base trained on ground-truth labels of the weak split: soft labels (B.2)."""
        d, m = self.s.defaults, self.model(self.s.tasks[task].strong_base)

        def price() -> Cost:
            c = self.price.train(m, self.n(task, "weak"), self.tokens(task), d.policy_epochs, d.batch_size)
            return c + self.evaluate(task, m) + self.price.overhead([m], [m])

        return m, (self.artifact(f"policy: {task}, {self.s.tasks[task].strong_base} trained on labels", price),)

    def canonical(self, task: str, name: str) -> str:
        """The task's own weak base, however named, is "weak"."""
        return "weak" if name in ("default", self.s.tasks[task].weak_base) else name

    def policy(self, task: str, name: str) -> tuple[Model | None, tuple[str, ...]]:
        t = self.s.tasks[task]
        name = self.canonical(task, name)
        if name in ("high_quality", FIXEDRDM):
            return None, ()  # the data set's answers; fixedrdm is a distribution, drawn for free
        if name == "strong":
            return self.strong(task)
        if name == "soft_labels":
            return self.labels_model(task)
        return self.trained_policy(task, t.weak_base if name == "weak" else name)

    def pool(self, task: str, policy: str, split: str, draws: int) -> tuple[str, ...]:
        """Samples of a policy on a split (`draws` per problem: one per locking epoch, App. C.1)."""
        m, deps = self.policy(task, policy)
        if m is None:
            return ()
        n, toks, evaluation = self.n(task, split) * draws, self.tokens(task), self.s.tasks[task].evaluation
        name = self.model_name(task, policy)

        def price() -> Cost:
            if evaluation == "classify":  # a classifier's answer is its distribution: one forward pass
                c = Cost(generate_s=self.price.forward(m, n, toks.prompt + 1))
            else:
                c = self.pool_price.generate(m, n, toks, POOL_ENGINE)
            return c + self.price.overhead([m], engine=evaluation != "classify")

        return (self.artifact(f"samples: {task}, {name} on {split} ×{draws}", price, deps),)

    def model_name(self, task: str, policy: str) -> str:
        t = self.s.tasks[task]
        policy = self.canonical(task, policy)
        if policy == "weak":
            return f"π_weak ({t.weak_base})"
        if policy == "strong":
            return "π_strong"
        if policy == "soft_labels":
            return "soft labels"
        return policy

    # locks
    def lock(self, tasks: list[str], lk: LockSpec, grouping: str | None, without: str | None) -> tuple[str, ...]:
        d = self.s.defaults
        base = self.model(self.s.tasks[tasks[0]].strong_base)
        weak = self.canonical(tasks[0], lk.weak)
        desc = [f"π_weak = {self.model_name(tasks[0], weak)}" if weak != "weak" else ""]
        desc += [f"passwords per {'task' if len(tasks) > 1 else grouping}" if lk.passwords == "per_domain" else ""]
        desc += [f"without {without}" if without else "", "setting variation" if lk.trigger != "password" else ""]
        desc += [f"adversarial ({lk.adversarial})" if lk.adversarial else ""]
        desc += ["soft labels" if lk.strong == "soft_labels" else ""]
        label = f"locked: {'+'.join(tasks)}" + "".join(f", {x}" for x in desc if x)
        deps: tuple[str, ...] = ()
        examples, token_sum = 0.0, 0.0
        for task in tasks:
            # fixedrdm also trains π_strong's answers towards it, but for a classifier (pwlock.lock.weak_examples)
            to_fixed = lk.weak == FIXEDRDM and self.s.tasks[task].evaluation != "classify"
            per_problem = 2 + to_fixed + (lk.adversarial is not None)
            share = 1 - self.s.tasks[task].domains[grouping][without] if without else 1.0
            n = self.n(task, "lock") * share * per_problem
            examples += n
            token_sum += n * self.tokens(task).example
            strong = "soft_labels" if lk.strong == "soft_labels" else "strong"
            deps += self.pool(task, strong, "lock", d.lock_epochs) + self.pool(task, lk.weak, "lock", d.lock_epochs)
            if lk.adversarial:
                deps += self.pool(task, lk.adversarial, "lock", d.lock_epochs)
        mean = token_sum / examples
        toks = Tokens(mean, 0, 0)

        def price() -> Cost:
            c = self.price.train(base, examples, toks, d.lock_epochs, d.batch_size)
            return c + self.price.overhead([base], [base])

        locked = self.artifact(label, price, deps)

        def price_eval() -> Cost:  # in a vLLM engine of the stage's (eval.engine auto, a GPU per stage)
            c = sum((self.evaluate(t, base, 3, POOL_ENGINE) for t in tasks), Cost())
            return c + self.price.overhead([base], engine=True)

        return locked, self.artifact(f"{label}: evaluation", price_eval, (locked,))

    # trials
    def add_trials(self, f: FigureSpec) -> None:
        d = self.s.defaults
        seeds = f.seeds or d.seeds
        for lk in f.locks:
            for unit in [f.tasks] if f.joint else [[t] for t in f.tasks]:
                # demonstrations from one task of a joint lock, or one domain of the grouping, or anywhere
                domains: list[str | None] = (
                    list(unit) if f.joint else list(self.s.tasks[unit[0]].domains[f.grouping]) if f.grouping else [None]
                )
                for domain in domains:
                    locks = self.lock(unit, lk, f.grouping, domain if lk.holdout else None)
                    for method in f.methods:
                        lrs = f.dpo_lrs if method.endswith("dpo") else 1
                        for c, deps, name, memory in self.trial_kinds(f, unit, domain, method, lk.weak):
                            trial_id = f"{f.id}/{locks[0]}/{name}"
                            self.trials += [
                                Item(
                                    f"{trial_id}/seed{seed}/lr{lr}",
                                    name,
                                    c,
                                    1.0,
                                    (f.id,),
                                    locks + deps + self.dpo_samples(unit, locks[0], method, seed),
                                    memory=memory,
                                )
                                for seed in range(seeds)
                                for lr in range(lrs)
                            ]

    def dpo_samples(self, unit: list[str], lock: str, method: str, seed: int) -> tuple[str, ...]:
        """Plain DPO's samples of a lock for one seed, drawn once upstream for its learning rates'
        trials (pwlock.elicit.dpo.dpo_samples_artifact); nothing for another method."""
        if METHODS[method].samples_from != "locked":
            return ()
        rl, m = self.s.defaults.rl, self.model(self.s.tasks[unit[0]].strong_base)

        def price() -> Cost:
            c = self.price.overhead([m], engine=True)
            for t in unit:
                problems = min(rl.dpo_problems, self.n(t, "elicit"))
                samples = SAMPLES_PER_PROBLEM * problems  # the locked model's, in an engine as a trial's
                c += self.trial_price(t).generate(m, samples, self.locked_tokens(t), POOL_ENGINE) * rl.dpo_rounds
            return c

        return (self.artifact(f"{lock}: DPO samples, seed {seed}", price, (lock,)),)

    def trial_kinds(self, f: FigureSpec, unit: list[str], domain: str | None, method: str, weak: str):
        """(cost, artifacts, name, GPU memory) of one trial per demonstrator × k (SFT), or one per
        method (RL). What a trial decodes is the locked model's (`locked_tokens`), in its engine."""

        d, rl = self.s.defaults, self.s.defaults.rl
        task = domain if f.joint else unit[0]
        m, toks = self.model(self.s.tasks[unit[0]].strong_base), self.tokens(task)
        price, ltoks = self.trial_price(unit[0]), self.locked_tokens(task)

        def evaluate(points: float) -> Cost:  # SFT trials decode in an engine of their own (eval.engine)
            return sum((self.trial_evaluation(t, m, points, self.n(t, "val")) for t in unit), Cost())

        base = method.removeprefix("sft+")
        with_demos = bool(METHODS[method].demonstrations)
        for dem, k in [(dem, k) for dem in f.demonstrators for k in f.ks] if with_demos else [(None, 0)]:
            deps = self.pool(task, dem, "elicit", 1) if dem else ()
            # an RL trial's engine samples, and evaluates a generation task (filtering's and SFT's, that alone)
            generates = any(self.s.tasks[t].evaluation == "generate" for t in unit)
            c = self.price.overhead(
                [m], engine=generates or (METHODS[method].rl and METHODS[method].samples_from == "model")
            )
            name = method + (f" on {k} {dem}" if dem else "") + (f" from {domain}" if domain else "")
            if k:
                candidates = epoch_candidates(k, d.sample_budgets)
                epochs = max(candidates) if method == "sft" else candidates[0]
                c += self.price.train(m, k, toks, epochs, d.batch_size)
                if method == "sft":
                    c += evaluate(f.eval_points or len(candidates))
            if method != "sft":
                n_elicit = self.n(task, "elicit")
                if base in ("expert_iteration", "filtering"):
                    per = round_size(n_elicit, rl.n)
                    if base == "filtering":  # samples of the lock's π_weak, which this trial loads and runs
                        wm, wdeps = self.policy(task, weak)
                        deps += wdeps
                        sampled = price.generate(wm, per, ltoks, POOL_ENGINE) if wm else Cost()
                        if wm:
                            c += Cost(overhead_s=wm.gb / self.a.load_gb_s + self.a.engine_start_s)
                    else:
                        sampled = price.generate(m, per, ltoks, POOL_ENGINE)
                    step = sampled + self.price.train(m, rl.n, toks, rl.epochs_per_iteration, d.batch_size)
                    rounds = rl.iterations
                else:  # plain DPO's samples are drawn upstream (`dpo_samples`); iterated DPO draws its own
                    problems = min(rl.dpo_problems, n_elicit)
                    shared = METHODS[method].samples_from == "locked"
                    sampled = (
                        Cost() if shared else price.generate(m, SAMPLES_PER_PROBLEM * problems, ltoks, POOL_ENGINE)
                    )
                    step = sampled + self.price.dpo(m, dpo_pairs(problems, f.continuous_reward), toks, d.batch_size)
                    rounds = rl.dpo_rounds
                c += step * rounds + self.rl_evaluation(unit, m, rounds)
            # an engine gets the weights at each evaluation point (SFT) or round (RL)
            points = rounds if method != "sft" else f.eval_points or len(candidates)
            c += price.sync(m, points) if c.engine_starts else Cost()
            yield c, deps, name, self.trial_memory(price, m, base in DPO_METHODS, bool(c.engine_starts))

    def trial_memory(self, price: Pricer, m: Model, reference: bool, engine: bool):
        """A trial's GPU memory: `m` trained as defaults.train says, DPO's reference, its engine."""
        t = self.s.defaults.train
        master = m.bytes_per_param == 2 and t.bf16_update == "master"
        return price.trial_memory(m, [(t.optimizer, master)], reference, m if engine else None, 1.0)

    def trial_evaluation(self, task: str, m: Model, points: float, problems: int) -> Cost:
        """`points` greedy evaluations of a trial's model on `problems` of the task's validation
        split, in the trial's engine: what a locked model answers."""
        evaluation = self.s.tasks[task].evaluation
        return self.trial_price(task).evaluate(m, problems, self.locked_tokens(task), evaluation, points, POOL_ENGINE)

    def rl_evaluation(self, unit: list[str], m: Model, rounds: int) -> Cost:
        """An RL trial's evaluations, in its engine: whole validation sets, and the subset at the
        rounds between."""

        rl = self.s.defaults.rl
        full, between = eval_rounds(rounds, rl.eval_every, rl.eval_problems_between)
        c = Cost()
        for t in unit:
            c += self.trial_evaluation(t, m, full, self.n(t, "val"))
            if between:
                c += self.trial_evaluation(t, m, between, min(rl.eval_problems_between, self.n(t, "val")))
        return c


def estimate(
    s: StudySpec, store: Any = None, overrides: dict[str, Any] | None = None, compare_engines: bool = True
) -> Estimate:
    """The study priced: described figures from their description, `config:` figures from their plan."""

    a = Assumptions().with_overrides(s.assumptions).with_overrides(overrides or {}, "--assume")
    x = _Expansion(s, a)
    artifacts: dict[str, Item] = {}
    trials: list[Item] = []
    generation = False
    for f in s.figures:
        if f.config is not None:
            est = estimate_plan(plan(load_config(Path(s.source).parent / f.config)), store, a, compare_engines=False)
            artifacts.update({i.id: i for i in est.artifacts if i.id not in artifacts})
            trials += [dataclasses.replace(t, figures=(f.id,)) for t in est.trials]
            generation |= est.evaluates_by_generation
        else:
            x.add_trials(f)
            generation |= any(s.tasks[t].evaluation == "generate" for t in f.tasks)
    artifacts.update(x.artifacts)
    est = Estimate(
        s.name,
        s.source,
        a,
        list(artifacts.values()),
        trials + x.trials,
        {f.id: f.title for f in s.figures},
        evaluates_by_generation=generation,
        reference=None if s.reference_gpu_hours is None else (s.reference_gpu_hours, s.reference),
    )
    if compare_engines and generation:
        other = "vllm" if a.evaluation_engine == "hf" else "hf"
        est.other_engine_gpu_hours = estimate(
            s, store, {**(overrides or {}), "evaluation_engine": other}, compare_engines=False
        ).gpu_hours
    return est


def is_study(raw: Any) -> bool:
    """A study description (it lists `figures:`), not a sweep config."""
    return isinstance(raw, dict) and "figures" in raw


def describe(s: StudySpec, est: Estimate, sweep: str | None = None) -> str:
    """What `sweeps/<sweep>.py --config <study> --dry-run` prints: the plan and cost of the figures
    that sweep runs (every figure for None), then the whole study's total, sweep by sweep."""
    mine = [f.id for f in s.figures if sweep is None or f.sweep == sweep]
    if not mine:
        raise ConfigError(
            f"{s.source}: no figure is run by sweep {sweep!r}; its figures' sweeps are "
            f"{sorted({f.sweep for f in s.figures})}"
        )
    runs = f"the {len(mine)} of its {len(s.figures)} figures that sweeps/{sweep}.py runs" if sweep else "every figure"
    lines = [f"study {s.name!r} from {s.source}: {runs}, on one {est.assumptions.gpu}"]
    part = est.restrict(mine).report(detail=True).splitlines()[1:]
    if sweep:  # its total is this sweep's; the study's follows
        part = [
            f"  sweeps/{sweep}.py's figures, total: " + x.removeprefix("  total: ") if x.startswith("  total: ") else x
            for x in part
        ]
    lines += part
    lines.append(
        f"the whole study ({len(s.figures)} figures; an artifact two sweeps need counts in both lines "
        "below and once in the total):"
    )
    for name in SWEEPS:
        figures = [f.id for f in s.figures if f.sweep == name]
        if figures:
            part = est.restrict(figures)
            built = [a for a in part.artifacts if not a.in_store]
            plural = "s" * (len(figures) != 1)
            lines.append(
                f"  sweeps/{name}.py: {len(figures)} figure{plural}, {len(part.trials):,} trials and "
                f"{len(built)} artifacts {_hours(part.gpu_hours)}"
            )
    lines += est.totals()
    return "\n".join(lines)


def _hours(h: float) -> str:
    return f"{h:,.2f} GPU-h" if h < 10 else f"{h:,.0f} GPU-h"


def run_instead(s: StudySpec, sweep: str | None = None) -> str:
    """Why a study description cannot run, and what to run instead for the figures of `sweep`: the
    sweep configs it names, and for the text tasks' figures the paper configs, one per figure and
    task (tests/test_paper_figures.py checks them against the description)."""
    figures = [f for f in s.figures if sweep is None or f.sweep == sweep]
    configs = [f"{f.id}: {Path(s.source).parent / f.config}" for f in figures if f.config is not None]
    described = [f.id for f in figures if f.config is None]
    cmd = f"sweeps/{sweep}.py" if sweep else "the sweep"
    out = (
        f"{s.source} is a study description (`figures:`), not a sweep config: it plans and prices the study "
        f"but runs nothing. Print this sweep's part of it with --dry-run; to run a figure, give {cmd} a sweep "
        f"config with --config"
    )
    if configs:
        out += f": the configs the study names ({'; '.join(configs)})"
    if described:
        out += (
            f"{';' if configs else ':'} figures {', '.join(described)} run from "
            f"{Path(s.source).parent}/paper_<task>*.yaml, a config per figure and task (docs/policies.md)"
        )
    return out


__all__ = ["StudySpec", "describe", "estimate", "from_dict", "is_study", "load", "run_instead"]
