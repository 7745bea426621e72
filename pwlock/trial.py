"""One elicitation run as a Ray Tune trial: resumable, and counted in a journal in the store.

A trial reports at each epoch candidate, each report carrying a checkpoint (weights, optimizer,
schedule and random states, the records so far), and checkpoints between candidates once
`checkpoint_every_s` has passed. When its worker dies, Tune restarts it from the last checkpoint
(`fault_tolerance.max_failures`), and training goes on exactly where it stopped; since every
reported candidate is checkpointed, no candidate is reported twice.

The journal, `<experiment>/journal/<trial>/` in the store, holds one `start-*.json` per start
(attempt, pid, node, the epoch it resumed from) and `done.json` with the trial's records once it
finishes. A finished trial that Tune restarts anyway (the driver died before its last snapshot)
reports the records its checkpoint lacks from `done.json` and trains nothing.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

JOURNAL = "journal"
DONE = "done.json"
TRAINER_STATE, RECORDS, MODEL = "trainer.pt", "records.json", "model"


def trial_name(lock_mode: str, method: str, k: int, seed: int) -> str:
    return f"{lock_mode}lock-{method}-k{k}-seed{seed}"


def journal_dir(experiment: str, trial: str) -> str:
    return f"{experiment}/{JOURNAL}/{trial}"


def elicitation_trial(config: dict[str, Any], constants: dict[str, Any]) -> None:
    """Tune function trainable. `config` holds what varies (method, lock mode, k, seed); `constants`, put in
    the object store once by tune.with_parameters, the rest."""
    import torch
    from ray import tune

    from pwlock.config import TrainConfig
    from pwlock.elicit.sft import demonstrations, elicit_sft
    from pwlock.logs import setup_logging
    from pwlock.models import load_policy, save_policy
    from pwlock.stages import eval_problems
    from pwlock.store import StoreSpec, open_store
    from pwlock.tasks import make_task

    setup_logging()
    c = constants
    torch.set_num_threads(max(1, int(c["cpus"])))
    store = open_store(StoreSpec(**c["store"]))
    method, mode, k, seed = config["method"], config["lock_mode"], config["k"], config["seed"]
    name = tune.get_context().get_trial_name()
    journal = journal_dir(c["experiment"], name)
    fixed = {"task": c["task"]["name"], "lock_mode": mode, "method": method, "k": k, "seed": seed}

    def metrics(record: dict | None, epochs: int, steps: int) -> dict[str, Any]:
        nonlocal best
        if record is None:  # a checkpoint between candidates
            return {"epochs": epochs, "steps": steps, "attempt": attempt, **fixed}
        best = max(best, record["correctness"])
        # Key order matters: Tune's progress table shows the first four metrics.
        return {"correctness": record["correctness"], "best": best, "epochs": record["epochs"],
                "steps": record["steps"], "candidate": record["candidate"], "attempt": attempt, **fixed}

    checkpoint = tune.get_checkpoint()
    done = store.exists(f"{journal}/{DONE}")
    state, reported, model = None, [], None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            reported = json.loads((Path(d) / RECORDS).read_text())
            if not done:
                state = torch.load(Path(d) / TRAINER_STATE, weights_only=False)
                model, tokenizer = load_policy(Path(d) / MODEL, c["dtype"])
    best = max((r["correctness"] for r in reported), default=0.0)
    starts = [n for n in store.listdir(journal) if n.startswith("start-")]
    attempt = len(starts) + (not done)
    if done:
        records = json.loads(store.read_text(f"{journal}/{DONE}"))["records"]
        seen = {r["candidate"] for r in reported}
        for r in records:
            if r["candidate"] not in seen:
                tune.report(metrics(r, r["epochs"], r["steps"]))
        log.info("%s: finished in an earlier run; reported the %d records Tune lacked, trained nothing",
                 name, len(records) - len(seen))
        return
    resumed_from = state["epoch"] if state else 0
    store.write_text(f"{journal}/start-{attempt:03d}-{time.time_ns()}.json", json.dumps(
        {"trial": name, "attempt": attempt, "resumed_from_epoch": resumed_from, "pid": os.getpid(),
         "node": socket.gethostname(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")}))
    if attempt > 1:
        log.info("%s: attempt %d, resuming from epoch %d", name, attempt, resumed_from)

    if model is None:
        model, tokenizer = load_policy(store.artifact_dir(c["locked_key"][mode]), c["dtype"])
    records = list(reported)

    def save(record: dict | None, trainer_state: dict) -> None:
        if record is not None:
            records.append(record)
        with tempfile.TemporaryDirectory(prefix="pwlock-ckpt-") as d:
            save_policy(model, tokenizer, Path(d) / MODEL)
            torch.save(trainer_state, Path(d) / TRAINER_STATE)
            (Path(d) / RECORDS).write_text(json.dumps(records))
            # Returns once the checkpoint is persisted in the experiment's storage.
            tune.report(metrics(record, trainer_state["epoch"], trainer_state["step"]),
                        checkpoint=tune.Checkpoint.from_directory(d))

    task = make_task(c["task"])
    demos = demonstrations(task, k, seed, c["demonstrator"])
    problems = eval_problems(task, c["eval"]["split"], c["eval"]["max_problems"])
    elicit_sft(model, tokenizer, task, demos, problems, TrainConfig(**c["train"]), seed, c["sample_budgets"],
               eval_batch_size=c["eval"]["batch_size"], checkpoint=save,
               checkpoint_every_s=c["checkpoint_every_s"], start=state)
    store.write_text(f"{journal}/{DONE}", json.dumps({"trial": name, "attempt": attempt, "records": records}))
