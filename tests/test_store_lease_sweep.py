"""A second driver on a running experiment (`--resume --name X` while X's driver trains) is refused
before any work, naming the driver that holds it; the first finishes with every result exactly once.
Real local Ray, the real CLI in subprocesses, a local store."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from pwlock import analysis
from pwlock.lease import lease_path
from pwlock.trial import DONE, JOURNAL, attempt_records
from tests.test_fault_tolerance import STUDY, TRIALS, _start, _wait, check_local_results, sweep_command

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_second_driver_is_refused_while_the_first_runs(tmp_path):
    config = tmp_path / "faults.yaml"
    config.write_text(yaml.safe_dump(STUDY))
    storage, name = tmp_path / "store", "one-driver"
    exp = storage / name
    first = _start("--config", str(config), "--storage", str(storage), "--name", name)
    try:
        _wait("trials to start", lambda: list(exp.glob(f"{JOURNAL}/*/start-*.json")), timeout=600, proc=first)
        holder = json.loads((storage / lease_path(name)).read_text())
        # Held still (SIGSTOP) while the second tries, so that a fast first driver cannot finish before
        # the second has started: alive, it holds the experiment all the same.
        first.send_signal(signal.SIGSTOP)
        try:
            second = subprocess.run(
                sweep_command("--resume", "--name", name, "--storage", str(storage)),
                capture_output=True,
                text=True,
                timeout=300,
            )
        finally:
            first.send_signal(signal.SIGCONT)
        print(second.stderr[-2000:])
        assert second.returncode == 2 and "Traceback" not in second.stderr
        error = next(line for line in second.stderr.splitlines() if line.startswith("error:"))
        assert f"experiment {exp} is being run by driver {holder['run'][:12]}" in error
        assert f"pid {first.pid} on" in error and f"since {holder['since']}" in error
        out, _ = first.communicate(timeout=900)
    finally:
        first.kill()
    assert first.returncode == 0, out[-5000:]
    assert not (storage / lease_path(name)).exists()
    journals = [p for p in (exp / JOURNAL).iterdir()]
    assert len(journals) == TRIALS
    for j in journals:  # each trial trained once, by the first driver, and finished
        assert len(attempt_records([p.name for p in j.iterdir()])) == 1 and (j / DONE).is_file()
    check_local_results(exp)
    first_run = json.loads((exp / analysis.TIMINGS).read_text())

    # --resume of the finished experiment: nothing trained again, its timings added to the first run's
    again = subprocess.run(
        sweep_command("--resume", "--name", name, "--storage", str(storage)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-5000:]
    timings = json.loads((exp / analysis.TIMINGS).read_text())
    assert [r["run"] for r in timings["runs"]] == [first_run["run"], timings["run"]] and timings["resume"]
    assert timings["runs"][0]["phases_s"] == first_run["phases_s"]
    for j in (exp / JOURNAL).iterdir():
        assert len(attempt_records([p.name for p in j.iterdir()])) == 1
