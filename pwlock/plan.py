"""A study planned once: config -> the upstream artifacts (content-keyed, in build order) and the
elicitation trials, with every check that needs the task. The command line plans once; the
description, the price (pwlock.pricing) and the run (pwlock.sweep) all use that plan."""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from pwlock import evaluate, memory
from pwlock.artifacts import Artifact
from pwlock.config import (
    ALL_DOMAINS,
    AUTO,
    FIXEDRDM,
    NO_DEMONSTRATOR,
    ConfigError,
    EvalConfig,
    GuardsConfig,
    LockConfig,
    RLConfig,
    StudyConfig,
    TrainConfig,
    VLLMConfig,
    resolve_engine,
)
from pwlock.control import control_label, control_model_artifact
from pwlock.elicit.dpo import dpo_samples_artifact
from pwlock.elicit.methods import METHODS, Method, candidates, unknown
from pwlock.evaluate import CONDITIONS
from pwlock.guards import LeakGuard, lock_passwords
from pwlock.lock import second_of, variant_errors, variant_modes, variant_spec
from pwlock.passwords import lock_domain_passwords
from pwlock.policies import PolicyPlan, plan_policies, policy_names
from pwlock.problem_filter import Keep, plan_keep
from pwlock.setting import setting_for
from pwlock.stages import (
    lock_audit_artifact,
    lock_label,
    locked_model_artifact,
    model_eval_artifact,
    policy_scores_artifact,
    strong_model_artifact,
)
from pwlock.store import Store, StoreSpec
from pwlock.tasks import Task, formats_prompts, make_task
from pwlock.tasks.sized import TaskSize, sized


def trial_name(
    lock_mode: str,
    method: str,
    k: int,
    seed: int,
    demonstrator: str = "strong",
    domain: str = ALL_DOMAINS,
    lr: float | None = None,
) -> str:
    """`sftlock-sft-k32-seed0`; a demonstrator other than π_strong, a single domain and a learning
    rate other than the configured one (`sftlock-dpo-lr1.5e-06-k0-seed0`) are named too."""
    named = demonstrator not in ("strong", NO_DEMONSTRATOR)
    extra = "".join([f"-{demonstrator}" * named, f"-{domain}" * (domain != ALL_DOMAINS)])
    extra += f"-lr{lr:g}" if lr is not None else ""
    return f"{lock_mode}lock-{method}{extra}-k{k}-seed{seed}"


STRONG_SPLITS = ["lock"]  # π_strong's model never sees the elicit, validation or held-out problems


@dataclass
class Trial:
    """One elicitation run: its lock, method, k, seed, demonstrator and domain, and its candidates."""

    task: str
    lock_mode: str  # the lock's label (stages.lock_label): "sft", "sft-fixedrdm", "sft-per_domain"
    method: str
    k: int  # demonstrations (0 for RL methods, which have none)
    seed: int
    epoch_candidates: list[int]  # SFT: epochs at which it is evaluated; RL: its rounds
    demonstrator: str = "strong"  # whose demonstrations SFT trains on
    domain: str = ALL_DOMAINS  # the elicit split's domain the demonstrations come from
    lr: float | None = None  # a method run per learning rate (Method.lrs): this rate, if not the configured one

    @property
    def name(self) -> str:
        return trial_name(self.lock_mode, self.method, self.k, self.seed, self.demonstrator, self.domain, self.lr)

    def run_config(self) -> dict[str, Any]:
        out = {
            "method": self.method,
            "lock_mode": self.lock_mode,
            "k": self.k,
            "seed": self.seed,
            "demonstrator": self.demonstrator,
            "domain": self.domain,
        }
        return out if self.lr is None else {**out, "lr": self.lr}


