"""One small real study, end to end: the CLI, local Ray, upstream stages as Ray tasks, Tune
trials, the store, summary.csv and the figure, notebooks/analysis.ipynb on what it wrote; then the
same command again reuses every artifact."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pwlock import analysis
from tests.notebook import displayed, outputs, run_analysis_notebook

ROOT = Path(__file__).resolve().parents[1]

STUDY = {
    "name": "e2e",
    "task": {"name": "function_composition", "n_problems": 2000},
    "model": {"base": "tiny", "tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}},
    "strong": {
        "train": {"optimizer": "adamw", "lr": 3e-3, "batch_size": 64, "epochs": 2},
        "stop_at": 0.99,
        "slot_noise": True,
    },
    "lock": {
        "stop_at": 0.99,
        "sft": {"optimizer": "adamw", "lr": 3e-3, "batch_size": 64, "epochs": 1},
        "scratch": {"optimizer": "adamw", "lr": 3e-3, "batch_size": 64, "epochs": 2},
    },
    "eval": {"max_problems": 200},
    "elicit": {
        "ks": [2, 32],
        "seeds": [0, 1],
        "sample_budgets": [8, 16],
        "train": {"optimizer": "adamw", "lr": 1e-3, "batch_size": 8},
    },
    "ray": {"num_cpus": 2},
    # Locks of 1-2 epochs: the pipeline end to end, not a real lock, so the lock gate is off.
    "guards": {"lock_gate": False},
}


def _run(config: Path, storage: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "sweeps" / "sample_efficiency.py"),
            "--config",
            str(config),
            "--storage",
            str(storage),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_small_study_end_to_end_then_reuse(tmp_path):
    config = tmp_path / "e2e.yaml"
    config.write_text(yaml.safe_dump(STUDY))
    storage = tmp_path / "store"

    first = _run(config, storage, "--name", "first")
    log = first.stdout + first.stderr
    assert "9 upstream artifacts as Ray tasks" in log
    assert "lock audit (greedy correctness, by lock):" in log and "near:moved" in log
    exp = storage / "first"
    audits = {label: u["audit"] for label, u in json.loads((exp / analysis.UPSTREAM_FILE).read_text()).items()}
    assert sorted(audits) == ["scratch", "sft"] and list(audits["sft"])[:3] == ["true", "none", "trained_wrong"]
    summary = pd.read_csv(exp / analysis.SUMMARY)
    assert len(summary) == 2 * 2 * 2  # lock modes × k × seeds
    for col in [
        "task",
        "lock_mode",
        "method",
        "k",
        "seed",
        "correctness",
        "locked_with_pwd",
        "locked_no_pwd",
        "locked_wrong_pwd",
        "weak",
        "strong",
        "strong_model",
        "correctness_selected",
    ]:
        assert col in summary, col
    assert set(summary["lock_mode"]) == {"sft", "scratch"} and set(summary["k"]) == {2, 32}
    assert summary["correctness"].between(0, 1).all() and (summary["strong"] == 1.0).all()
    # k=2 evaluates after 4 and 8 epochs, k=32 after 1 and 2 (sample budgets 8 and 16).
    assert set(summary.loc[summary.k == 2, "epochs_c2"]) == {8} and set(summary.loc[summary.k == 32, "epochs_c2"]) == {
        2
    }
    assert (summary["correctness"] >= summary[["correctness_c1", "correctness_c2"]].max(axis=1) - 1e-12).all()
    png = (exp / analysis.FIGURE).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # The experiment is a Tune experiment that pwlock.analysis reads back without Ray running.
    again = analysis.summarize(analysis.load_candidates(exp))
    pd.testing.assert_frame_equal(again.reset_index(drop=True), summary, check_dtype=False)
    # The analysis notebook runs on it as a user's Jupyter would (nothing on stderr): it lists the
    # store's experiments, shows every column of the table, and the figure.
    nb = run_analysis_notebook(str(exp))
    listing = displayed(nb, "analysis.list_experiments(STORE)")
    assert "first" in listing.split() and str(exp) in listing and "True" in listing
    shown = displayed(nb, "summary")
    for column in ("lock_mode", "k", "seed", "correctness", "correctness_selected", "locked_no_pwd", "weak"):
        assert column in shown.split(), column
    assert "..." not in shown  # no column or row elided
    text, images = outputs(nb)
    assert "elicited correctness without password" in text and len(images) == 1 and images[0][:4] == b"\x89PNG"
    artifacts = sorted(p.name for p in (storage / "artifacts").iterdir())
    assert len(artifacts) == 9  # policy scores, strong model, 2 locked models, 3 evaluations, 2 lock audits
    stamps = {p: (storage / "artifacts" / p / "pwlock-meta.json").stat().st_mtime_ns for p in artifacts}
    metas = [json.loads((storage / "artifacts" / p / "pwlock-meta.json").read_text()) for p in artifacts]
    # Trained until a target it never reached: every epoch was checked on held-out problems.
    held_out = {m["label"]: m["train"]["held_out_correctness"] for m in metas if "train" in m}
    assert {k: len(v) for k, v in held_out.items()} == {
        "strong model": 2,
        "locked model (sft)": 1,
        "locked model (scratch)": 2,
    }

    second = _run(config, storage, "--name", "second")
    log = second.stdout + second.stderr
    assert "upstream: 9 of 9 artifacts reused from the store, 0 built" in log
    assert "building" not in log
    assert stamps == {p: (storage / "artifacts" / p / "pwlock-meta.json").stat().st_mtime_ns for p in artifacts}
    # Trials are a pure function of their config: the same numbers again.
    pd.testing.assert_series_equal(
        pd.read_csv(storage / "second" / analysis.SUMMARY)["correctness"], summary["correctness"]
    )
