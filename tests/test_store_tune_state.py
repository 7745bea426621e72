"""`--resume` when Tune's experiment state is cut off or missing: the trial list is rebuilt from the
plan and the trials' journals (pwlock.tune_state); finished trials train nothing, the rest finish.
Real local Ray, the real CLI in subprocesses, a local store."""

from __future__ import annotations

import fnmatch
import json
import pickle

import psutil
import pytest
import yaml

from pwlock import tune_state
from pwlock.store import open_store
from pwlock.trial import DONE, JOURNAL, attempt_records
from tests.test_fault_tolerance import (
    STUDY,
    TRIALS,
    _finish,
    _session_processes,
    _start,
    _wait,
    check_local_results,
)


def test_a_cut_off_or_missing_state_is_named(tmp_path):
    store, exp = open_store(tmp_path), tmp_path / "x"
    exp.mkdir()
    assert tune_state.problem(store, "x") == "tuner.pkl is missing"
    (exp / "tuner.pkl").write_bytes(pickle.dumps({"a": 1}))
    assert tune_state.problem(store, "x") == "no experiment_state-*.json"
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": []}))
    assert tune_state.problem(store, "x") is None
    (exp / "experiment_state-2026-01-02_00-00-00.json").write_text('{"trial_data": [["{\\"a')
    assert "experiment_state-2026-01-02_00-00-00.json is not valid JSON" in tune_state.problem(store, "x")
    (exp / "tuner.pkl").write_bytes(pickle.dumps({"a": 1})[:5])
    assert tune_state.problem(store, "x").startswith("tuner.pkl cannot be read")


@pytest.mark.slow
def test_resume_rebuilds_the_trials_when_tunes_state_is_cut_off(tmp_path):
    config = tmp_path / "faults.yaml"
    config.write_text(yaml.safe_dump(STUDY))
    storage, name = tmp_path / "store", "cut-off"
    exp = storage / name
    driver = _start("--config", str(config), "--storage", str(storage), "--name", name)

    def some_done() -> set[str]:
        done = {p.parent.name for p in exp.glob(f"{JOURNAL}/*/{DONE}")}
        return done if 0 < len(done) < TRIALS and list(exp.glob(tune_state.STATE)) else set()

    try:
        _wait("a finished trial", some_done, timeout=600, proc=driver)
    finally:  # the driver dies with everything it started, its local Ray included
        for p in [psutil.Process(driver.pid), *_session_processes(driver.pid)]:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        driver.wait(30)
    _wait("the driver's processes to exit", lambda: not _session_processes(driver.pid), timeout=60)
    done_before = {p.parent.name for p in exp.glob(f"{JOURNAL}/*/{DONE}")}
    assert 0 < len(done_before) < TRIALS
    # Tune's state as a full disk leaves it: cut off mid-JSON.
    newest = max(p for p in exp.iterdir() if fnmatch.fnmatch(p.name, tune_state.STATE))
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])

    out = _finish(_start("--resume", "--name", name, "--storage", str(storage)), timeout=900)
    print(out[-3000:])
    assert f"Tune's experiment state cannot be read ({newest.name} is not valid JSON" in out
    journals = {j.name: j for j in (exp / JOURNAL).iterdir()}
    assert len(journals) == TRIALS  # every trial under its earlier name: none started anew
    for trial, j in journals.items():
        starts = attempt_records([p.name for p in j.iterdir()])
        assert (j / DONE).is_file() and (len(starts) == 1 or trial not in done_before), (trial, starts)
    check_local_results(exp)  # each candidate once, in result.json and summary.csv