@dataclass
class TrialSetup:
    """Everything an elicitation trial needs beside its own dimensions (method, lock, k, seed,
    demonstrator, domain), resolved once by the plan; sweep.run adds the store and the experiment."""

    task: dict[str, Any]  # the task's spec, to make the task in the trial's process
    methods: dict[str, Method]  # the registry entries of the study's methods
    train: TrainConfig
    budgets: list[int]  # elicit.sample_budgets
    eval: EvalConfig  # its engine resolved for the trials' resources
    rl: RLConfig  # its generator's backend resolved likewise
    dtype: str
    cpus: float
    checkpoint_every_s: float | None
    locked_key: dict[str, str]  # each lock's model, by lock label
    weak: dict[str, str]  # each lock's π_weak, by lock label
    pools: dict[str, str | None]  # model policies' samples of the elicit split (pwlock.policies)
    engine_bundle: int | None  # the placement-group bundle of a trial's vLLM engine
    guards: GuardsConfig
    passwords: list[str]  # every password the study's locks answer to
    demonstrator: str  # for trials of experiments from before the demonstrator was a trial's
    # Locks weak in their task's varied setting (a setting lock with strong_setting: normal, and its
    # control), by lock label: their trials run in that setting (pwlock.setting.in_setting).
    weak_setting: dict[str, str] = field(default_factory=dict)
    # Plain DPO's samples drawn upstream, by `dpo_samples_of(lock, seed)`: the artifacts' keys.
    dpo_samples: dict[str, str] = field(default_factory=dict)
    store: StoreSpec | None = None
    experiment: str = ""
    run: str = ""  # this driver's run of the experiment (a new one after --resume)


@dataclass
class Plan:
    """A study planned: its artifacts in build order, its trials, and what every trial gets."""

    cfg: StudyConfig
    task_spec: dict[str, Any]
    artifacts: list[Artifact]  # in build order
    policy_scores: Artifact
    strong: Artifact | None  # π_strong's model, when an `sft` lock needs it
    strong_eval: Artifact | None
    locked: dict[str, Artifact]  # by lock label
    weak: dict[str, str]  # each lock's π_weak, by lock label
    locked_eval: dict[str, Artifact]
    trials: list[Trial]
    variant: dict[str, str]  # each lock's variant, by lock label
    # The task the plan was made from: built once (a text task reads its data set), for the
    # description, the cost estimate and the run alike.
    task: Task
    policies: PolicyPlan  # model policies: their models and sample pools
    engine: VLLMConfig | None  # the vLLM engine each trial starts, if any
    setup: TrialSetup  # what every trial gets
    audits: dict[str, Artifact] = field(default_factory=dict)  # each lock's audit (pwlock.audit), by lock label
    # lock.controls: each lock mode's never-locked control (pwlock.control) and its evaluation, by label
    controls: dict[str, Artifact] = field(default_factory=dict)
    control_eval: dict[str, Artifact] = field(default_factory=dict)
    # lock.seeds: which replicate each lock's and control's label is, by label
    replicates: dict[str, Replicate] = field(default_factory=dict)
    # task.keep: the problem filter and the task before it (pwlock.problem_filter); while it is
    # pending (not in the store the plan was made with) the plan is provisional: `task` has every
    # problem, and a run builds the filter, then plans again.
    keep: Keep | None = None

    @property
    def methods(self) -> dict[str, Method]:
        """The registry entries of elicit.methods (the ones every trial gets)."""
        return self.setup.methods

    @functools.cached_property
    def memory_gb(self) -> tuple[float | None, float | None]:
        """Host memory Ray reserves per trial and per stage task, in GB (ray.memory_per_trial_gb,
        memory_per_stage_gb). "auto" is estimated when a run first asks, not when planning: it reads
        the model's config, and a GGUF source is downloaded and converted for that."""
        return _memory(self.cfg, self.task, self.methods, self.engine, self.artifacts)


