"""pwlock.progress on a real local Ray and real Tune trials: counts by state, GPU-hours, the log
lines, and the gauges as Prometheus scrapes them from Ray's metrics export port."""

from __future__ import annotations

import logging
import pickle
import sys
import time

import pytest

from pwlock import runtime  # noqa: F401  (Ray's local defaults, before ray is imported)
from pwlock.config import ConfigError
from pwlock.progress import DEFAULT_EVERY_S, EVERY_ENV, SweepProgress
from pwlock.s3server import free_port
from tests.prometheus import gauge, scrape


def _name(trial) -> str:
    return f"x={trial.config['x']}"


def _trainable(config):
    from ray import tune

    time.sleep(0.3)
    if config["x"] == 3:
        raise RuntimeError("this trial fails on purpose")
    tune.report({"best": config["x"] / 10})


@pytest.mark.slow
def test_progress_on_real_tune_trials(tmp_path, monkeypatch, caplog):
    import ray
    from ray import cloudpickle, tune

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    monkeypatch.setenv("RAY_metrics_report_interval_ms", "500")  # the driver reports its gauges this often
    port = free_port()
    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _metrics_export_port=port,
        logging_level=logging.WARNING,
    )
    try:
        early = SweepProgress("before-trials")
        early.before_trials(7)  # as a sweep does while its upstream artifacts build: no Tune run yet
        every = SweepProgress("every-step", every_s=0)
        hourly = SweepProgress("hourly", every_s=3600)
        caplog.set_level(logging.INFO, logger="pwlock.progress")
        grid = tune.Tuner(
            tune.with_resources(_trainable, {"cpu": 1, "gpu": 1}),  # GPUs Ray counts; no CUDA needed
            param_space={"x": tune.grid_search([0, 1, 2, 3])},
            tune_config=tune.TuneConfig(trial_name_creator=_name, trial_dirname_creator=_name),
            run_config=tune.RunConfig(
                name="progress",
                storage_path=str(tmp_path),
                verbose=0,
                callbacks=[every, hourly],
                failure_config=tune.FailureConfig(max_failures=1),
            ),
        ).fit()
        assert sum(r.error is not None for r in grid) == 1

        for cb in (every, hourly):
            assert cb.counts == {"pending": 0, "running": 0, "done": 3, "failed": 1}
            # Every trial ran on one GPU: GPU-hours are trial-hours, and the failed trial's two
            # attempts count too.
            assert cb.trial_hours > 0 and cb.gpu_hours == pytest.approx(cb.trial_hours)
        messages = [r.getMessage() for r in caplog.records]
        finished = [m for m in messages if m.startswith("trial ") and (" done after " in m or " failed after " in m)]
        assert len(finished) == 2 * 4  # each callback names each trial once, as it ends
        # x=3's first failure is a restart, said as one by each callback, and counted at the end.
        restarts = [m for m in messages if " failed and starts again from its last checkpoint (restart 1)" in m]
        assert len(restarts) == 2 and all(m.startswith("trial x=3 ") for m in restarts)
        assert sum(m.startswith("1 trials failed and started again from their last checkpoint") for m in messages) == 2
        for x in range(3):
            assert (
                sum(f"x={x}" in m and " done after " in m and f"best correctness {x / 10:.3f}" in m for m in finished)
                == 2
            )
        failed = [r for r in caplog.records if " failed after " in r.getMessage()]
        assert len(failed) == 2 and all(r.levelno == logging.WARNING and "x=3" in r.getMessage() for r in failed)
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress ")]
        hourly_lines = [m for m in lines if m.startswith("progress hourly:")]
        assert len(hourly_lines) == 2  # the first step, then the end: nothing in between within the hour
        assert hourly_lines[-1].startswith("progress hourly: 3 of 4 trials done, 0 running, 0 pending, 1 failed; ")
        assert "GPU-hours" in hourly_lines[-1] and "trial-hours" in hourly_lines[-1]
        assert len(lines) - len(hourly_lines) > 2  # every step logs its line with every_s=0
        assert lines[0].endswith(" waiting for resources") and "0 of 4 trials done" in lines[0]

        # The gauges, scraped as Prometheus would from the node's metrics export port, reach the
        # callbacks' final state within a few report intervals.
        def expected() -> dict:
            out = {}
            for cb in (every, hourly, early):
                for state, n in cb.counts.items():
                    out[("ray_pwlock_trials", frozenset({"experiment": cb.experiment, "state": state}.items()))] = n
                out[("ray_pwlock_gpu_hours", frozenset({"experiment": cb.experiment}.items()))] = cb.gpu_hours
                out[("ray_pwlock_trial_hours", frozenset({"experiment": cb.experiment}.items()))] = cb.trial_hours
            return out

        deadline, metrics = time.monotonic() + 30, {}
        while time.monotonic() < deadline:
            metrics = scrape(port)
            if all(metrics.get(key) == pytest.approx(value) for key, value in expected().items()):
                break
            time.sleep(0.5)
        assert metrics == pytest.approx(expected())
        assert gauge(metrics, "ray_pwlock_trials", experiment="hourly", state="failed") == 1
        assert gauge(metrics, "ray_pwlock_trials", experiment="before-trials", state="pending") == 7
    finally:
        ray.shutdown()


def test_restored_callback_starts_afresh(monkeypatch):
    """Tune pickles callbacks with the experiment; `--resume` gets one that counts anew."""
    monkeypatch.delenv(EVERY_ENV, raising=False)
    cb = SweepProgress("exp")
    cb.counts["done"], cb.gpu_hours = 7, 1.5
    restored = pickle.loads(pickle.dumps(cb))
    assert restored.experiment == "exp" and restored.every_s == DEFAULT_EVERY_S
    assert restored.counts == {"pending": 0, "running": 0, "done": 0, "failed": 0} and restored.gpu_hours == 0
    monkeypatch.setenv(EVERY_ENV, "5")
    assert pickle.loads(pickle.dumps(cb)).every_s == 5  # the setting of the resuming driver
    assert pickle.loads(pickle.dumps(SweepProgress("exp", every_s=1))).every_s == 1


@pytest.mark.parametrize("value", ["soon", "-1", "", "nan"])
def test_bad_interval_is_refused_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv(EVERY_ENV, value)
    with pytest.raises(ConfigError, match=f"{EVERY_ENV}=.*expected a number of seconds"):
        SweepProgress("exp")
