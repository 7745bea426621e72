"""Tune's experiment state on `--resume`: restored when it can be read, else rebuilt from the plan.

Tune restores an experiment from `tuner.pkl` and its newest `experiment_state-*.json`. A lost or
cut-off file (a store that failed mid-write, an object deleted by hand) leaves Tune unable to
restore: it fails, or with no state file at all runs every trial anew under new names, training
finished ones again. pwlock does not need those files to go on: the plan lists the trials, and
each trial's journal (`journal/<trial>/`, pwlock.trial) says how far it got. So a rebuilt run is a
new Tuner over the plan's trials, each under the name its journal has: a finished trial reports
its records from done.json and trains nothing, an unfinished one goes on from its last checkpoint,
one never started starts. Tune's files of the earlier runs (its state, and each trial's directory
with result.json) are removed first, so that what each trial reports again is all the new state
holds, once.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import pickle

from pwlock.store import Store
from pwlock.trial import DONE, JOURNAL, LATEST

log = logging.getLogger(__name__)

TUNER_PKL = "tuner.pkl"
STATE = "experiment_state-*.json"
# Tune's own files beside the trials' directories (searcher and callback state).
TUNE_FILES = (TUNER_PKL, STATE, "basic-variant-state-*.json", "search_gen_state-*.json", "callback-states-*.pkl")


def problem(store: Store, experiment: str) -> str | None:
    """Why Tune cannot restore `experiment` from the store; None if its state reads whole."""
    names = store.listdir(experiment)
    if TUNER_PKL not in names:
        return f"{TUNER_PKL} is missing"
    states = fnmatch.filter(names, STATE)
    if not states:
        return "no experiment_state-*.json"
    try:
        pickle.loads(store.read_bytes(f"{experiment}/{TUNER_PKL}"))
    except Exception as e:  # a cut-off pickle raises whatever its last opcode met
        return f"{TUNER_PKL} cannot be read ({type(e).__name__}: {e})"
    newest = max(states)  # what Tune restores from
    try:
        if "trial_data" not in json.loads(store.read_bytes(f"{experiment}/{newest}")):
            return f"{newest} lists no trials"
    except ValueError as e:
        return f"{newest} is not valid JSON ({e})"
    return None


def rebuild(store: Store, experiment: str, trials: list[str]) -> dict[str, str]:
    """Prepare a rebuilt run of `trials` (their names without Tune's trial id): Tune's files of
    earlier runs removed; returns each trial's full name from its journal, where it has one."""
    journals = store.listdir(f"{experiment}/{JOURNAL}")
    by_base: dict[str, list[str]] = {}
    for name in journals:
        by_base.setdefault(name.rsplit("-", 1)[0], []).append(name)
    names = {
        base: max(by_base[base], key=lambda n: _progress(store, experiment, n)) for base in trials if base in by_base
    }
    for entry in store.listdir(experiment):
        if entry in journals:  # a trial's directory of Tune's: its result.json, params, checkpoints
            store.delete_dir(f"{experiment}/{entry}")
        elif any(fnmatch.fnmatch(entry, pattern) for pattern in TUNE_FILES):
            store.delete_file(f"{experiment}/{entry}")
    finished = sum(_progress(store, experiment, n)[0] for n in names.values())
    log.warning(
        "%s: running the plan's %d trials again under their journals' names: %d finished (they only report "
        "their records), %d started (they go on from their last checkpoint), %d new",
        store.uri(experiment),
        len(trials),
        finished,
        len(names) - finished,
        len(trials) - len(names),
    )
    return names


def _progress(store: Store, experiment: str, name: str) -> tuple[bool, bool]:
    """How far a trial's journal got: finished, checkpointed. Of a trial met twice (under two
    Tune trial ids), the one furthest on is the one to go on with."""
    journal = f"{experiment}/{JOURNAL}/{name}"
    return store.exists(f"{journal}/{DONE}"), store.exists(f"{journal}/{LATEST}")