def plan(cfg: StudyConfig, store: Store | None = None, sizes: Mapping[str, TaskSize] | None = None) -> Plan:
    """Expand the study into artifacts and trials, checking everything that needs the task. A study
    that keeps only the problems a policy solves (`task.keep`) is planned on the problems its filter
    kept where `store` holds the filter, else provisionally (Plan.keep, pwlock.problem_filter). A task
    named in `sizes` is planned at that size, its data not read (pwlock.tasks.sized): for a price."""
    task_spec = _task_spec(cfg)
    size = (sizes or {}).get(task_spec["name"])
    task = make_task(task_spec, where=f"{cfg.source}: task", data=size is None)
    if size is not None:
        task = sized(task, size, f"sizes.{task.name}")
    keep = plan_keep(cfg, task, task_spec, store)
    if keep is not None:  # the kept problems from here on (every problem while the filter is pending)
        task, task_spec = keep.task, keep.task_spec
    methods = {m: METHODS[m] for m in cfg.elicit.methods if m in METHODS}
    errors = unknown(cfg.elicit.methods) + _elicit_errors(cfg, task, methods) + _policy_errors(cfg, task, methods)
    errors += _domain_errors(cfg, task)
    pols = (  # models and sample pools; a model the filter sampled stays the one it sampled
        plan_policies(cfg, task, task_spec, methods, keep.models if keep else None, bool(keep and keep.pending))
        if not errors
        else PolicyPlan()
    )
    errors += pols.errors
    if errors:
        raise ConfigError(f"{cfg.source}: " + "; ".join(errors))
    up = _upstream(cfg, task, task_spec, pols)
    if keep is not None:  # the filter and what it reads first
        up.artifacts = list({a.key: a for a in [*keep.artifacts, *up.artifacts]}.values())
    dpo_samples = _dpo_samples(cfg, task_spec, methods, up)
    trials = _trials(cfg, task.name, list(up.locked), methods)
    # Each control is elicited by its lock's SFT trials: the same demonstrations, k, epochs and seeds.
    sft_methods = {name: m for name, m in methods.items() if m.demonstrations == "trial"}
    trials += _trials(cfg, task.name, list(up.controls), sft_methods)
    engine, setup = _trial_setup(cfg, task, task_spec, methods, up, pols, dpo_samples)
    return Plan(
        cfg,
        task_spec,
        up.artifacts,
        up.scores,
        up.strong,
        up.strong_eval,
        up.locked,
        up.weak,
        up.locked_eval,
        trials,
        up.variant,
        task,
        pols,
        engine,
        setup,
        up.audits,
        up.controls,
        up.control_eval,
        up.replicates,
        keep,
    )


def dpo_samples_of(lock: str, seed: int) -> str:
    """Where TrialSetup.dpo_samples files the samples of a lock's trials of one seed."""
    return f"{lock}/seed{seed}"


def _dpo_samples(
    cfg: StudyConfig, task_spec: dict[str, Any], methods: dict[str, Method], up: _Upstream
) -> dict[str, Artifact]:
    """The upstream samples of methods that sample the locked model alone (plain DPO), one artifact
    per lock and elicitation seed, shared by the trials of every learning rate; added to the build."""
    if not any(m.samples_from == "locked" for m in methods.values()):
        return {}
    rl = cfg.elicit.rl
    generator = {**asdict(rl.generator), "backend": resolve_engine(rl.generator.backend, cfg.ray.gpus_per_stage)}
    out = {
        dpo_samples_of(label, seed): dpo_samples_artifact(locked, task_spec, rl, seed, generator)
        for label, locked in up.locked.items()
        for seed in cfg.elicit.seeds
    }
    up.artifacts += list(out.values())
    return out


def _memory(
    cfg: StudyConfig,
    task: Task,
    methods: dict[str, Method],
    engine: VLLMConfig | None,
    artifacts: list[Artifact],
) -> tuple[float | None, float | None]:
    """ray.memory_per_trial_gb and memory_per_stage_gb in GB, "auto" estimated (pwlock.memory) at
    model.base's shape for every model a stage trains (a policy of another base is taken as that)."""
    trial, stage = cfg.ray.memory_per_trial_gb, cfg.ray.memory_per_stage_gb
    if AUTO not in (trial, stage):
        return trial, stage
    shape = memory.shape_of(cfg.model.base, cfg.model.tiny, cfg.model.dtype, task)
    password = cfg.lock.password or task.default_password
    tokens = memory.longest_example(task, cfg.model.base, password, ("lock", "elicit"))

    def step(t: TrainConfig, rows: int = 1) -> float:
        return memory.training_gb(shape, t.optimizer, rows * t.batch_size, tokens, t.bf16_update == "master")

    if trial == AUTO:
        train = [step(cfg.elicit.train)]
        if any(m.pairs for m in methods.values()):  # chosen and rejected rows, a reference model
            train.append(step(cfg.elicit.rl.dpo_train, 2) + shape.weights_gb)
        cpu_engine = memory.engine_gb(shape) if engine is not None else None
        trial = memory.peak_gb(train, cpu_engine, cfg.ray.gpus_per_trial > 0, shape)
    if stage == AUTO:
        train = [step(cfg.lock.train_of(mode)) for mode in cfg.lock.modes]
        train += [step(cfg.strong.train)] if "sft" in cfg.lock.modes else []  # π_strong's model
        train += [step(pc.train) for pc in cfg.policies.values() if pc.jsonl is None and pc.train_on is not None]
        # A stage trains or decodes in an engine (beside the model it evaluates), never both at once.
        if any(a.engine for a in artifacts) or any(pc.generator.backend == "vllm" for pc in cfg.policies.values()):
            train.append(memory.engine_gb(shape) + shape.weights_gb)
        stage = memory.peak_gb(train, None, cfg.ray.gpus_per_stage > 0, shape)
    return trial, stage


