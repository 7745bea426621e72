"""A sweep's progress while it runs, for the Ray dashboard and the job's log.

Ray's dashboard has had no Tune tab since Ray 2.0, so the driver exports its own Ray metrics,
which reach Prometheus (and the dashboard's Metrics tab, with Grafana) like Ray's own:

    ray_pwlock_trials{experiment, state}   trials by state: pending, running, done, failed
    ray_pwlock_gpu_hours{experiment}       sum over trials of wall time × GPUs per trial
    ray_pwlock_trial_hours{experiment}     sum over trials of wall time

and logs a trial's name when it finishes, and a one-line summary every `every_s` seconds
(PWLOCK_PROGRESS_EVERY_S, default 60). Its last figure, the trials waiting for resources, is the
pending ones: pwlock sets no concurrency limit, so Tune starts a trial as soon as its placement
group fits; on an autoscaling cluster these are the trials that make it add GPU nodes. Wall time
is what this driver saw: after `--resume`, the hours of trials finished by an earlier driver are
not counted again.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from ray.tune import Callback
from ray.util.metrics import Gauge

from pwlock.config import ConfigError

log = logging.getLogger(__name__)

EVERY_ENV = "PWLOCK_PROGRESS_EVERY_S"
DEFAULT_EVERY_S = 60.0
STATES = ("pending", "running", "done", "failed")


def every_s_from_env() -> float:
    raw = os.environ.get(EVERY_ENV)
    if raw is None:
        return DEFAULT_EVERY_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also refuses nan
        raise ConfigError(
            f"{EVERY_ENV}={raw!r}: expected a number of seconds >= 0 (how often the sweep logs its progress)"
        )
    return value


class SweepProgress(Callback):
    """Tune callback: trial counts and GPU-hours as Ray gauges, and progress lines in the log."""

    def __init__(self, experiment: str, every_s: float | None = None):
        self.experiment = experiment
        self._every_s = every_s  # None: PWLOCK_PROGRESS_EVERY_S, read again when a sweep is restored
        self.every_s = every_s_from_env() if every_s is None else every_s
        self._reset()

    def _reset(self) -> None:
        self.counts = dict.fromkeys(STATES, 0)
        self.gpu_hours = self.trial_hours = 0.0
        self._running_since: dict[str, float] = {}  # trial id -> start of its current run
        self._seconds: dict[str, float] = {}  # trial id -> seconds of its finished runs
        self._gpus: dict[str, float] = {}
        self._ended: dict[str, str] = {}  # trial id -> "done" | "failed", as the callbacks said
        self._t0 = time.monotonic()
        self._last_line: float | None = None
        self._last_update = float("-inf")
        self._gauges: tuple[Any, Any, Any] | None = None

    # Tune pickles the run config, callbacks included, with the experiment: a restored sweep
    # starts counting afresh, and gauges (process-local handles) are never pickled.
    def __getstate__(self) -> dict[str, Any]:
        return {"experiment": self.experiment, "every_s": self._every_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def setup(self, **info: Any) -> None:
        self._reset()
        self._gauges = (
            Gauge("pwlock_trials", "pwlock sweep: trials by state", tag_keys=("experiment", "state")),
            Gauge(
                "pwlock_gpu_hours",
                "pwlock sweep: sum over trials of wall time x GPUs per trial",
                tag_keys=("experiment",),
            ),
            Gauge("pwlock_trial_hours", "pwlock sweep: sum over trials of wall time", tag_keys=("experiment",)),
        )

    def on_trial_start(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._running_since[trial.trial_id] = time.monotonic()
        self._gpus[trial.trial_id] = float(trial.placement_group_factory.required_resources.get("GPU", 0.0))
        self._ended.pop(trial.trial_id, None)

    def on_trial_recover(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._stop_clock(trial)  # it failed and will run again: the time it ran counts

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._end(trials, trial, "done")

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._end(trials, trial, "failed")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        # Tune steps many times a second; recounting thousands of trials once a second is enough.
        if time.monotonic() - self._last_update >= 1.0:
            self.update(trials)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.update(trials, line=True)

    def _stop_clock(self, trial) -> None:
        started = self._running_since.pop(trial.trial_id, None)
        if started is not None:
            self._seconds[trial.trial_id] = self._seconds.get(trial.trial_id, 0.0) + time.monotonic() - started

    def _end(self, trials: list, trial, state: str) -> None:
        self._stop_clock(trial)
        self._ended[trial.trial_id] = state
        self.update(trials, line=False)
        best = (trial.last_result or {}).get("best")
        log.log(
            logging.INFO if state == "done" else logging.WARNING,
            "trial %s %s after %.0f s (%d of %d trials done, %d failed)%s",
            trial,
            state,
            self._seconds.get(trial.trial_id, 0.0),
            self.counts["done"],
            len(trials),
            self.counts["failed"],
            "" if best is None else f": best correctness {best:.3f}",
        )

    def _state(self, trial) -> str:
        ended = self._ended.get(trial.trial_id)
        if ended:  # Tune sets a completed trial's status only after calling on_trial_complete
            return ended
        status = trial.status
        if status == "TERMINATED":
            return "done"
        if status == "ERROR":
            return "failed"
        if status == "RUNNING" or trial.trial_id in self._running_since:
            return "running"
        return "pending"  # PENDING, or PAUSED until it runs again

    def update(self, trials: list, line: bool | None = None) -> None:
        """Recount, set the gauges, and log the summary line when it is due (or `line`)."""
        now = self._last_update = time.monotonic()
        self.counts = dict.fromkeys(STATES, 0)
        for trial in trials:
            self.counts[self._state(trial)] += 1
        gpu_s = trial_s = 0.0
        for trial_id in set(self._seconds) | set(self._running_since):
            seconds = self._seconds.get(trial_id, 0.0)
            if trial_id in self._running_since:
                seconds += now - self._running_since[trial_id]
            trial_s += seconds
            gpu_s += seconds * self._gpus.get(trial_id, 0.0)
        self.gpu_hours, self.trial_hours = gpu_s / 3600, trial_s / 3600
        if self._gauges is not None:
            trials_gauge, gpu_gauge, trial_gauge = self._gauges
            for state, n in self.counts.items():
                trials_gauge.set(n, tags={"experiment": self.experiment, "state": state})
            gpu_gauge.set(self.gpu_hours, tags={"experiment": self.experiment})
            trial_gauge.set(self.trial_hours, tags={"experiment": self.experiment})
        if line is None:
            line = self._last_line is None or now - self._last_line >= self.every_s
        if line:
            self._last_line = now
            log.info("%s", self.summary())

    def summary(self) -> str:
        c = self.counts
        return (
            f"progress {self.experiment}: {c['done']} of {sum(c.values())} trials done, {c['running']} running, "
            f"{c['pending']} pending, {c['failed']} failed; {self.gpu_hours:.2f} GPU-hours, "
            f"{self.trial_hours:.2f} trial-hours, {time.monotonic() - self._t0:.0f} s; "
            f"{c['pending']} waiting for resources"
        )
