"""A study from config to results: plan -> upstream stages as Ray tasks -> Tune trials -> results.

    plan      expand the grid, compute every artifact's content key, validate against the task
    stages    build missing upstream artifacts as Ray tasks (reused when the store has them)
    trials    one Ray Tune trial per elicitation run (lock mode × k × seed)
    results   summary.csv and the figure under <storage>/<experiment>/
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

from pwlock.config import ALL_DOMAINS, NO_DEMONSTRATOR, ConfigError, StudyConfig, resolve_engine, to_dict
from pwlock.elicit.sft import epoch_candidates
from pwlock import evaluate
from pwlock.evaluate import CONDITIONS
from pwlock.config import COMPOSED_METHODS, FIXEDRDM, RL_METHODS
from pwlock.elicit.methods import n_candidates, samples_per_round
from pwlock.generate.vllm_actor import trial_resources
from pwlock.lock import variant_errors, variant_spec
from pwlock.guards import LeakGuard, assess_locks, check_locks, lock_passwords
from pwlock.passwords import lock_domain_passwords
from pwlock.stages import (
    Artifact,
    lock_label,
    locked_model_artifact,
    model_eval_artifact,
    policy_scores_artifact,
    strong_model_artifact,
)
from pwlock.analysis import STUDY as STUDY_FILE
from pwlock.policies import PolicyPlan, plan_policies, policy_names
from pwlock.progress import SweepProgress
from pwlock.store import Store, StoreError, StoreSpec
from pwlock.tasks import Task, make_task
from pwlock.train.sft import steps_per_epoch
from pwlock.trial import elicitation_trial, trial_name

log = logging.getLogger(__name__)

STRONG_SPLITS = ["lock"]  # π_strong's model never sees the elicit, validation or held-out problems


@dataclass
class Trial:
    task: str
    lock_mode: str  # the lock's label (stages.lock_label): "sft", "sft-fixedrdm", "sft-per_domain"
    method: str
    k: int  # demonstrations (0 for RL methods, which have none)
    seed: int
    epoch_candidates: list[int]  # SFT: epochs at which it is evaluated; RL: its rounds
    demonstrator: str = "strong"  # whose demonstrations SFT trains on
    domain: str = ALL_DOMAINS  # the elicit split's domain the demonstrations come from

    @property
    def name(self) -> str:
        return trial_name(self.lock_mode, self.method, self.k, self.seed, self.demonstrator, self.domain)

    def run_config(self) -> dict[str, Any]:
        return {"method": self.method, "lock_mode": self.lock_mode, "k": self.k, "seed": self.seed,
                "demonstrator": self.demonstrator, "domain": self.domain}


@dataclass
class Plan:
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
    policies: PolicyPlan = field(default_factory=PolicyPlan)  # model policies: their models and sample pools


def plan(cfg: StudyConfig) -> Plan:
    """Expand the study into artifacts and trials, checking everything that needs the task."""
    where = f"{cfg.source}: task"
    task = make_task(cfg.task, where=where)
    task_spec = dict(cfg.task)
    errors = []
    elicit_problems = task.problems("elicit")
    n_elicit = len(elicit_problems)
    sft_ks = cfg.elicit.ks if set(cfg.elicit.methods) - set(RL_METHODS) else []
    for i, k in enumerate(sft_ks):
        if k > n_elicit:
            errors.append(f"elicit.ks[{i}]: k={k} exceeds the {n_elicit} problems of the elicit split")
    per_domain = {d: sum(p.domain == d for p in elicit_problems) for d in sorted({p.domain for p in elicit_problems})}
    for i, d in enumerate(cfg.elicit.domains):
        if d != ALL_DOMAINS and d not in per_domain:
            errors.append(f"elicit.domains[{i}]: task {task.name!r} has no domain {d!r} in its elicit split; "
                          f"expected {ALL_DOMAINS!r} or one of {sorted(per_domain)}")
        elif d != ALL_DOMAINS and sft_ks and max(sft_ks) > per_domain[d]:
            errors.append(f"elicit.domains[{i}]: k={max(sft_ks)} exceeds the {per_domain[d]} problems of domain "
                          f"{d!r} in the elicit split")
    policies = policy_names(task, cfg)  # the task's own and the study's model policies
    roles = [(f"elicit.demonstrator{'' if isinstance(cfg.elicit.demonstrator, str) else f'[{i}]'}", d)
             for i, d in enumerate(cfg.elicit.demonstrators)]
    for field, role in (*roles, ("π_strong", "strong"), ("π_weak", "weak")):
        if role not in policies:
            errors.append(f"{field}: task {task.name!r} has no {role!r} policy; it has {sorted(policies)}")
    for i, weak in enumerate(cfg.lock.weak):
        if weak not in policies and weak != FIXEDRDM:
            errors.append(f"lock.weak[{i}]: task {task.name!r} has no policy {weak!r}; expected one of "
                          f"{sorted(policies)} or {FIXEDRDM!r}")
    if any(m in COMPOSED_METHODS for m in cfg.elicit.methods) and cfg.elicit.rl.sft_demonstrator not in policies:
        errors.append(f"elicit.rl.sft_demonstrator: task {task.name!r} has no policy "
                      f"{cfg.elicit.rl.sft_demonstrator!r}; it has {sorted(policies)}")
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
        try:                                              # password is refused now, not in a trial
            LeakGuard.for_study(cfg.guards, task, lock_passwords(cfg.lock, task))
        except ValueError as e:
            errors.append(str(e))
    if cfg.eval.split not in ("val", "elicit", "lock", "weak"):
        errors.append(f"eval.split: unknown split {cfg.eval.split!r}")
    pols = plan_policies(cfg, task, task_spec) if not errors else PolicyPlan()  # models and sample pools
    errors += pols.errors
    if errors:
        raise ConfigError(f"{cfg.source}: " + "; ".join(errors))

    model = asdict(cfg.model)
    ev = asdict(cfg.eval)
    for how in ("batch_size", "engine"):  # how fast, not what: not part of any artifact's identity
        ev.pop(how)
    base_lock = {"password": cfg.lock.password, "p_no_password": cfg.lock.p_no_password, "stop_at": cfg.lock.stop_at}
    password = cfg.lock.password or task.default_password
    # A model policy without a scores pool (a supplied file lacking the evaluation problems) is left
    # unscored, never scored as the task's own policy of the same name.
    unscored = {name: None for name in pols.names if name not in pols.scores}
    scores = policy_scores_artifact(task_spec, ev, model if FIXEDRDM in cfg.lock.weak else None,
                                    {**pols.scores, **unscored})
    artifacts = [*pols.artifacts, scores]
    strong = strong_eval = None
    if "sft" in cfg.lock.modes:
        strong = strong_model_artifact(
            task_spec, model, STRONG_SPLITS, asdict(cfg.strong.train), cfg.strong.stop_at,
            [None, password, *task.wrong_passwords] if cfg.strong.slot_noise else [None], cfg.seed,
            pols.lock_pools("strong"),
        )
        strong_eval = model_eval_artifact(strong, task_spec, ev, password, ["no_pwd"])
        artifacts += [strong, strong_eval]
    locked, locked_eval, weak_of, variant_of = {}, {}, {}, {}
    for variant in cfg.lock.variants:
        lv = cfg.lock.of_variant(variant)
        lock = {**base_lock, **variant_spec(lv)}  # nothing for the standard lock: its keys stay as they were
        # A lock with a password per domain is evaluated "with password" on each problem's domain's.
        opens = lock_domain_passwords(task, lv.domain_passwords) if variant == "per_domain" else password
        for mode in cfg.lock.modes:
            train = asdict(cfg.lock.train_of(mode))
            for weak in cfg.lock.weak:
                label = lock_label(mode, weak, variant)
                locked[label] = locked_model_artifact(
                    mode, task_spec, model, train, lock, cfg.seed, strong, weak,
                    pools=pols.lock_pools("strong", weak, lv.intermediate if variant == "adversarial" else None))
                locked_eval[label] = model_eval_artifact(locked[label], task_spec, ev, opens, list(CONDITIONS))
                weak_of[label], variant_of[label] = weak, variant
                artifacts += [locked[label], locked_eval[label]]
    rl, budgets = cfg.elicit.rl, cfg.elicit.sample_budgets
    trials = []
    for label in locked:
        for method in cfg.elicit.methods:
            # RL methods see no demonstration; composed ones take theirs from elicit.rl.sft_demonstrator.
            demonstrators = (cfg.elicit.demonstrators if method == "sft" else [cfg.elicit.rl.sft_demonstrator]
                             if method in COMPOSED_METHODS else [NO_DEMONSTRATOR])
            for demonstrator in demonstrators:
                for domain in cfg.elicit.domains if method == "sft" else [ALL_DOMAINS]:
                    for k in sorted(cfg.elicit.ks) if method not in RL_METHODS else [0]:
                        rounds = (epoch_candidates(k, budgets) if method == "sft"
                                  else list(range(1, n_candidates(method, k, budgets, rl) + 1)))
                        trials += [Trial(task.name, label, method, k, seed, rounds, demonstrator, domain)
                                   for seed in cfg.elicit.seeds]
    return Plan(cfg, task_spec, artifacts, scores, strong, strong_eval, locked, weak_of, locked_eval, trials,
                variant_of, task, pols)


def describe(p: Plan, store: Store | None = None) -> str:
    from pwlock import cost

    try:
        est: cost.Estimate | None = cost.estimate_plan(p, store)
        hours = {i.id: f"  {i.gpu_hours:.3f} GPU-h" for i in est.artifacts + est.trials}
    except ConfigError as e:  # e.g. a hub model of unknown size: the plan stands without its cost
        est, hours, why = None, {}, str(e)
    lines = [f"study {p.cfg.name!r} from {p.cfg.source}: task {p.task_spec['name']}"]
    lines.append(f"upstream artifacts ({len(p.artifacts)}):")
    for a in p.artifacts:
        state = "" if store is None else ("  [in store, reused]" if store.has(a.key) else "  [to build]")
        lines.append(f"  {a.label:<36} {a.key}{hours.get(a.key, '')}{state}")
    g = p.cfg.guards
    lines.append(f"guards: lock gate {'on' if g.lock_gate else 'OFF'} (with - without password ≥ {g.min_password_gap}, "
                 f"without ≤ π_weak + {g.max_over_weak}, wrong ≤ without + {g.max_wrong_over_no_pwd}); "
                 f"leak guard {'on' if g.leak_guard else 'OFF'} (similarity ≥ {g.leak_similarity})")
    ks = f"k {sorted(p.cfg.elicit.ks)} (SFT) × " if set(p.cfg.elicit.methods) - set(RL_METHODS) else ""
    lines.append(f"elicitation trials ({len(p.trials)}): locks {list(p.locked)} × methods {p.cfg.elicit.methods} × "
                 f"{ks}seeds {p.cfg.elicit.seeds}")
    batch = p.cfg.elicit.train.batch_size
    n_elicit = len(p.task.problems("elicit"))
    for t in p.trials:
        if t.method == "sft":
            steps = [e * steps_per_epoch(t.k, batch) for e in t.epoch_candidates]
            lines.append(f"  {t.name:<40} epoch candidates {t.epoch_candidates} = steps {steps}{hours.get(t.name, '')}")
        else:
            per = samples_per_round(t.method, p.cfg.elicit.rl, n_elicit)
            lines.append(f"  {t.name:<40} {len(t.epoch_candidates)} rounds × {per} samples = "
                         f"{len(t.epoch_candidates) * per} samples{hours.get(t.name, '')}")
    lines += est.summary() if est else [f"cost estimate unavailable: {why}"]
    return "\n".join(lines)


def build_upstream(p: Plan, store: Store) -> dict[str, dict[str, Any]]:
    """Build missing artifacts as Ray tasks, each after the artifacts it depends on."""
    from pwlock import runtime  # noqa: F401  (Ray's local defaults, before ray is imported)
    import ray

    remote_build = ray.remote(num_cpus=p.cfg.ray.cpus_per_stage, num_gpus=p.cfg.ray.gpus_per_stage,
                              max_retries=1)(_build_in_worker)
    refs: dict[str, Any] = {}
    metas: dict[str, dict[str, Any]] = {}
    for a in p.artifacts:
        if store.has(a.key):
            metas[a.key] = {**store.meta(a.key), "reused": True}
            log.info("reusing %s %s (built %s)", a.label, a.key, metas[a.key].get("built_at"))
            continue
        upstream = [refs[d] for d in a.deps if d in refs]
        builder = remote_build if a.gpus is None else remote_build.options(num_gpus=a.gpus)
        refs[a.key] = builder.remote(store.spec, a, *upstream)
    if refs:
        log.info("building %d upstream artifacts as Ray tasks: %s", len(refs),
                 ", ".join(a.label for a in p.artifacts if a.key in refs))
    for key, meta in zip(refs, ray.get(list(refs.values()))):
        metas[key] = meta
    return metas


def _build_in_worker(store: StoreSpec, artifact: Artifact, *upstream: Any) -> dict[str, Any]:
    from pwlock.logs import setup_logging
    from pwlock.stages import build

    setup_logging()
    return build(store, artifact, *upstream)


def experiment_exists(store: Store, experiment: str) -> bool:
    return store.exists(f"{experiment}/{STUDY_FILE}")


def load_experiment_config(store: Store, experiment: str) -> StudyConfig:
    """The resolved config an experiment was started with (what `--resume` runs)."""
    from pwlock.config import config_from_dict

    rel = f"{experiment}/{STUDY_FILE}"
    if not store.exists(rel):
        raise ConfigError(f"{store.uri(experiment)}: no experiment {experiment!r} in the store (no {STUDY_FILE})")
    raw = yaml.safe_load(store.read_text(rel))
    raw.pop("source", None)
    return config_from_dict(raw, source=store.uri(rel))


def run(cfg: StudyConfig, store: Store, experiment: str | None = None, resume: bool = False) -> str:
    """Run a whole study, or with `resume` finish an interrupted one; returns where its results are
    (a directory or s3:// URL)."""
    from pwlock import runtime  # Ray's local defaults, before ray is imported
    from ray import tune

    from pwlock import analysis

    t0 = time.perf_counter()
    p = plan(cfg)
    store.check()
    experiment = experiment or f"{cfg.name}_{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    if resume != experiment_exists(store, experiment):
        raise ConfigError(f"{store.uri(experiment)}: " + (
            "nothing to resume: no such experiment" if resume else
            "an experiment of this name exists; pass --resume to finish it, or choose another --name"))
    progress = SweepProgress(experiment)  # trial counts and GPU-hours as Ray metrics; checks its setting now
    log.info("%s", describe(p, store))
    timings: dict[str, float] = {}
    log.info("ray: %s", runtime.init_ray(cfg.ray))
    timings["ray_start"] = time.perf_counter() - t0
    metas = build_upstream(p, store)
    timings["upstream"] = time.perf_counter() - t0 - timings["ray_start"]
    reused = sum(m.get("reused", False) for m in metas.values())
    log.info("upstream: %d of %d artifacts reused from the store, %d built", reused, len(metas), len(metas) - reused)
    policy = metas[p.policy_scores.key]["scores"]
    strong_model = metas[p.strong_eval.key]["report"]["no_pwd"] if p.strong_eval else None
    upstream = {}
    for label, a in p.locked.items():
        report = metas[p.locked_eval[label].key]["report"]
        log.info("locked model (%s): %s", label, _fmt(report))
        upstream[label] = {"locked_with_pwd": report["with_pwd"], "locked_no_pwd": report["no_pwd"],
                           "locked_wrong_pwd": report["wrong_pwd"], "weak": policy.get(p.weak[label]),
                           "strong": policy.get("strong"), "strong_model": strong_model, "locked_key": a.key,
                           "weak_policy": p.weak[label], "variant": p.variant[label]}
        if "report_by_domain" in metas[p.locked_eval[label].key]:
            upstream[label]["locked_by_domain"] = metas[p.locked_eval[label].key]["report_by_domain"]
    log.info("policies: %s%s", _fmt(policy), "" if strong_model is None else f"; π_strong's model {strong_model:.3f}")
    locks = {label: (metas[p.locked_eval[label].key]["report"], policy.get(p.weak[label])) for label in p.locked}
    if cfg.guards.lock_gate:  # refuses before the experiment writes anything; artifacts stay for the next run
        log.info("lock gate: every locked model holds\n%s",
                 "\n".join(check_locks(locks, cfg.guards, cfg.source, p.variant)))
    else:
        failing = assess_locks(locks, cfg.guards, p.variant)[1]
        log.warning("guards.lock_gate is off: eliciting from every lock%s",
                    f", though the gate would refuse {failing}" if failing else "")
    # Engines are chosen here for the trials' resources, not by each trial where it lands (a driver
    # on a CPU head node would otherwise reserve no engine bundle for trials that start one).
    rl = copy.deepcopy(cfg.elicit.rl)
    rl.generator.backend = resolve_engine(rl.generator.backend, cfg.ray.gpus_per_trial)
    ev = dataclasses.replace(cfg.eval, engine=resolve_engine(cfg.eval.engine, cfg.ray.gpus_per_trial))
    task = p.task
    rl_engine = any(m != "sft" for m in cfg.elicit.methods) and rl.generator.backend == "vllm"
    eval_engine = ("sft" in cfg.elicit.methods and ev.engine == "vllm"
                   and evaluate.decodes(task, task.problems(cfg.eval.split)[:1]))
    engine = rl.generator.vllm if rl_engine or eval_engine else None
    resources = trial_resources(cfg.ray.cpus_per_trial, cfg.ray.gpus_per_trial, engine)
    engine_bundle = 1 if engine is not None and cfg.ray.gpus_per_trial else None
    constants = {
        "store": asdict(store.spec),
        "experiment": experiment,
        "task": p.task_spec,
        "demonstrator": cfg.elicit.demonstrators[0],  # for trials of experiments from before it was per trial
        "train": asdict(cfg.elicit.train),
        "sample_budgets": list(cfg.elicit.sample_budgets),
        "eval": asdict(ev),
        "dtype": cfg.model.dtype,
        "cpus": cfg.ray.cpus_per_trial,
        "checkpoint_every_s": cfg.fault_tolerance.checkpoint_every_s,
        "locked_key": {label: a.key for label, a in p.locked.items()},
        "weak": dict(p.weak),
        "pools": p.policies.trial_pools(),  # model policies' samples of the elicit split (pwlock.policies)
        "rl": asdict(rl),
        "engine_bundle": engine_bundle,
        "guards": asdict(cfg.guards),
        "passwords": lock_passwords(cfg.lock, task),
    }
    if not resume:
        store.write_text(f"{experiment}/{STUDY_FILE}", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    if resume:  # trials of experiments from before a lock's label named its variant know it by the old one
        for label, old in _old_labels(p).items():
            constants["locked_key"][old], constants["weak"][old] = p.locked[label].key, p.weak[label]
            upstream[old] = upstream[label]
    store.write_text(f"{experiment}/{analysis.UPSTREAM_FILE}", json.dumps(upstream, indent=2))
    # Constants go to the object store once, not into every trial's config and Tune's state.
    trainable = tune.with_resources(tune.with_parameters(elicitation_trial, constants=constants), resources)
    tune_storage = store.tune_storage()
    if resume:
        runtime.tune_bookkeeping(cfg.fault_tolerance.snapshot_every_s)  # the rest is in the restored run config
        tuner = tune.Tuner.restore(store.path(experiment), trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=tune_storage.get("storage_filesystem"))
        log.info("resuming %s: finished trials stay as they are; the rest go on from their last checkpoint",
                 store.uri(experiment))
    else:
        bookkeeping = runtime.tune_bookkeeping(cfg.fault_tolerance.snapshot_every_s)
        bookkeeping["callbacks"].append(progress)  # a restored run config has it already
        tuner = tune.Tuner(
            trainable,
            param_space={"run": tune.grid_search([t.run_config() for t in p.trials])},
            tune_config=tune.TuneConfig(reuse_actors=True, trial_name_creator=_trial_name,
                                        trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(
                name=experiment, verbose=1, **tune_storage,
                **bookkeeping,
                failure_config=tune.FailureConfig(max_failures=cfg.fault_tolerance.max_failures),
                # Tune's checkpoints only list the records reported (the weights go to the trial's
                # journal, see pwlock.trial): tiny, and all kept so a stale snapshot never names a
                # deleted one.
                checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            ),
        )
        log.info("running %d elicitation trials as Ray Tune trials", len(p.trials))
    t_trials = time.perf_counter()
    grid = tuner.fit()
    timings["trials"] = time.perf_counter() - t_trials
    errors = [r.error for r in grid if r.error]
    exp_uri = store.uri(experiment)
    if errors:
        log.error("%d of %d trials failed; first error: %s", len(errors), len(p.trials), errors[0])
        if len(errors) == len(p.trials):
            raise RuntimeError(f"all {len(errors)} elicitation trials failed; see {exp_uri}") from errors[0]
    t_results = time.perf_counter()
    summary = analysis.write_results(exp_uri)
    # Tune only logs a failed final upload; results are read back from the store, so check them.
    missing = len(p.trials) - len(errors) - summary["trial"].nunique()
    if missing > 0:
        raise StoreError(f"{exp_uri}: the results of {missing} finished trials did not reach the store; "
                         f"run the same command with --resume --name {experiment} to report them again")
    timings["results"] = time.perf_counter() - t_results
    timings["total"] = time.perf_counter() - t0
    store.write_text(f"{experiment}/{analysis.TIMINGS}", json.dumps(
        {"phases_s": timings, "artifacts": {a.label: {"key": a.key, "reused": metas[a.key]["reused"],
                                                       "build_s": metas[a.key].get("build_seconds")}
                                            for a in p.artifacts}}, indent=2))
    log.info("results:\n%s", analysis.table(summary))
    log.info("wrote %s/%s and its figures in %.0f s", exp_uri, analysis.SUMMARY, time.perf_counter() - t0)
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(p.trials)} elicitation trials failed; see {exp_uri}")
    return exp_uri

def _old_labels(p: Plan) -> dict[str, str]:
    """Each lock's label as it was before labels named the variant (one variant per study then),
    where that differs and is free."""
    if len(set(p.variant.values())) != 1:
        return {}
    out = {label: lock_label(p.locked[label].spec["mode"], p.weak[label]) for label in p.locked}
    return {label: old for label, old in out.items() if old != label and old not in p.locked}


def _trial_name(trial) -> str:
    c = trial.config["run"]
    name = trial_name(c["lock_mode"], c["method"], c["k"], c["seed"], c.get("demonstrator", "strong"),
                      c.get("domain", ALL_DOMAINS))
    return f"{name}-{trial.trial_id}"


def _fmt(scores: dict[str, float | None]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in scores.items() if v is not None)