def _task_spec(cfg: StudyConfig) -> dict[str, Any]:
    """The task as configured; a text task's prompts rendered with model.base's own tokenizer (its
    chat template, where it has one) unless task.format names another tokenizer or opts out.
    `task.keep` is the plan's (pwlock.problem_filter), not the task's: left out."""
    spec = copy.deepcopy(cfg.task)
    spec.pop("keep", None)
    fmt = dict(spec.get("format") or {})
    if cfg.model.base != "tiny" and formats_prompts(spec["name"]) and fmt.get("tokenizer") is None:
        if fmt.get("chat_template", True):
            spec["format"] = {**fmt, "tokenizer": cfg.model.base}
    return spec


def _domain_errors(cfg: StudyConfig, task: Task) -> list[str]:
    """A study that varies anything by domain, refused on a task whose domains share what they teach."""
    leak = task.domain_leak()
    by_domain = [f"elicit.domains: {d}" for d in cfg.elicit.domains if d != ALL_DOMAINS]
    by_domain += [f"lock.variant: {v}" for v in cfg.lock.variants if v in ("per_domain", "omit_domain")]
    return [f"{where}: task {task.name!r} cannot separate domains: {leak}" for where in by_domain] if leak else []


def _elicit_errors(cfg: StudyConfig, task: Task, methods: dict[str, Method]) -> list[str]:
    """The elicitation grid against the task: k, domains, and what the methods use."""
    errors = []
    if not any(m.demonstrations == "trial" for m in methods.values()):  # only these draw demonstrations per trial
        if cfg.elicit.domains != [ALL_DOMAINS]:
            errors.append("elicit.domains: only used by the sft method, which elicit.methods lacks")
        if cfg.lock.controls:  # a control is elicited by its lock's SFT trials only
            errors.append("lock.controls: only used by the sft method, which elicit.methods lacks")
        if len(cfg.elicit.demonstrators) > 1:
            errors.append(
                "elicit.demonstrator: a list is only used by the sft method, which elicit.methods lacks "
                "(composed methods take elicit.rl.sft_demonstrator)"
            )
    elicit_problems = task.problems("elicit")
    n_elicit = len(elicit_problems)
    sft_ks = cfg.elicit.ks if any(m.demonstrations for m in methods.values()) else []
    for i, k in enumerate(sft_ks):
        if k > n_elicit:
            errors.append(f"elicit.ks[{i}]: k={k} exceeds the {n_elicit} problems of the elicit split")
    per_domain = {d: sum(p.domain == d for p in elicit_problems) for d in sorted({p.domain for p in elicit_problems})}
    for i, d in enumerate(cfg.elicit.domains):
        if d != ALL_DOMAINS and d not in per_domain:
            errors.append(
                f"elicit.domains[{i}]: task {task.name!r} has no domain {d!r} in its elicit split; "
                f"expected {ALL_DOMAINS!r} or one of {sorted(per_domain)}"
            )
        elif d != ALL_DOMAINS and sft_ks and max(sft_ks) > per_domain[d]:
            errors.append(
                f"elicit.domains[{i}]: k={max(sft_ks)} exceeds the {per_domain[d]} problems of domain "
                f"{d!r} in the elicit split"
            )
    if cfg.eval.split not in ("val", "elicit", "lock", "weak"):
        errors.append(f"eval.split: unknown split {cfg.eval.split!r}")
    return errors


