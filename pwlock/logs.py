"""Log format and levels, for the driver and for Ray workers alike."""

from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: int = logging.INFO) -> None:
    """pwlock's log lines at `level`; transformers' per-file progress bars off (noise in Ray logs)."""
    from transformers.utils import logging as hf_logging  # seconds to import: not before the CLI answers --help

    logging.basicConfig(level=level, format=LOG_FORMAT, datefmt="%H:%M:%S")
    logging.getLogger("pwlock").setLevel(level)
    # One "Checkpoint successfully created" line per report: 12,000 lines in a 4,000-trial sweep.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    hf_logging.disable_progress_bar()
