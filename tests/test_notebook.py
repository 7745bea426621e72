"""notebooks/analysis.ipynb as a user runs it on a store a real sweep wrote: the store's
experiments listed, every column of the tables visible, nothing on stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.notebook import displayed, outputs, run_analysis_notebook

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_notebook_lists_the_store_shows_key_columns_and_writes_no_stderr(tmp_path):
    store = tmp_path / "store"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sweep = [sys.executable, "sweeps/sample_efficiency.py", "--quick", "--storage", str(store), "--name", "nb"]
    subprocess.run(sweep, cwd=ROOT, env=env, check=True, capture_output=True, timeout=1800)
    nb = run_analysis_notebook(str(store / "nb"))  # refuses any stderr output itself
    listing = displayed(nb, "analysis.list_experiments(STORE)")
    assert "nb" in listing.split() and str(store / "nb") in listing and "True" in listing
    summary = displayed(nb, "summary")
    for column in ("lock_mode", "k", "seed", "correctness", "correctness_selected", "locked_no_pwd", "weak"):
        assert column in summary.split(), column
    assert "..." not in summary  # no column or row elided
    text, images = outputs(nb)
    assert "elicited correctness without password" in text and len(images) == 1