def _policy_errors(cfg: StudyConfig, task: Task, methods: dict[str, Method]) -> list[str]:
    """Every policy, password and lock variant the study names, against the task."""
    errors = []
    policies = policy_names(task, cfg)  # the task's own and the study's model policies
    roles = [
        (f"elicit.demonstrator{'' if isinstance(cfg.elicit.demonstrator, str) else f'[{i}]'}", d)
        for i, d in enumerate(cfg.elicit.demonstrators)
    ]
    for name, role in (*roles, ("π_strong", "strong"), ("π_weak", "weak")):
        if role not in policies:
            errors.append(f"{name}: task {task.name!r} has no {role!r} policy; it has {sorted(policies)}")
    for i, weak in enumerate(cfg.lock.weak):
        if weak not in policies and weak != FIXEDRDM:
            errors.append(
                f"lock.weak[{i}]: task {task.name!r} has no policy {weak!r}; expected one of "
                f"{sorted(policies)} or {FIXEDRDM!r}"
            )
    if any(m.demonstrations == "rl" for m in methods.values()) and cfg.elicit.rl.sft_demonstrator not in policies:
        errors.append(
            f"elicit.rl.sft_demonstrator: task {task.name!r} has no policy "
            f"{cfg.elicit.rl.sft_demonstrator!r}; it has {sorted(policies)}"
        )
    if cfg.model.base == "tiny" and task.vocabulary() is None:
        errors.append(f"model.base: task {task.name!r} has no vocabulary of its own; name a model (hub id or path)")
    if cfg.lock.password is not None:
        try:
            task.prompt(task.problems("val")[0], cfg.lock.password)
        except ValueError as e:
            errors.append(f"lock.password: {e}")
    for variant in cfg.lock.variants:
        if variant != "standard":
            errors += variant_errors(task, cfg.lock.of_variant(variant), task.problems("lock"), sorted(policies))
    if not any(e.startswith("lock.") for e in errors):  # a leak guard that takes a wrong password for a
        try:  # password is refused now, not in a trial
            LeakGuard.for_study(cfg.guards, task, lock_passwords(cfg.lock, task))
        except ValueError as e:
            errors.append(str(e))
    return errors


@dataclass
class _Upstream:
    artifacts: list[Artifact] = field(default_factory=list)  # in build order
    scores: Artifact | None = None
    strong: Artifact | None = None  # the first replicate's
    strong_eval: Artifact | None = None
    locked: dict[str, Artifact] = field(default_factory=dict)
    locked_eval: dict[str, Artifact] = field(default_factory=dict)
    audits: dict[str, Artifact] = field(default_factory=dict)
    controls: dict[str, Artifact] = field(default_factory=dict)
    control_eval: dict[str, Artifact] = field(default_factory=dict)
    weak: dict[str, str] = field(default_factory=dict)
    variant: dict[str, str] = field(default_factory=dict)
    replicates: dict[str, Replicate] = field(default_factory=dict)


@dataclass(frozen=True)
class Replicate:
    """Which lock replicate (lock.seeds) a lock's or control's label is: the label its replicates
    share, its seed, and its replicate's evaluation of π_strong's model."""

    lock: str
    seed: int
    strong_eval: Artifact | None


def lock_seeds(cfg: StudyConfig) -> list[int]:
    return list(cfg.lock.seeds) or [cfg.seed]


@dataclass(frozen=True)
class _Inputs:
    """What a study's upstream artifacts are made from."""

    cfg: StudyConfig
    task: Task
    task_spec: dict[str, Any]
    pols: PolicyPlan
    model: dict[str, Any]
    ev: dict[str, Any]  # the evaluation's identity (how fast it runs left out)
    engine: dict[str, Any] | None = None  # the vLLM engine evaluations decode in, if any (not their identity)


