"""A sweep stops when its store is gone, instead of letting every trial fail its retries one by one.

Each trial's store calls already retry for `store.retry_s`; a trial that fails anyway may have met a
store that stays down. So on every trial failure the driver probes the store, retrying for
`store.retry_s` as every store call does but at most PROBE_MAX_S (a trial that failed for another
reason, a lost worker, during a blip of the store must not stop the sweep; a dead store must stop it
within `retry_s` + 60 s); if the probe fails too, it stops the sweep with
the store's error and the `--resume` command that finishes it once the store is back. Without this,
a store killed for good took each trial through all its `max_failures` restarts, each a full
`retry_s` long, and ended in a raw traceback.

The probe's S3 client is made when the sweep starts: made during an outage, a client waits for
every request in flight in the driver (Tune's state uploads, retrying) to end first.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.tune import Callback

from pwlock.store import Store, StoreError, StoreSpec, open_store

log = logging.getLogger(__name__)


PROBE_MAX_S = 30.0


class StoreDown(StoreError):
    """The store stopped answering during a sweep."""


class StoreWatch(Callback):
    """Tune callback: after a trial failure, probe the store; stop the sweep if it is gone."""

    def __init__(self, store: StoreSpec, experiment: str, probe_s: float | None = None):
        self.store, self.experiment = store, experiment
        self.probe_s = min(store.retry_s, PROBE_MAX_S) if probe_s is None else probe_s
        self._stores: tuple[Store, Store] | None = None

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks with the run config
        return {**self.__dict__, "_stores": None}

    def setup(self, **info: Any) -> None:
        self._clients()

    def _clients(self) -> tuple[Store, Store]:
        if self._stores is None:
            store = open_store(self.store)
            self._stores = store, store.quick(self.probe_s)
        return self._stores

    def _probe(self, trial: Any) -> None:
        store, quick = self._clients()
        try:
            store.check(timeout_s=self.probe_s, quick=quick)
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
