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
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import ray
from ray.tune import Callback
from ray.util.metrics import Gauge

from pwlock.config import ConfigError

log = logging.getLogger(__name__)

EVERY_ENV = "PWLOCK_PROGRESS_EVERY_S"
DEFAULT_EVERY_S = 60.0
STATES = ("pending", "running", "done", "failed")


@dataclass(frozen=True)
class Stop:
    """A sweep stopped by a signal: which one, and its trials by state at that moment."""

    signal: int
    counts: dict[str, int]


_stop: Stop | None = None  # signals are per process: so is the record of the one that stopped its sweep


def stopped() -> Stop | None:
    """The signal (Ctrl-C, a job stop) that stopped this process's last sweep, if one did."""
    return _stop


# What Tune logs once stopped that is wrong or noise for a pwlock sweep (its Tuner.restore advice
# instead of --resume, trials not run said to be missing): the driver reports the stop itself.
_AFTER_STOP = ("Stop signal received", "Experiment has been interrupted", "Trials did not complete", "Failed to fetch")


class _QuietAfterStop(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _stop is None or not record.getMessage().startswith(_AFTER_STOP)


_QUIET = _QuietAfterStop()


def quiet_tune() -> dict[str, Any]:
    """Tune's own output in a pwlock sweep: its errors only. Its tables (~36 lines per trial: 140,000
    for the paper's 4,000 trials) give way to SweepProgress's lines, and its start-up box too, which
    only its older reporter (RAY_AIR_NEW_OUTPUT=0) leaves out. Sets that in this (driver) process;
    returns the tune.RunConfig keyword arguments that go with it."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    return {"verbose": 0}


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
        self.restarts: dict[str, int] = {}  # trial name -> times it failed and started again
        self._t0 = time.monotonic()
        self._last_line: float | None = None
        self._last_update = float("-inf")
        self._gauges: tuple[Any, Any, Any] | None = None
        self._trials: list = []
        self._before: threading.Event | None = getattr(self, "_before", None)
        self._restore: Any = lambda: None

    # Tune pickles the run config, callbacks included, with the experiment: a restored sweep
    # starts counting afresh, and gauges (process-local handles) are never pickled.
    def __getstate__(self) -> dict[str, Any]:
        return {"experiment": self.experiment, "every_s": self._every_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def before_trials(self, total: int) -> None:
        """The gauges from a sweep's start, while its upstream artifacts build (minutes to hours): all
        `total` trials pending, no hours yet, until Tune's run sets them from its trials (`setup`).
        Ray drops a gauge's value seconds after it was last set (measured: 2 s), so a thread sets
        them again every second meanwhile."""
        self._gauges = self._make_gauges()
        self.counts = {**dict.fromkeys(STATES, 0), "pending": total}
        self._set_gauges()
        stop = self._before = threading.Event()

        def refresh() -> None:
            while not stop.wait(1.0) and ray.is_initialized():  # no Ray, no gauges: the sweep ended before Tune
                self._set_gauges()

        threading.Thread(target=refresh, name="pwlock-gauges", daemon=True).start()

    def setup(self, **info: Any) -> None:
        if self._before is not None:
            self._before.set()  # Tune's steps set the gauges from now on
        self._reset()
        self._gauges = self._make_gauges()
        self._catch_stops()

    @staticmethod
    def _make_gauges() -> tuple[Any, Any, Any]:
        return (
            Gauge("pwlock_trials", "pwlock sweep: trials by state", tag_keys=("experiment", "state")),
            Gauge(
                "pwlock_gpu_hours",
                "pwlock sweep: sum over trials of wall time x GPUs per trial",
                tag_keys=("experiment",),
            ),
            Gauge("pwlock_trial_hours", "pwlock sweep: sum over trials of wall time", tag_keys=("experiment",)),
        )

    def _catch_stops(self) -> None:
        """Ctrl-C (SIGINT) and SIGTERM (a job stop, a preempted driver) both stop the sweep the way
        Tune stops on SIGINT: one last snapshot of its state, the trials ended where they are (each
        keeps its last checkpoint). The stop is noted with the counts of that moment, since Tune
        marks every trial it stops as terminated, and the driver reports it (pwlock.sweep). A second
        signal stops at once. Called in `setup`, after Tune installed its SIGINT handler."""
        global _stop
        _stop = None
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers; Tune then sets none either
        tune_stop, term = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)

        def restore() -> None:  # the handlers as they were (Tune's and Ray's) where they are still ours
            for signum, handler in ((signal.SIGINT, tune_stop), (signal.SIGTERM, term)):
                if signal.getsignal(signum) is stop:
                    signal.signal(signum, handler)

        def stop(signum: int, frame: Any) -> None:
            global _stop
            _stop = Stop(signum, self._count(self._trials))
            restore()
            log.warning(
                "%s: stopping the sweep: Tune saves its state and the trials stop at their last "
                "checkpoint (%s again to stop at once)",
                signal.Signals(signum).name,
                "Ctrl-C" if signum == signal.SIGINT else "the signal",
            )
            if not callable(tune_stop):  # no Python handler was there (SIG_DFL): stop as Python does
                raise KeyboardInterrupt
            tune_stop(signal.SIGINT, frame)  # restores the handler from before Tune: the next one stops at once

        self._restore = restore
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        for name in ("ray.tune.tune", "ray.tune.analysis.experiment_analysis"):
            logging.getLogger(name).addFilter(_QUIET)  # a set: added once however many sweeps

    def on_trial_start(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._running_since[trial.trial_id] = time.monotonic()
        self._gpus[trial.trial_id] = float(trial.placement_group_factory.required_resources.get("GPU", 0.0))
        self._ended.pop(trial.trial_id, None)

    def on_trial_recover(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._stop_clock(trial)  # it failed and will run again: the time it ran counts
        n = self.restarts[str(trial)] = self.restarts.get(str(trial), 0) + 1
        # Tune has logged its error just above; reading it back (trial.get_error) would read the store.
        log.warning("trial %s failed and starts again from its last checkpoint (restart %d)", trial, n)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._end(trials, trial, "done")

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._end(trials, trial, "failed")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._trials = trials  # Tune's own list, for the counts at a stop
        # Tune steps many times a second; recounting thousands of trials once a second is enough.
        if time.monotonic() - self._last_update >= 1.0:
            self.update(trials)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._restore()
        if self.restarts:  # Tune's own tally calls these trials errored, whatever their end
            log.warning(
                "%d trials failed and started again from their last checkpoint (%d restarts); each counts "
                "as done or failed by how its last run ended",
                len(self.restarts),
                sum(self.restarts.values()),
            )
        self.update(trials, line=_stop is None)  # after a stop the driver says where the trials are

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

    def _count(self, trials: list) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for trial in trials:
            counts[self._state(trial)] += 1
        return counts

    def update(self, trials: list, line: bool | None = None) -> None:
        """Recount, set the gauges, and log the summary line when it is due (or `line`)."""
        now = self._last_update = time.monotonic()
        self.counts = dict(_stop.counts) if _stop else self._count(trials)  # stopped: as they were then
        gpu_s = trial_s = 0.0
        for trial_id in set(self._seconds) | set(self._running_since):
            seconds = self._seconds.get(trial_id, 0.0)
            if trial_id in self._running_since:
                seconds += now - self._running_since[trial_id]
            trial_s += seconds
            gpu_s += seconds * self._gpus.get(trial_id, 0.0)
        self.gpu_hours, self.trial_hours = gpu_s / 3600, trial_s / 3600
        self._set_gauges()
        if line is None:
            line = self._last_line is None or now - self._last_line >= self.every_s
        if line:
            self._last_line = now
            log.info("%s", self.summary())

    def _set_gauges(self) -> None:
        gauges = self._gauges  # once: before_trials' thread may run while setup resets
        if gauges is not None:
            trials_gauge, gpu_gauge, trial_gauge = gauges
            for state, n in self.counts.items():
                trials_gauge.set(n, tags={"experiment": self.experiment, "state": state})
            gpu_gauge.set(self.gpu_hours, tags={"experiment": self.experiment})
            trial_gauge.set(self.trial_hours, tags={"experiment": self.experiment})

    def summary(self) -> str:
        c = self.counts
        return (
            f"progress {self.experiment}: {c['done']} of {sum(c.values())} trials done, {c['running']} running, "
            f"{c['pending']} pending, {c['failed']} failed; {self.gpu_hours:.2f} GPU-hours, "
            f"{self.trial_hours:.2f} trial-hours, {time.monotonic() - self._t0:.0f} s; "
            f"{c['pending']} waiting for resources"
        )