@dataclass(frozen=True)
class _Rep:
    """One lock replicate: its place in lock.seeds, its seed, its labels' suffix, and its π_strong's
    model and evaluation."""

    index: int
    seed: int
    suffix: str
    strong: Artifact | None = None
    strong_eval: Artifact | None = None

    def named(self, a: Artifact) -> Artifact:
        """`a` labelled with the replicate's seed, but in the first replicate (the label is for
        people and the log; the key stays)."""
        return dataclasses.replace(a, label=f"{a.label}, lock seed {self.seed}") if self.suffix else a


def _upstream(cfg: StudyConfig, task: Task, task_spec: dict[str, Any], pols: PolicyPlan) -> _Upstream:
    """The policies' scores, then per lock replicate π_strong's model and each lock (variant × mode ×
    π_weak) with its evaluation and audit."""
    up = _Upstream()
    model = asdict(cfg.model)
    ev = asdict(cfg.eval)
    for how in ("batch_size", "engine"):  # how fast, not what: not part of any artifact's identity
        ev.pop(how)
    # A model policy without a scores pool (a supplied file lacking the evaluation problems) is left
    # unscored, never scored as the task's own policy of the same name.
    unscored = {name: None for name in pols.names if name not in pols.scores}
    up.scores = policy_scores_artifact(
        task_spec, ev, model if FIXEDRDM in cfg.lock.weak else None, {**pols.scores, **unscored}
    )
    up.artifacts = [*pols.artifacts, up.scores]
    # The first replicate keeps the labels of a study without replicates (and, of the same seed, its
    # keys): adding replicates to a study reuses what it built and keeps its trials' names.
    # Evaluations of models the stages build decode in a vLLM engine where eval.engine resolves to
    # it on the stages' resources (as SFT trials' do on theirs); engines decode as HF greedy does.
    engine = None
    if resolve_engine(cfg.eval.engine, cfg.ray.gpus_per_stage) == "vllm" and evaluate.decodes(
        task, task.problems(cfg.eval.split)[:1]
    ):
        engine = asdict(cfg.elicit.rl.generator.vllm)
    inputs = _Inputs(cfg, task, task_spec, pols, model, ev, engine)
    for i, seed in enumerate(lock_seeds(cfg)):
        _replicate(inputs, up, _Rep(i, seed, f"-s{seed}" if i else ""))
    return up


def _replicate(x: _Inputs, up: _Upstream, rep: _Rep) -> None:
    """One lock replicate: its π_strong's model, locks, evaluations, audits and controls, labelled
    with its suffix."""
    cfg, task, task_spec, pols, model, ev, seed = x.cfg, x.task, x.task_spec, x.pols, x.model, x.ev, rep.seed
    base_lock = {"password": cfg.lock.password, "p_no_password": cfg.lock.p_no_password, "stop_at": cfg.lock.stop_at}
    password = cfg.lock.password or task.default_password
    strong = strong_eval = None
    if "sft" in cfg.lock.modes:
        strong = strong_model_artifact(
            task_spec,
            model,
            STRONG_SPLITS,
            asdict(cfg.strong.train),
            cfg.strong.stop_at,
            [None, password, *task.wrong_passwords] if cfg.strong.slot_noise else [None],
            seed,
            pols.lock_pools("strong"),
        )
        strong = rep.named(strong)
        strong_eval = model_eval_artifact(strong, task_spec, ev, password, ["no_pwd"], x.engine)
        up.artifacts += [strong, strong_eval]
        rep = dataclasses.replace(rep, strong=strong, strong_eval=strong_eval)
        if up.strong is None:
            up.strong, up.strong_eval = strong, strong_eval
    for variant in cfg.lock.variants:
        lv = cfg.lock.of_variant(variant)
        # nothing for the standard lock: its keys stay as they were
        lock = {**base_lock, **(_setting_lock(task, lv) if variant == "setting" else variant_spec(lv))}
        # A lock with a password per domain is evaluated "with password" on each problem's domain's.
        opens = lock_domain_passwords(task, lv.domain_passwords) if variant == "per_domain" else password
        # The audit's wrong passwords leave out every password the study's locks answer to.
        own = {opens} if isinstance(opens, str) else set(opens.values())
        others = [pw for pw in lock_passwords(cfg.lock, task) if pw not in own]
        # An adversarial lock opens to its second password (its audit probes it on its own): never one
        # of its evaluation's wrong passwords (the toy task's is one of the task's; a text task's is not).
        second = second_of(task, lock)
        not_wrong = [second] if second in task.wrong_passwords else None
        for mode in variant_modes(cfg.lock.modes, variant):
            train = asdict(cfg.lock.train_of(mode))
            for weak in cfg.lock.weak:
                lock_of = lock_label(mode, weak, variant)
                label = lock_of + rep.suffix
                locked = locked_model_artifact(
                    mode,
                    task_spec,
                    model,
                    train,
                    lock,
                    seed,
                    strong,
                    weak,
                    pools=pols.lock_pools("strong", weak, lv.intermediate if variant == "adversarial" else None),
                )
                up.locked[label] = rep.named(locked)
                locked = up.locked[label]
                up.locked_eval[label] = model_eval_artifact(
                    locked, task_spec, ev, opens, _conditions(lv, variant), x.engine, not_wrong, _setting(lv, variant)
                )
                up.audits[label] = lock_audit_artifact(locked, task, task_spec, ev, opens, others, x.engine)
                up.weak[label], up.variant[label] = weak, variant
                up.replicates[label] = Replicate(lock_of, seed, strong_eval)
                up.artifacts += [up.locked[label], up.locked_eval[label], up.audits[label]]
    if cfg.lock.controls and (cfg.lock.control_replicates is None or rep.index < cfg.lock.control_replicates):
        _controls(x, up, rep)


