"""One elicitation run as a Ray Tune trial: resumable, reported exactly once, counted in a journal.

Everything a trial keeps lives in the store under `<experiment>/journal/<trial>/`:

    start-<attempt>-*.json   one per training attempt: pid, node, the epoch it resumed from
    checkpoint-<n>/          weights and trainer state (optimizer, schedule, random states)
    latest.json              which checkpoint is current and the records up to it; written last
    done.json                the trial's records once it has finished

A trial checkpoints at each epoch candidate but the last and after any epoch that ends
`checkpoint_every_s` after its last checkpoint; only the latest checkpoint is kept, and none once
the trial is done. When its worker dies, Tune restarts it (`fault_tolerance.max_failures`) and it
goes on from `latest.json` exactly where it stopped.

Why not Tune's own checkpoints for the weights: Tune deletes superseded checkpoints at once but
snapshots the experiment only now and then, so after a driver crash the snapshot can name a
checkpoint that no longer exists. Tune still gets a tiny checkpoint with each report, holding only
the records reported so far. On a restart under the same driver, what Tune has is the records of
that checkpoint; under a new driver (--resume), the rows of the trial's result file in the store,
from which Tune restored it; the trial reports only what Tune lacks, so each candidate reaches
Tune's results once, and a trial that finished after the driver's last snapshot reports what Tune
lacks from `done.json` and trains nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from pwlock.artifacts import eval_problems
from pwlock.config import ALL_DOMAINS, FIXEDRDM, RLConfig
from pwlock.elicit.methods import Elicitation, candidates
from pwlock.elicit.methods import run as run_method
from pwlock.generate.vllm_actor import take_placements
from pwlock.guards import LeakGuard
from pwlock.lock import weak_policy
from pwlock.logs import setup_logging
from pwlock.models import load_policy, save_policy
from pwlock.plan import TrialSetup, dpo_samples_of
from pwlock.policies import resolve
from pwlock.runtime import use_cpus
from pwlock.setting import SettingPolicy, in_setting, setting_for
from pwlock.store import Store, open_store
from pwlock.tasks import make_task

log = logging.getLogger(__name__)

JOURNAL = "journal"
_ATTEMPT = re.compile(r"start-\d+-\d+\.json")
DONE, LATEST, RECORDS = "done.json", "latest.json", "records.json"
TRAINER_STATE = "trainer.pt"
# What a record holds (RL methods add the samples generated so far and their scores).
RECORD_KEYS = (
    "candidate",
    "epochs",
    "steps",
    "configured",  # SFT: one of elicit.sample_budgets' candidates (pwlock.elicit.sft)
    "paper_candidate",  # SFT: App. G.3's own candidate number, where the run reaches them
    "demonstrations",  # SFT: a hash of the trial's demonstrations (pwlock.elicit.sft.digest)
    "correctness",
    "correctness_by_domain",
    "samples",
    "sampled_score",
    "kept_score",
    "pairs",
    "margin",
    "password_samples",
    "eval_problems",
)


def journal_dir(experiment: str, trial: str) -> str:
    return f"{experiment}/{JOURNAL}/{trial}"


def elicitation_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """Tune function trainable. `config` holds what varies (method, lock mode, k, seed, demonstrator,
    domain); `setup`, put in the object store once by tune.with_parameters, the rest."""
    setup_logging()
    c = setup
    use_cpus(c.cpus)
    store = open_store(c.store)
    run = config["run"]
    method, mode, k, seed = run["method"], run["lock_mode"], run["k"], run["seed"]
    demonstrator, domain = _demonstrator_and_domain(c, run)
    name = tune.get_context().get_trial_name()
    journal = journal_dir(c.experiment, name)
    fixed = {
        "task": c.task["name"],
        "lock_mode": mode,
        "method": method,
        "k": k,
        "seed": seed,
        "demonstrator": demonstrator,
        "domain": domain,
        "rl": c.methods[method].rl,  # rounds, the last selected (pwlock.analysis), not epoch candidates
    }
    if c.methods[method].lrs is not None:  # a trial per rate: the analysis keeps the best seed mean's
        fixed["lr"] = _rl(c, run).dpo_train.lr

    known = _records_tune_has()

    def report(record: dict) -> None:
        """Report a candidate unless Tune has it, with a tiny checkpoint listing all Tune has."""
        if record["candidate"] in known:
            return
        known[record["candidate"]] = record
        best = max(r["correctness"] for r in known.values())
        with tempfile.TemporaryDirectory(prefix="pwlock-records-") as d:
            (Path(d) / RECORDS).write_text(json.dumps(list(known.values())))
            # Key order matters: Tune's progress table shows the first four metrics.
            tune.report(
                {
                    "correctness": record["correctness"],
                    "best": best,
                    "epochs": record["epochs"],
                    "steps": record["steps"],
                    **record,
                    "attempt": attempt,
                    **fixed,
                },
                checkpoint=tune.Checkpoint.from_directory(d),
            )

    entries = store.listdir(journal)
    starts = attempt_records(entries)
    if starts:
        _records_of_earlier_runs(store, journal, f"{c.experiment}/{name}/result.json", starts, c.run, known)
    if store.exists(f"{journal}/{DONE}"):
        attempt = len(starts)
        records = json.loads(store.read_text(f"{journal}/{DONE}"))["records"]
        missing = [r for r in records if r["candidate"] not in known]
        for r in missing:
            report(r)
        log.info(
            "%s: finished in an earlier run; reported the %d records Tune lacked, trained nothing", name, len(missing)
        )
        return

    attempt = len(starts) + 1
    take_placements()  # engines of an earlier trial in this (reused) actor are not this one's
    latest = json.loads(store.read_text(f"{journal}/{LATEST}")) if store.exists(f"{journal}/{LATEST}") else None
    state = None
    if latest is not None:
        local = store.download_dir(f"{journal}/{latest['dir']}")
        model, tokenizer = load_policy(local, c.dtype)
        state = torch.load(local / TRAINER_STATE, weights_only=False)
        if not store.local:
            shutil.rmtree(local, ignore_errors=True)
        records = latest["records"]
    else:
        model, tokenizer = load_policy(store.artifact_dir(c.locked_key[mode]), c.dtype)
        records = []
    resumed_from = state["epoch"] if state else 0
    _record_start(store, journal, name, attempt, c.run, resumed_from)
    if attempt > 1:
        log.info("%s: attempt %d, resuming from epoch %d", name, attempt, resumed_from)
    for r in records:  # what the checkpoint has and Tune lacks (the driver died before its snapshot)
        report(r)

    current = latest["dir"] if latest else None
    for entry in entries:  # weights a dead attempt uploaded but never made current
        if entry.startswith("checkpoint-") and entry != current:
            store.delete_dir(f"{journal}/{entry}")
    n_candidates = len(candidates(c.methods[method], k, c.budgets, c.rl))
    locked_dir = store.artifact_dir(c.locked_key[mode])

    def checkpoint(record: dict | None, trainer_state: dict | None) -> None:
        """Report first, then checkpoint: a death in between costs a retrained candidate that is
        not reported again, never a lost one. The last candidate needs no checkpoint: done.json
        follows. Without `trainer_state`, only the record is due."""
        nonlocal current
        if record is not None:
            records.append(record)
            report(record)
            if record["candidate"] == n_candidates:
                return
        if trainer_state is None:
            return
        new = f"checkpoint-{trainer_state['step']}"
        with tempfile.TemporaryDirectory(prefix="pwlock-ckpt-") as d:
            save_policy(model, tokenizer, d)
            torch.save(trainer_state, Path(d) / TRAINER_STATE)
            store.upload_dir(Path(d), f"{journal}/{new}")
        store.write_text(
            f"{journal}/{LATEST}", json.dumps({"dir": new, "epoch": trainer_state["epoch"], "records": records})
        )
        if current and current != new:
            store.delete_dir(f"{journal}/{current}")
        current = new

    elicitation = _elicitation(c, store, name, run, model, tokenizer, str(locked_dir))
    run_method(elicitation, checkpoint, c.checkpoint_every_s, state, c.methods)
    if store.exists(f"{journal}/{DONE}"):  # another attempt finished meanwhile: its record stands
        log.warning("%s: finished by another attempt meanwhile; its done.json is kept", name)
    else:
        where = {"node_id": _node_id(), "finished_ns": time.time_ns(), "engines": take_placements()}
        store.write_text(
            f"{journal}/{DONE}", json.dumps({"trial": name, "attempt": attempt, "records": records, **where})
        )
    if current:  # the weights of a finished trial are not kept (a 7B model per trial adds up)
        store.delete_dir(f"{journal}/{current}")


def attempt_records(entries: list[str]) -> list[str]:
    """The journal's complete attempt records; a temporary file that a failed write left is none."""
    return [n for n in entries if _ATTEMPT.fullmatch(n)]


