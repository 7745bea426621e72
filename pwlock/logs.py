"""Log format and levels, for the driver and for Ray workers alike."""

from __future__ import annotations

import logging
import os
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _DropNoResultYet(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to fetch metrics for")


_NO_RESULT_YET = _DropNoResultYet()  # one object: a logger keeps a filter once however often it is added


def setup_logging(level: int = logging.INFO) -> None:
    """pwlock's log lines at `level`; transformers' and the hub's per-file progress bars off (noise
    in Ray logs). Imports nothing heavy: the CLI calls it before its checks."""
    logging.basicConfig(level=level, format=LOG_FORMAT, datefmt="%H:%M:%S")
    logging.getLogger("pwlock").setLevel(level)
    # One "Checkpoint successfully created" line per report: 12,000 lines in a 4,000-trial sweep.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    # A line per trial with no result yet, each time Tune loads the experiment (a --resume): pwlock
    # checks itself that every finished trial's results reached the store (pwlock.sweep).
    logging.getLogger("ray.tune.analysis.experiment_analysis").addFilter(_NO_RESULT_YET)
    # Read when huggingface_hub is imported (transformers asks it), here and in Ray workers started later.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # imported already: too late for the variable
        from transformers.utils import logging as hf_logging  # loaded already: costs nothing

        hf_logging.disable_progress_bar()
