"""A 30 s S3 outage while trials run costs no trial a failure: pwlock's store calls retry for
store.retry_s, and the filesystem Tune hands its trial workers keeps its own retries. Real SeaweedFS,
real local Ray, the real CLI."""

from __future__ import annotations

import time
import uuid

import pytest
import yaml

from tests.test_fault_tolerance import STUDY, TRIALS, _check_results, _finish, _journal, _launch, _wait


@pytest.mark.slow
def test_a_30_s_outage_costs_no_trial_a_failure(s3_env, tmp_path):
    config = tmp_path / "faults.yaml"
    config.write_text(yaml.safe_dump(STUDY))
    server, experiment = s3_env, "outage"
    prefix = f"outage-{uuid.uuid4().hex[:6]}"
    storage, exp, proc = _launch(server, prefix, config, experiment)
    _wait("trials to start", lambda: any(e["starts"] for e in _journal(server, exp).values()), proc=proc)
    server.stop()
    time.sleep(30)
    server.start()
    out = _finish(proc, timeout=900)
    journal = _check_results(server, prefix, experiment)
    assert len(journal) == TRIALS
    attempts = {t: len(e["starts"]) for t, e in journal.items()}
    print(attempts)
    assert attempts == {t: 1 for t in journal}, out[-5000:]  # no trial restarted


@pytest.mark.slow
def test_a_store_that_stays_down_stops_the_sweep_with_pwlocks_message(s3_env, tmp_path):
    """The server dies for good while trials run: the driver stops the sweep once a trial has failed
    and the store does not answer, naming the store and the --resume command; it comes back, and
    that command finishes the experiment."""
    study = {**STUDY, "store": {"retry_s": 10}}
    config = tmp_path / "faults.yaml"
    config.write_text(yaml.safe_dump(study))
    server, experiment = s3_env, "gone"
    prefix = f"gone-{uuid.uuid4().hex[:6]}"
    storage, exp, proc = _launch(server, prefix, config, experiment)
    _wait("trials to start", lambda: any(e["starts"] for e in _journal(server, exp).values()), proc=proc)
    server.stop()
    t0 = time.monotonic()
    try:
        out, _ = proc.communicate(timeout=900)
    finally:
        server.start()
    print(f"the sweep stopped {time.monotonic() - t0:.0f} s after the store went down")
    print(out[-3000:])
    assert proc.returncode == 2
    error = out[out.rindex("error: store ") :]
    assert f"store {storage}" in error and "The sweep stopped: its store cannot be used" in error
    assert f"--resume --name {experiment} --storage {storage}" in error
    assert "Traceback" not in error
    _finish(_start_resume(storage, experiment), timeout=900)
    journal = _check_results(server, prefix, experiment)
    assert len(journal) == TRIALS and all(len(e["done"]) == 1 for e in journal.values())


def _start_resume(storage: str, experiment: str):
    from tests.test_fault_tolerance import _start

    return _start("--resume", "--name", experiment, "--storage", storage)
