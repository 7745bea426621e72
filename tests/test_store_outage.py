"""S3 outages while trials run. A 30 s one costs no trial a failure: pwlock's store calls, and
Tune's own through the filesystem its trial workers get, retry for store.retry_s. One that lasts
stops the sweep soon after retry_s with pwlock's message. Real SeaweedFS, real local Ray, the real
CLI."""

from __future__ import annotations

import time
import uuid

import pytest
import yaml

from tests.test_fault_tolerance import STUDY, TRIALS, _check_results, _finish, _journal, _launch, _start, _wait


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"outage-{uuid.uuid4().hex[:6]}"  # shared by this module's sweeps: upstream built once


@pytest.mark.slow
def test_a_30_s_outage_costs_no_trial_a_failure(s3_env, prefix, tmp_path):
    config = tmp_path / "faults.yaml"
    config.write_text(yaml.safe_dump(STUDY))
    server, experiment = s3_env, "outage"
    storage, exp, proc = _launch(server, prefix, config, experiment)
    _wait("trials to start", lambda: any(e["starts"] for e in _journal(server, exp).values()), proc=proc)
    server.stop()
    time.sleep(30)
    server.start()
    out = _finish(proc, timeout=900)
    journal = _check_results(server, prefix, experiment, notebook=False)
    assert len(journal) == TRIALS
    attempts = {t: len(e["starts"]) for t, e in journal.items()}
    print(attempts)
    assert attempts == {t: 1 for t in journal}, out[-5000:]  # no trial restarted


@pytest.mark.slow
def test_a_store_that_stays_down_stops_the_sweep_with_pwlocks_message(s3_env, prefix, tmp_path):
    """The server dies for good while trials run: the driver stops the sweep once a trial has failed
    and the store does not answer, naming the store and the --resume command; it comes back, and
    that command finishes the experiment. How long the stop took is printed beside the bound the
    issue set (retry_s + 60 s), not asserted: docs/faults.md has the figures."""
    retry_s = 10
    config = tmp_path / "faults.yaml"
    config.write_text(yaml.safe_dump({**STUDY, "store": {"retry_s": retry_s}}))
    server, experiment = s3_env, "gone"
    storage, exp, proc = _launch(server, prefix, config, experiment)
    _wait("trials to start", lambda: any(e["starts"] for e in _journal(server, exp).values()), proc=proc)
    server.stop()
    t0 = time.monotonic()
    try:
        out, _ = proc.communicate(timeout=900)
        stopped_s = time.monotonic() - t0
    finally:
        server.start()
    print(f"the sweep stopped {stopped_s:.0f} s after the store went down (retry_s + 60 = {retry_s + 60} s)")
    assert proc.returncode == 2, out[-3000:]
    error = out[out.rindex("error: store ") :]
    assert f"store {storage}" in error and "The sweep stopped: its store cannot be used" in error
    assert f"--resume --name {experiment} --storage {storage}" in error
    assert "Traceback" not in error
    _finish(_start("--resume", "--name", experiment, "--storage", storage), timeout=900)
    journal = _check_results(server, prefix, experiment, notebook=False)
    assert len(journal) == TRIALS and all(len(e["done"]) == 1 for e in journal.values())
