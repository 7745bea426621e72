"""Ctrl-C mid-sweep: one message saying what was kept and the command that goes on, a nonzero exit
and no traceback; then that very command finishes every trial exactly once. And the experiment, read
with Tune's own APIs where pwlock's sweep cannot be imported, has its trials' names and baselines.
Real local Ray, the real CLI in subprocesses, a local store."""

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


@pytest.fixture(scope="module")
def stopped_then_resumed(tmp_path_factory) -> dict:
    """A sweep stopped by Ctrl-C once a trial has checkpointed, then the command it printed: what
    each printed, and what the store held in between."""
    tmp = tmp_path_factory.mktemp("interrupt")
    config = tmp / "slow.yaml"
    config.write_text(yaml.safe_dump(SLOW))
    storage, name = tmp / "store", "interrupted"
    exp = storage / name
    driver = _start("--config", str(config), "--storage", str(storage), "--name", name)
    try:
        _wait("a trial's checkpoint", lambda: list(exp.glob(f"{JOURNAL}/*/{LATEST}")), timeout=600, proc=driver)
        os.killpg(driver.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the driver and all it started
        out, _ = driver.communicate(timeout=300)
    finally:
        driver.kill()
    print(out[-4000:])
    lines = out.splitlines()
    message = [line for line in lines if line.startswith("SIGINT: experiment")]
    command = lines[lines.index(message[0]) + 1].strip() if message else ""
    stopped = {
        "done": {j.parent.name for j in exp.glob(f"{JOURNAL}/*/{DONE}")},
        "summary": (exp / analysis.SUMMARY).exists(),
    }
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    again = subprocess.run(command, shell=True, env=env, capture_output=True, text=True, timeout=900)
    print(again.stdout[-2000:], again.stderr[-4000:])
    return {
        "storage": storage, "name": name, "exp": exp, "returncode": driver.returncode, "out": out,
        "message": message, "command": command, "stopped": stopped, "again": again,
    }  # fmt: skip


@pytest.mark.slow
def test_ctrl_c_says_what_was_kept_and_its_resume_command_finishes_every_trial_once(stopped_then_resumed):
    r = stopped_then_resumed
    name, exp = r["name"], r["exp"]
    assert r["returncode"] == 128 + signal.SIGINT
    assert "Traceback" not in r["out"] and "Tuner.restore" not in r["out"]
    assert "╭" not in r["out"] and "Trial status" not in r["out"]  # no Tune tables: pwlock.progress's lines
    (message,) = r["message"]
    assert f"experiment {name} stopped: " in message and f" of {TRIALS} trials done, " in message
    assert r["command"].startswith("python ") and f"--resume --name {name} --storage {r['storage']}" in r["command"]
    done_before = r["stopped"]["done"]
    assert len(done_before) < TRIALS and not r["stopped"]["summary"]  # nothing that claims to be final

    assert r["again"].returncode == 0
    journals = list((exp / JOURNAL).iterdir())
    assert len(journals) == TRIALS
    for j in journals:
        done = json.loads((j / DONE).read_text())["records"]
        if j.name in done_before:  # finished before the stop: never trained again
            assert len(attempt_records([p.name for p in j.iterdir()])) == 1
        rows = [json.loads(line) for line in (exp / j.name / "result.json").read_text().splitlines()]
        assert Counter(r["candidate"] for r in rows) == {r["candidate"]: 1 for r in done}, j.name
    assert len(analysis.load_summary(str(exp))) == TRIALS


# Tune's own APIs on the experiment, where pwlock's sweep, trial and plan cannot be imported.
TUNE_ONLY = """
import json, sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.startswith(("pwlock.sweep", "pwlock.trial", "pwlock.plan")):
            raise ModuleNotFoundError(name + " cannot be imported here")

sys.meta_path.insert(0, Blocked())
import ray
from ray import tune

def elicitation_trial(config):  # Tune.restore finds the experiment's trainable by its name
    raise RuntimeError("never run: the experiment is finished")

path = sys.argv[1]
frames = {"analysis": tune.ExperimentAnalysis(path).dataframe()}
ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
frames["restore"] = tune.Tuner.restore(path, elicitation_trial).get_results().get_dataframe()
print(json.dumps({k: df.to_dict("records") for k, df in frames.items()}, default=str))
print(json.dumps(sorted(m for m in sys.modules if m.startswith("pwlock"))))
"""


@pytest.mark.slow
def test_tune_alone_loads_the_experiment_with_names_and_baselines(stopped_then_resumed):
    exp = stopped_then_resumed["exp"]
    assert stopped_then_resumed["again"].returncode == 0
    out = subprocess.run([sys.executable, "-c", TUNE_ONLY, str(exp)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    frames, modules = map(json.loads, out.stdout.splitlines()[-2:])
    assert not {"pwlock.sweep", "pwlock.trial", "pwlock.plan"} & set(modules)
    upstream = json.loads((exp / analysis.UPSTREAM_FILE).read_text())
    journals = {j.name for j in (exp / JOURNAL).iterdir()}
    for rows in frames.values():
        assert {r["trial_id"] for r in rows} and len(rows) == TRIALS
        for r in rows:
            assert f"{r['config/run/name']}-{r['trial_id']}" in journals  # each trial under its journal's name
            for key in analysis.UPSTREAM:  # its lock's baselines, as upstream.json has them
                assert r[f"config/run/{key}"] == upstream[r["config/run/lock_mode"]][key]