def _demonstrator_and_domain(c: TrialSetup, run: dict[str, Any]) -> tuple[str, str]:
    # Experiments from before demonstrators and domains were trial dimensions hold neither.
    return run.get("demonstrator", c.demonstrator), run.get("domain", ALL_DOMAINS)


def _records_tune_has() -> dict[int, dict]:
    """The records of this trial's Tune checkpoint, by candidate (none in a first run)."""
    tune_checkpoint = tune.get_checkpoint()
    if tune_checkpoint is None:
        return {}
    with tune_checkpoint.as_directory() as d:
        return {r["candidate"]: r for r in json.loads((Path(d) / RECORDS).read_text())}


def _records_of_earlier_runs(
    store: Store, journal: str, results: str, starts: list[str], run: str, known: dict[int, dict]
) -> None:
    """What Tune has of a trial that ran before, into `known`. A new driver (--resume) restored the
    trial's results from its result file in the store, so that file is what Tune has: the checkpoint
    its snapshot names can hold a record the file lacks (the driver died after writing the
    snapshot's state, before uploading the results) or lack one it holds. Under the same driver (a
    worker restarted), Tune has the checkpoint's records, and the file in the store may lag behind."""
    rows = {}
    if store.exists(results):
        for line in store.read_text(results).splitlines():
            row = json.loads(line)
            if row.get("candidate") is not None:
                rows[row["candidate"]] = {key: row[key] for key in RECORD_KEYS if key in row}
    last = json.loads(store.read_text(f"{journal}/{max(starts, key=lambda n: int(n.split('-')[1]))}"))
    if last.get("run") != run:
        known.clear()
    known.update({candidate: row for candidate, row in rows.items() if candidate not in known})


