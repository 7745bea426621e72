"""A study from config to results: plan -> upstream stages as Ray tasks -> Tune trials -> results.

plan      expand the grid, compute every artifact's content key, validate against the task
filter    a study that keeps the problems a policy solves (`task.keep`) builds that filter first,
          then plans again on the problems it kept (pwlock.problem_filter)
stages    build missing upstream artifacts as Ray tasks (reused when the store has them)
trials    one Ray Tune trial per elicitation run (lock mode × k × seed)
results   summary.csv and the figure under <storage>/<experiment>/
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import ray
from ray import cloudpickle, tune

from pwlock import analysis, runtime, sandbox, tune_names, tune_state
from pwlock.analysis import STUDY as STUDY_FILE
from pwlock.artifacts import Artifact
from pwlock.audit import table as audit_table
from pwlock.config import ALL_DOMAINS, AUTO, ConfigError, StudyConfig
from pwlock.generate.vllm_actor import trial_resources
from pwlock.guards import assess_locks, check_locks
from pwlock.integrity import FILES
from pwlock.lease import Lease
from pwlock.logs import setup_logging
from pwlock.plan import Plan, Trial, plan, trial_name
from pwlock.pricing import describe
from pwlock.progress import SweepProgress, quiet_tune, stopped
from pwlock.stages import build, lock_label
from pwlock.store import Store, StoreError, StoreSpec
from pwlock.store_watch import StoreDown, StoreWatch
from pwlock.study_record import read_study, write_study
from pwlock.tasks.code import CodeTask
from pwlock.trial import elicitation_trial

log = logging.getLogger(__name__)


def build_upstream(p: Plan, store: Store) -> dict[str, dict[str, Any]]:
    """Build missing artifacts as Ray tasks, each after the artifacts it depends on."""
    ray_cfg = p.cfg.ray
    stage_gb = p.memory_gb[1]
    memory = {"memory": runtime.memory_bytes(stage_gb)} if stage_gb else {}
    remote_build = ray.remote(
        num_cpus=ray_cfg.cpus_per_stage, num_gpus=ray_cfg.gpus_per_stage, max_retries=1, **memory
    )(_build_in_worker)
    refs: dict[str, Any] = {}
    metas: dict[str, dict[str, Any]] = {}
    for a in p.artifacts:
        # Locally every file is hashed here (once per process); on S3 a Ray task checks an artifact
        # with files where it downloads it, into the cache of the node whose trials will read it.
        state = store.inspect(a.key, deep=store.local)
        if state.built and (store.local or not state.meta.get(FILES)):
            metas[a.key] = {**state.meta, "reused": True}
            log.info("reusing %s %s (built %s)", a.label, a.key, state.meta.get("built_at"))
            continue
        if state.meta is not None and not state.built:
            log.warning("%s %s is damaged (%s): building it again", a.label, a.key, state.why())
        upstream = [refs[d] for d in a.deps if d in refs]
        builder = remote_build if a.gpus is None else remote_build.options(num_gpus=a.gpus)
        refs[a.key] = builder.remote(store.spec, a, *upstream)
    if refs:
        log.info(
            "building (or, on S3, checking where downloaded) %d upstream artifacts as Ray tasks: %s",
            len(refs),
            ", ".join(a.label for a in p.artifacts if a.key in refs),
        )
    for key, meta in zip(refs, ray.get(list(refs.values()))):
        metas[key] = meta
    return metas


def _plan_after_filter(p: Plan, store: Store) -> Plan:
    """A provisional plan's problem filter (`task.keep`) built, with what it reads; then the study
    planned again on the problems it kept (the plan proper: its keys, checks and trials)."""
    build_upstream(dataclasses.replace(p, artifacts=p.keep.artifacts), store)
    again = plan(p.cfg, store)
    if again.keep is None or again.keep.pending:
        raise RuntimeError(f"the problem filter {p.keep.artifact.key} was built but the store does not hold it")
    log.info("%s", again.keep.describe())
    log.info("%s", describe(again, store))
    return again


def _build_in_worker(store: StoreSpec, artifact: Artifact, *upstream: Any) -> dict[str, Any]:
    setup_logging()
    runtime.use_cpus()
    return build(store, artifact, *upstream)


def experiment_exists(store: Store, experiment: str) -> bool:
    return store.exists(f"{experiment}/{STUDY_FILE}")


def load_experiment_config(store: Store, experiment: str) -> StudyConfig:
    """The resolved config an experiment was started with (what `--resume` runs); refused if its
    study.yaml was edited since (pwlock.study_record)."""
    return read_study(store, experiment)


def run(p: Plan, store: Store, experiment: str | None = None, resume: bool = False, take_over: bool = False) -> str:
    """Run a planned study, or with `resume` finish an interrupted one; returns where its results
    are (a directory or s3:// URL). The driver holds the experiment's lease (pwlock.lease) from
    before any work to its end; `take_over` takes a dead driver's."""
    t0 = time.perf_counter()
    cfg = p.cfg
    store.check()
    experiment = experiment or f"{cfg.name}_{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    if refusal := analysis.name_refusal(store, experiment, resume):
        raise ConfigError(refusal)
    with Lease(store, experiment, uuid.uuid4().hex).acquire(take_over) as lease:
        try:
            return _run(p, store, experiment, resume, lease, t0)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: where the sweep stopped, for the CLI to say
            stop = stopped()
            began = experiment_exists(store, experiment)
            raise Interrupted(
                stop.signal if stop else signal.SIGINT, experiment, store.url, began, stop.counts if stop else None
            ) from None


class TrialsFailed(RuntimeError):
    """Trials failed after their restarts (the log names each with its cause); `--resume` runs them
    again once the cause is fixed."""

    def __init__(self, what: str, experiment: str, store: Store):
        super().__init__(
            f"{what}; see {store.uri(experiment)}. Once the cause is fixed, "
            f"`--resume --name {experiment} --storage {store.url}` runs the failed trials again"
        )


class Interrupted(Exception):
    """A sweep stopped by a signal. Once its trials began (`began`), the store keeps Tune's state and
    each trial's last checkpoint, and `--resume` finishes it; `counts`: its trials by state when it
    stopped (None if it stopped before or without Tune's own stop)."""

    def __init__(self, signum: int, experiment: str, storage: str, began: bool, counts: dict[str, int] | None):
        super().__init__(f"{signal.Signals(signum).name}: experiment {experiment} stopped")
        self.signum, self.experiment, self.storage, self.began, self.counts = signum, experiment, storage, began, counts


def preflight_sandbox(p: Plan) -> dict[str, dict[str, bool]] | None:
    """A study that scores programs (the code task) checks, before any work, that the sandbox starts
    on every node that will run it (pwlock.sandbox.preflight_cluster); raises SandboxUnavailable with
    the reason and the fix. Returns what each node enforces; None for tasks that run no code."""
    if not isinstance(p.task, CodeTask):
        return None
    resources = {"CPU": p.cfg.ray.cpus_per_trial, "GPU": p.cfg.ray.gpus_per_trial}
    return sandbox.preflight_cluster(sorted({"python", p.task.cfg.language}), resources)


def _run(p: Plan, store: Store, experiment: str, resume: bool, lease: Lease, t0: float) -> str:
    cfg = p.cfg
    progress = SweepProgress(experiment)  # trial counts and GPU-hours as Ray metrics; checks its setting now
    log.info("%s", describe(p, store))
    timings: dict[str, float] = {}
    log.info("ray: %s", runtime.init_ray(cfg.ray))
    if not resume:  # the dashboard's gauges from now on, not once the upstream artifacts are built
        progress.before_trials(len(p.trials))
    runtime.check_store(store.local, cfg.store.shared, store.url)
    runtime.check_memory(*p.memory_gb)
    if any(p.memory_gb):
        auto = [n for n in ("trial", "stage") if getattr(cfg.ray, f"memory_per_{n}_gb") == AUTO]
        log.info(
            "memory reserved: %s GB per trial, %s GB per stage%s",
            *p.memory_gb,
            f" ({' and '.join(auto)} estimated: pwlock.memory)" if auto else "",
        )
    timings["ray_start"] = time.perf_counter() - t0
    preflight_sandbox(p)
    if p.keep is not None and p.keep.pending:
        p = _plan_after_filter(p, store)
    metas = build_upstream(p, store)
    timings["upstream"] = time.perf_counter() - t0 - timings["ray_start"]
    reused = sum(m.get("reused", False) for m in metas.values())
    log.info("upstream: %d of %d artifacts reused from the store, %d built", reused, len(metas), len(metas) - reused)
    upstream = _upstream_report(p, metas)
    _gate(p, metas)
    setup = dataclasses.replace(
        p.setup,
        store=store.spec,
        experiment=experiment,
        run=lease.run,
        locked_key=dict(p.setup.locked_key),
        weak=dict(p.setup.weak),
    )
    if not resume:
        write_study(store, experiment, cfg)
    if resume:  # trials of experiments from before a lock's label named its variant know it by the old one
        for label, old in _old_labels(p).items():
            setup.locked_key[old], setup.weak[old] = p.locked[label].key, p.weak[label]
            upstream[old] = upstream[label]
    store.write_text(f"{experiment}/{analysis.UPSTREAM_FILE}", json.dumps(upstream, indent=2))
    tuner = _tuner(p, store, experiment, setup, resume, progress, upstream)
    t_trials = time.perf_counter()
    grid = _fit(tuner)
    timings["trials"] = time.perf_counter() - t_trials
    errors = [r.error for r in grid if r.error]
    exp_uri = store.uri(experiment)
    if errors:
        failed = [_failure(r) for r in grid if r.error]
        log.error(
            "%d of %d trials failed, each after its restarts:\n  %s", len(errors), len(p.trials), "\n  ".join(failed)
        )
        if len(errors) == len(p.trials):
            raise TrialsFailed(
                f"all {len(errors)} elicitation trials failed (above: each one's cause)", experiment, store
            )
    if lease.lost:  # another driver runs this experiment now: its results are its to write
        raise StoreError(f"{exp_uri}: this driver's lease was taken over by {lease.lost}; it writes no results")
    t_results = time.perf_counter()
    summary = _results(p, store, experiment, len(errors))
    timings["results"] = time.perf_counter() - t_results
    timings["total"] = time.perf_counter() - t0
    run_timings = {
        "run": lease.run,
        "resume": resume,
        "phases_s": timings,
        "artifacts": {
            a.label: {"key": a.key, "reused": metas[a.key]["reused"], "build_s": metas[a.key].get("build_seconds")}
            for a in p.artifacts
        },
    }
    every_run = _with_earlier_runs(store, experiment, run_timings)
    store.write_text(f"{experiment}/{analysis.TIMINGS}", json.dumps(every_run, indent=2))
    log.info("results:\n%s", analysis.table(summary))
    log.info("wrote %s/%s and its figures in %.0f s", exp_uri, analysis.SUMMARY, time.perf_counter() - t0)
    if errors:
        raise TrialsFailed(f"{len(errors)} of {len(p.trials)} elicitation trials failed", experiment, store)
    return exp_uri


def _failure(r: Any) -> str:
    """A failed trial's name and its cause in one line; a trial whose actor died before it ran (its
    worker killed for memory, or crashed, at start-up) says so, and what Ray said of the death."""
    text = str(r.error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    cause = next((line for line in lines if line.startswith("The actor is dead because")), lines[0] if lines else "")
    when = " before the trial ran (at start-up)" if "never ran" in text else ""
    return f"{Path(r.path).name}: {type(r.error).__name__}{when}: {cause[:400]}"


def _upstream_report(p: Plan, metas: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """upstream.json: each lock's (and never-locked control's) correctness beside the policies', logged."""
    policy = metas[p.policy_scores.key]["scores"]
    strong_model = metas[p.strong_eval.key]["report"]["no_pwd"] if p.strong_eval else None

    def entry(label: str, a: Artifact, report: dict[str, Any]) -> dict[str, Any]:
        replicate = p.replicates[label]
        strong_eval = replicate.strong_eval
        return {
            "locked_with_pwd": report["with_pwd"],
            "locked_no_pwd": report["no_pwd"],
            "locked_wrong_pwd": report["wrong_pwd"],
            "weak": policy.get(p.weak[label]),
            "strong": policy.get("strong"),
            "strong_model": metas[strong_eval.key]["report"]["no_pwd"] if strong_eval else None,
            "lock": replicate.lock,  # the label its replicates share
            "lock_seed": replicate.seed,
            "locked_key": a.key,
            "weak_policy": p.weak[label],
        }

    upstream = {}
    for label, a in p.locked.items():
        report = metas[p.locked_eval[label].key]["report"]
        upstream[label] = {**entry(label, a, report), "variant": p.variant[label]}
        if "report_by_domain" in metas[p.locked_eval[label].key]:
            upstream[label]["locked_by_domain"] = metas[p.locked_eval[label].key]["report_by_domain"]
        if label in p.audits:
            upstream[label]["audit"] = metas[p.audits[label].key]["audit"]
        upstream[label].update(_second_password(a, upstream[label].get("audit"), policy))
        log.info("locked model (%s): %s%s", label, _fmt(report), _second_note(upstream[label]))
    for label, a in p.controls.items():  # never locked: evaluated as the locks are, and not gated
        report = metas[p.control_eval[label].key]["report"]
        log.info("never-locked control (%s): %s", label, _fmt(report))
        upstream[label] = {**entry(label, a, report), "control_of": a.spec["mode"]}
    log.info("policies: %s%s", _fmt(policy), "" if strong_model is None else f"; π_strong's model {strong_model:.3f}")
    return upstream


def _second_password(
    locked: Artifact, audit: dict[str, float] | None, policy: dict[str, float | None]
) -> dict[str, Any]:
    """An adversarial lock's correctness with its second password (its audit's "second" probe) beside
    its intermediate policy's own, which the lock was trained to show with it (App. B.3.2, Fig. 15);
    nothing for any other lock."""
    intermediate = locked.spec["lock"].get("intermediate")
    if intermediate is None:
        return {}
    return {
        "locked_second_pwd": (audit or {}).get("second"),
        "intermediate": policy.get(intermediate),
        "intermediate_policy": intermediate,
    }


def _second_note(entry: dict[str, Any]) -> str:
    """`entry`'s second password beside its intermediate policy, for the locked model's log line."""
    if "intermediate_policy" not in entry:
        return ""
    second, inter = entry["locked_second_pwd"], entry["intermediate"]
    return "; second password {} (π_intermediate {} {})".format(
        "not measured" if second is None else f"{second:.3f}",
        entry["intermediate_policy"],
        "not scored" if inter is None else f"{inter:.3f}",
    )


def _gate(p: Plan, metas: dict[str, dict[str, Any]]) -> None:
    """The lock audit's table, then the lock gate: refuses before the experiment writes anything
    (artifacts stay for the next run), or with the gate off says what it would refuse."""
    cfg = p.cfg
    policy = metas[p.policy_scores.key]["scores"]
    locks = {label: (metas[p.locked_eval[label].key]["report"], policy.get(p.weak[label])) for label in p.locked}
    audits = {label: metas[a.key]["audit"] for label, a in p.audits.items()}
    if audits:
        table = audit_table(audits, cfg.guards.audit_margin)
        log.info("lock audit (greedy correctness, by lock):\n%s", "\n".join(table))
    if cfg.guards.lock_gate:
        lines = check_locks(locks, cfg.guards, cfg.source, p.variant, audits)
        log.info("lock gate: every locked model holds\n%s", "\n".join(lines))
    else:
        failing = assess_locks(locks, cfg.guards, p.variant, audits)[1]
        log.warning(
            "guards.lock_gate is off: eliciting from every lock%s",
            f", though the gate would refuse {failing}" if failing else "",
        )


def _tuner(
    p: Plan,
    store: Store,
    experiment: str,
    setup: Any,
    resume: bool,
    progress: SweepProgress,
    upstream: dict[str, dict[str, Any]],
) -> tune.Tuner:
    """A new Tuner over the plan's trials, or with `resume` the experiment's Tuner restored from the store."""
    cfg = p.cfg
    memory = runtime.memory_bytes(p.memory_gb[0])
    resources = trial_resources(cfg.ray.cpus_per_trial, cfg.ray.gpus_per_trial, p.engine, memory)
    # The setup goes to the object store once, not into every trial's config and Tune's state.
    trainable = tune.with_resources(tune.with_parameters(elicitation_trial, setup=setup), resources)
    tune_storage = store.tune_storage()
    output = quiet_tune()  # a restored run keeps the verbosity it started with
    bookkeeping = runtime.tune_bookkeeping(cfg.fault_tolerance.snapshot_every_s)  # a restored run has its own
    unreadable = tune_state.problem(store, experiment) if resume else None
    if resume and unreadable is None:
        log.info(
            "resuming %s: finished trials stay as they are; the rest go on from their last checkpoint",
            store.uri(experiment),
        )
        return tune.Tuner.restore(
            store.path(experiment),
            trainable,
            resume_unfinished=True,
            resume_errored=True,
            storage_filesystem=tune_storage.get("storage_filesystem"),
        )
    names = _portable_names()
    if resume:
        log.warning("resuming %s: Tune's experiment state cannot be read (%s)", store.uri(experiment), unreadable)
        names = tune_names.RebuiltNames(tune_state.rebuild(store, experiment, [t.name for t in p.trials]))
    bookkeeping["callbacks"] += [progress, StoreWatch(store.spec, experiment)]  # a restored run config has them
    log.info("running %d elicitation trials as Ray Tune trials", len(p.trials))
    return tune.Tuner(
        trainable,
        param_space={"run": tune.grid_search([_tune_config(t, upstream) for t in p.trials])},
        tune_config=tune.TuneConfig(reuse_actors=True, trial_name_creator=names, trial_dirname_creator=names),
        run_config=tune.RunConfig(
            name=experiment,
            **output,
            **tune_storage,
            **bookkeeping,
            failure_config=tune.FailureConfig(max_failures=cfg.fault_tolerance.max_failures),
            # Tune's checkpoints only list the records reported (the weights go to the trial's
            # journal, see pwlock.trial): tiny, and all kept so a stale snapshot never names a
            # deleted one.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
        ),
    )


def _tune_config(t: Trial, upstream: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A trial's config in Tune: what varies (its run config), its name (pwlock.tune_names) and its
    lock's baselines (upstream.json's correctness of the locked model and the policies; an adversarial
    lock's second password and intermediate policy too), all plain values, so that Tune's own results
    (`ResultGrid.get_dataframe()`, `config/run/...`) have them."""
    baselines = upstream[t.lock_mode]
    second = {k: baselines[k] for k in analysis.SECOND if k in baselines}  # adversarial locks only
    return {**t.run_config(), "name": t.name, **{k: baselines.get(k) for k in analysis.UPSTREAM}, **second}


def _portable_names() -> Any:
    """The trial namer, registered to be pickled by value: Tune's state holds its code, not a
    reference to pwlock (pwlock.tune_names)."""
    cloudpickle.register_pickle_by_value(tune_names)
    return tune_names.trial_name


def _fit(tuner: tune.Tuner) -> Any:
    try:
        grid = tuner.fit()
    except Exception as e:  # a StoreWatch stopped it: its message, whatever Tune wrapped it in
        down = next((c for c in _causes(e) if isinstance(c, StoreDown)), None)
        if down is None:
            raise
        raise down from None
    if stopped():  # Tune stopped on a signal (pwlock.progress) and returned what it had: no results
        raise KeyboardInterrupt
    return grid


def _results(p: Plan, store: Store, experiment: str, failed: int) -> Any:
    """summary.csv and the figures, read back from the store: the results of every finished trial."""
    exp_uri = store.uri(experiment)
    try:
        summary = analysis.write_results(exp_uri)
    except (ValueError, OSError) as e:  # no trial's result reached the store, or the store is out of reach
        raise StoreError(
            f"{e}: see the trials' errors above (a full disk, a store out of reach); once that is fixed, "
            f"run the sweep's script with --resume --name {experiment} --storage {store.url} (and no --config "
            "or --quick: it runs the experiment's own config)"
        ) from None
    # Tune only logs a failed final upload; results are read back from the store, so check them.
    missing = len(p.trials) - failed - summary["trial"].nunique()
    if missing > 0:
        raise StoreError(
            f"{exp_uri}: the results of {missing} finished trials did not reach the store; "
            f"run the sweep's script with --resume --name {experiment} --storage {store.url} to report them again"
        )
    return summary


def _with_earlier_runs(store: Store, experiment: str, run: dict[str, Any]) -> dict[str, Any]:
    """timings.json: this run's timings at the top (as before), and under `runs` every run of the
    experiment in order, so that a --resume adds to the first run's timings instead of replacing them."""
    rel = f"{experiment}/{analysis.TIMINGS}"
    earlier = json.loads(store.read_text(rel)) if store.exists(rel) else None
    runs = [] if earlier is None else earlier.get("runs", [earlier])
    return {**run, "runs": [*runs, run]}


def _causes(e: BaseException):
    while e is not None:
        yield e
        e = e.__cause__ or e.__context__


def _old_labels(p: Plan) -> dict[str, str]:
    """Each lock's label as it was before labels named the variant (one variant per study then),
    where that differs and is free."""
    if len(set(p.variant.values())) != 1 or any(p.replicates[label].lock != label for label in p.locked):
        return {}  # several variants, or lock replicates: labels that never had an older form
    out = {label: lock_label(p.locked[label].spec["mode"], p.weak[label]) for label in p.locked}
    return {label: old for label, old in out.items() if old != label and old not in p.locked}


def _trial_name(trial) -> str:
    """Experiments started before pwlock.tune_names have this function in their Tune state: it stays,
    so that they still restore."""
    c = trial.config["run"]
    name = trial_name(
        c["lock_mode"],
        c["method"],
        c["k"],
        c["seed"],
        c.get("demonstrator", "strong"),
        c.get("domain", ALL_DOMAINS),
        c.get("lr"),
    )
    return f"{name}-{trial.trial_id}"


def _fmt(scores: dict[str, float | None]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in scores.items() if v is not None)