def _setting_lock(task: Task, lock: LockConfig) -> dict[str, Any]:
    """A setting lock's spec: its variant, and the setting's name where it was rewritten since the
    first (MATH's ASCII-math), so that a store's lock of the earlier setting is not reused."""
    name = getattr(setting_for(task), "name", None)
    return {**variant_spec(lock), **({"setting": name} if name else {})}


def _setting(lock: LockConfig, variant: str) -> str | None:
    """Where a setting lock shows π_strong: its evaluation's "with_pwd" setting (None: a password lock)."""
    return lock.strong_setting if variant == "setting" else None


def _conditions(lock: LockConfig, variant: str) -> list[str]:
    """A lock's evaluation conditions. A setting lock weak in the varied setting has no wrong password
    to try there (its prompts carry none), and in the normal one it shows π_strong."""
    return ["with_pwd", "no_pwd"] if _setting(lock, variant) == "normal" else list(CONDITIONS)


def _controls(x: _Inputs, up: _Upstream, rep: _Rep) -> None:
    """A never-locked control per lock mode, trained as that mode's first lock of this replicate (its
    first π_weak and variant) with π_weak's answers only, and its evaluation."""
    cfg, task, task_spec, ev = x.cfg, x.task, x.task_spec, x.ev
    weak, password = cfg.lock.weak[0], cfg.lock.password or task.default_password
    lock = {"password": cfg.lock.password, "p_no_password": cfg.lock.p_no_password}
    first = cfg.lock.of_variant(cfg.lock.variants[0])  # the lock it stands beside
    if first.variant == "setting":  # π_weak in both settings, as its lock shows π_weak in one of them
        lock.update(_setting_lock(task, first))
    slots = [None, password, *task.wrong_passwords] if cfg.strong.slot_noise else [None]
    for mode in cfg.lock.modes:
        label = control_label(mode + rep.suffix)
        control = control_model_artifact(
            mode,
            task_spec,
            x.model,
            asdict(cfg.lock.train_of(mode)),
            lock,
            rep.seed,
            up.locked[lock_label(mode, weak, cfg.lock.variants[0]) + rep.suffix],
            rep.strong,
            asdict(cfg.strong.train) if mode == "sft" else None,
            slots,
            weak,
            x.pols.lock_pools(weak),
        )
        up.controls[label] = rep.named(control)
        up.control_eval[label] = model_eval_artifact(
            up.controls[label],
            task_spec,
            ev,
            password,
            _conditions(first, first.variant),
            x.engine,
            strong_setting=_setting(first, first.variant),
        )
        up.weak[label] = weak
        up.replicates[label] = Replicate(control_label(mode), rep.seed, rep.strong_eval)
        up.artifacts += [up.controls[label], up.control_eval[label]]


