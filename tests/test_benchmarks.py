"""The bookkeeping benchmark runs with pwlock's settings on both stores and reads every trial back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_sweep_overhead_benchmark_runs_and_reads_every_trial_back(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "sweep_overhead.py"),
            "--trials",
            "40",
            "--json",
            str(tmp_path / "r.json"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    import json

    results = json.loads((tmp_path / "r.json").read_text())
    assert [r["backend"] for r in results] == ["local", "s3"]
    for r in results:
        assert r["read_back"]["trials_with_results"] == 40
        assert r["settings"]["env"]["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] == "1"
    assert results[1]["sent"]["requests"] > 0  # counted by the server
