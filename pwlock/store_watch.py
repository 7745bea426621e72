"""A sweep stops when its store is gone, instead of letting every trial fail its retries one by one.

Each trial's store calls already retry for `store.retry_s`; a trial that fails anyway may have met a
store that stays down. So on every trial failure the driver probes the store (a few seconds); if
the probe fails too, it stops the sweep with the store's error and the `--resume` command that
finishes it once the store is back. Without this, a store killed for good took each trial through
all its `max_failures` restarts, each a full `retry_s` long, and ended in a raw traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.tune import Callback

from pwlock.store import StoreError, StoreSpec, open_store

log = logging.getLogger(__name__)


class StoreDown(StoreError):
    """The store stopped answering during a sweep."""


class StoreWatch(Callback):
    """Tune callback: after a trial failure, probe the store; stop the sweep if it is gone."""

    def __init__(self, store: StoreSpec, experiment: str, probe_s: float = 5.0):
        self.store, self.experiment, self.probe_s = store, experiment, probe_s

    def _probe(self, trial: Any) -> None:
        store = open_store(self.store)
        try:
            store.check(timeout_s=self.probe_s)
        except StoreError as e:
            log.error("trial %s failed and the store does not answer: stopping the sweep", trial)
            raise StoreDown(
                f"{e}\nThe sweep stopped: its store cannot be used. Once it can (the server back, space freed), "
                f"finish the experiment with the same command and --resume --name {self.experiment} "
                f"--storage {store.url}"
            ) from None

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._probe(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._probe(trial)