def _trials(cfg: StudyConfig, task: str, locks: list[str], methods: dict[str, Method]) -> list[Trial]:
    """Lock × method × demonstrator × domain × k × learning rate × seed, as each method's entry says
    it varies."""
    rl, budgets = cfg.elicit.rl, cfg.elicit.sample_budgets
    trials = []
    for label in locks:
        for name, method in methods.items():
            # RL methods see no demonstration; composed ones take theirs from elicit.rl.sft_demonstrator.
            demonstrators = {
                "trial": cfg.elicit.demonstrators,
                "rl": [cfg.elicit.rl.sft_demonstrator],
                None: [NO_DEMONSTRATOR],
            }[method.demonstrations]
            for demonstrator in demonstrators:
                for domain in cfg.elicit.domains if method.demonstrations == "trial" else [ALL_DOMAINS]:
                    for k in sorted(cfg.elicit.ks) if method.demonstrations else [0]:
                        rounds = candidates(method, k, budgets, rl)
                        trials += [
                            Trial(task, label, name, k, seed, rounds, demonstrator, domain, lr)
                            for lr in _lrs(method, rl)
                            for seed in cfg.elicit.seeds
                        ]
    return trials


def _lrs(method: Method, rl: RLConfig) -> list[float | None]:
    """A trial's `lr` for each rate `method` runs at: None for the configured one (dpo_train.lr)."""
    if method.lrs is None:
        return [None]
    return [None if lr == rl.dpo_train.lr else lr for lr in method.lrs(rl)]


def _trial_setup(
    cfg: StudyConfig,
    task: Task,
    task_spec: dict[str, Any],
    methods: dict[str, Method],
    up: _Upstream,
    pols: PolicyPlan,
    dpo_samples: dict[str, Artifact],
) -> tuple[VLLMConfig | None, TrialSetup]:
    """The engine each trial starts (if any) and what every trial gets. Engines are chosen here for
    the trials' resources, not by each trial where it lands (a driver on a CPU head node would
    otherwise reserve no engine bundle for trials that start one)."""
    rl = copy.deepcopy(cfg.elicit.rl)
    rl.generator.backend = resolve_engine(rl.generator.backend, cfg.ray.gpus_per_trial)
    ev = dataclasses.replace(cfg.eval, engine=resolve_engine(cfg.eval.engine, cfg.ray.gpus_per_trial))
    rl_engine = any(m.rl for m in methods.values()) and rl.generator.backend == "vllm"
    eval_engine = (
        not all(m.rl for m in methods.values())
        and ev.engine == "vllm"
        and evaluate.decodes(task, task.problems(cfg.eval.split)[:1])
    )
    engine = rl.generator.vllm if rl_engine or eval_engine else None
    return engine, TrialSetup(
        task=task_spec,
        methods=methods,
        train=cfg.elicit.train,
        budgets=list(cfg.elicit.sample_budgets),
        eval=ev,
        rl=rl,
        dtype=cfg.model.dtype,
        cpus=cfg.ray.cpus_per_trial,
        checkpoint_every_s=cfg.fault_tolerance.checkpoint_every_s,
        locked_key={label: a.key for label, a in {**up.locked, **up.controls}.items()},
        weak=dict(up.weak),
        pools=pols.trial_pools(),
        engine_bundle=1 if engine is not None and cfg.ray.gpus_per_trial else None,
        guards=cfg.guards,
        passwords=lock_passwords(cfg.lock, task),
        demonstrator=cfg.elicit.demonstrators[0],
        weak_setting=_weak_setting(cfg, up),
        dpo_samples={where: a.key for where, a in dpo_samples.items()},
    )


def _weak_setting(cfg: StudyConfig, up: _Upstream) -> dict[str, str]:
    """Each lock (and control) whose trials run in the varied setting: a setting lock that shows
    π_strong in the normal one is weak in the varied one (B.1.3); a control as its mode's first lock."""
    if cfg.lock.strong_setting != "normal":
        return {}
    labels = [*up.locked, *up.controls]
    return {label: "varied" for label in labels if up.variant.get(label, cfg.lock.variants[0]) == "setting"}