def _record_start(store: Store, journal: str, name: str, attempt: int, run: str, resumed_from: int) -> None:
    store.write_text(
        f"{journal}/start-{attempt:03d}-{time.time_ns()}.json",
        json.dumps(
            {
                "trial": name,
                "attempt": attempt,
                "run": run,  # the driver's run: a new one after --resume
                "resumed_from_epoch": resumed_from,
                "pid": os.getpid(),
                "node": socket.gethostname(),
                # Where it ran: the Ray node, and the GPUs Ray gave it (advertised ones count too).
                "node_id": _node_id(),
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                "started_ns": time.time_ns(),
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
        ),
    )


def _node_id() -> str:
    return ray.get_runtime_context().get_node_id()


def _dpo_samples(c: TrialSetup, store: Store, run: dict[str, Any]) -> str | None:
    """The local directory of the trial's DPO samples drawn upstream, for a method that reads them."""
    key = c.dpo_samples.get(dpo_samples_of(run["lock_mode"], run["seed"]))
    if key is None or c.methods[run["method"]].samples_from != "locked":
        return None
    return str(store.artifact_dir(key))


def _rl(c: TrialSetup, run: dict[str, Any]) -> RLConfig:
    """The study's RL settings, at the trial's own DPO learning rate where it has one."""
    if run.get("lr") is None:
        return c.rl
    return dataclasses.replace(c.rl, dpo_train=dataclasses.replace(c.rl.dpo_train, lr=run["lr"]))


def _elicitation(
    c: TrialSetup, store: Store, name: str, run: dict[str, Any], model: Any, tokenizer: Any, locked_dir: str
) -> Elicitation:
    """What the trial's method runs on: its task, model, demonstrator and π_weak, evaluation, guard."""
    task = make_task(c.task)
    policies = resolve(task, c.pools, store)  # the task's own, and model policies' sample pools
    weak = weak_policy(task, c.weak[run["lock_mode"]], tokenizer, run["seed"], policies)
    if c.weak_setting.get(run["lock_mode"]) == "varied":  # the lock is weak there: elicit it there
        setting, task = setting_for(task), in_setting(task)
        policies = {name: SettingPolicy(p, setting) for name, p in policies.items()}
        # fixedrdm's samples stay as drawn, as its lock trained them (pwlock.lock.setting_examples)
        weak = weak if c.weak[run["lock_mode"]] == FIXEDRDM else SettingPolicy(weak, setting)
    demonstrator, domain = _demonstrator_and_domain(c, run)
    return Elicitation(
        method=run["method"],
        task=task,
        model=model,
        tokenizer=tokenizer,
        locked_dir=locked_dir,
        k=run["k"],
        seed=run["seed"],
        train=c.train,
        budgets=c.budgets,
        rl=_rl(c, run),
        eval_problems=eval_problems(task, c.eval.split, c.eval.max_problems),
        eval_batch_size=c.eval.batch_size,
        eval_engine=c.eval.engine,
        demonstrator=demonstrator,
        domain=None if domain == ALL_DOMAINS else domain,
        weak=weak,
        dpo_samples=_dpo_samples(c, store, run),
        policies=policies,
        engine_bundle=c.engine_bundle,
        guard=LeakGuard.for_study(c.guards, task, c.passwords, f"trial {name}"),
    )
