"""Ctrl-C mid-sweep: one message saying what was kept and the command that goes on, a nonzero exit
and no traceback; then that very command finishes every trial exactly once. Real local Ray, the
real CLI in subprocesses, a local store."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from pwlock import analysis
from pwlock.trial import DONE, JOURNAL, LATEST, attempt_records
from tests.test_fault_tolerance import STUDY, _start, _wait

# Two trials, each long enough (128 steps) to be stopped mid-way once one has checkpointed.
SLOW = copy.deepcopy(STUDY)
SLOW["elicit"].update(ks=[8, 32], seeds=[0], sample_budgets=[256, 1024])
TRIALS = 2


@pytest.mark.slow
def test_ctrl_c_says_what_was_kept_and_its_resume_command_finishes_every_trial_once(tmp_path):
    config = tmp_path / "slow.yaml"
    config.write_text(yaml.safe_dump(SLOW))
    storage, name = tmp_path / "store", "interrupted"
    exp = storage / name
    driver = _start("--config", str(config), "--storage", str(storage), "--name", name)
    try:
        _wait("a trial's checkpoint", lambda: list(exp.glob(f"{JOURNAL}/*/{LATEST}")), timeout=600, proc=driver)
        os.killpg(driver.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the driver and all it started
        out, _ = driver.communicate(timeout=300)
    finally:
        driver.kill()
    print(out[-4000:])
    assert driver.returncode == 128 + signal.SIGINT
    assert "Traceback" not in out and "Tuner.restore" not in out
    (message,) = [line for line in out.splitlines() if line.startswith("SIGINT: experiment")]
    assert f"experiment {name} stopped: " in message and f" of {TRIALS} trials done, " in message
    command = out.splitlines()[out.splitlines().index(message) + 1].strip()
    assert command.startswith("python ") and f"--resume --name {name} --storage {storage}" in command
    done_before = {j.parent.name for j in exp.glob(f"{JOURNAL}/*/{DONE}")}
    assert len(done_before) < TRIALS and not (exp / analysis.SUMMARY).exists()  # nothing that claims to be final

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    again = subprocess.run(command, shell=True, env=env, capture_output=True, text=True, timeout=900)
    print(again.stdout[-2000:], again.stderr[-4000:])
    assert again.returncode == 0
    journals = list((exp / JOURNAL).iterdir())
    assert len(journals) == TRIALS
    for j in journals:
        done = json.loads((j / DONE).read_text())["records"]
        if j.name in done_before:  # finished before the stop: never trained again
            assert len(attempt_records([p.name for p in j.iterdir()])) == 1
        rows = [json.loads(line) for line in (exp / j.name / "result.json").read_text().splitlines()]
        assert Counter(r["candidate"] for r in rows) == {r["candidate"]: 1 for r in done}, j.name
    assert len(analysis.load_summary(str(exp))) == TRIALS
