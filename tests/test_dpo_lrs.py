"""DPO's learning rate picked per setting by the best seed mean (App. G.3): DPO and iterated DPO (and
iterated DPO after SFT) run a trial per rate of elicit.rl.dpo_lr_scales × dpo_train.lr, the trial at
the configured rate keeps its name, each trial trains at its own rate, and the analysis keeps the
rate whose seeds' mean is best. tests/test_rl_sweep.py runs such a grid end to end."""

from __future__ import annotations

import pandas as pd
import pytest

from pwlock import analysis
from pwlock.config import ConfigError, config_from_dict
from pwlock.plan import plan
from pwlock.pricing import estimate_plan
from pwlock.trial import _rl
from tests.test_sweep_e2e import STUDY


def _study(methods: list[str], **rl) -> dict:
    study = {**STUDY, "name": "dpo-lrs", "lock": {**STUDY["lock"], "modes": ["sft"]}}
    return {**study, "elicit": {**study["elicit"], "methods": methods, "ks": [4], "seeds": [0, 1], "rl": rl}}


def test_dpo_methods_run_a_trial_per_rate_the_configured_one_under_its_old_name():
    p = plan(config_from_dict(_study(["expert_iteration", "dpo", "iterated_dpo", "sft+iterated_dpo"])))
    names = [t.name for t in p.trials]
    # The paper's grid by default: 0.75e-6 (dpo_train.lr) × {2, 1, 0.5}.
    assert [n for n in names if "-dpo" in n] == [
        "sftlock-dpo-lr1.5e-06-k0-seed0",
        "sftlock-dpo-lr1.5e-06-k0-seed1",
        "sftlock-dpo-k0-seed0",
        "sftlock-dpo-k0-seed1",
        "sftlock-dpo-lr3.75e-07-k0-seed0",
        "sftlock-dpo-lr3.75e-07-k0-seed1",
    ]
    assert sum("iterated_dpo" in n and "sft+" not in n for n in names) == 6
    assert sum("sft+iterated_dpo" in n for n in names) == 6
    assert [n for n in names if "expert_iteration" in n] == [
        "sftlock-expert_iteration-k0-seed0",
        "sftlock-expert_iteration-k0-seed1",
    ]
    # The configured rate's trials carry no rate in their config (as before the grid); the others do.
    configs = {t.name: t.run_config() for t in p.trials}
    assert "lr" not in configs["sftlock-dpo-k0-seed0"] and "lr" not in configs["sftlock-expert_iteration-k0-seed0"]
    assert configs["sftlock-dpo-lr1.5e-06-k0-seed0"]["lr"] == 1.5e-6
    # Each rate's trial is priced as a run of its own.
    hours = {i.id: i.gpu_hours for i in estimate_plan(p).trials}
    assert hours["sftlock-dpo-lr1.5e-06-k0-seed0"] == hours["sftlock-dpo-k0-seed0"] > 0


def test_a_trial_trains_at_its_own_rate():
    p = plan(config_from_dict(_study(["dpo"], dpo_lr_scales=[1.0, 0.25])))
    by_name = {t.name: t for t in p.trials}
    assert sorted(by_name) == [
        "sftlock-dpo-k0-seed0",
        "sftlock-dpo-k0-seed1",
        "sftlock-dpo-lr1.875e-07-k0-seed0",
        "sftlock-dpo-lr1.875e-07-k0-seed1",
    ]
    low = _rl(p.setup, by_name["sftlock-dpo-lr1.875e-07-k0-seed1"].run_config())
    assert low.dpo_train.lr == 1.875e-7 and p.setup.rl.dpo_train.lr == 7.5e-7  # the study's own is untouched
    assert low.dpo_train.batch_size == p.setup.rl.dpo_train.batch_size
    assert _rl(p.setup, by_name["sftlock-dpo-k0-seed0"].run_config()) is p.setup.rl


@pytest.mark.parametrize(
    ("scales", "why"),
    [([], "got \\[\\]"), ([0.5, 2.0], "1 among"), ([1.0, 1.0], "distinct"), ([1.0, -1.0], "positive")],
)
def test_a_bad_grid_is_refused_naming_the_field(scales, why):
    with pytest.raises(ConfigError, match=rf"elicit\.rl\.dpo_lr_scales: .*{why}"):
        plan(config_from_dict(_study(["dpo"], dpo_lr_scales=scales)))


def _summary(rows: list[tuple[str, float | None, int, float]]) -> pd.DataFrame:
    """Trials' summary rows: (method, lr, seed, last round's correctness) on one lock."""
    return pd.DataFrame(
        [
            {
                "trial": f"{m}-{lr}-{seed}",
                "task": "function_composition",
                "lock_mode": "sft",
                "method": m,
                "demonstrator": "none",
                "domain": "all",
                "k": 0,
                "seed": seed,
                "lr": lr,
                "rl": True,
                "control": False,
                "correctness_selected": c,
            }
            for m, lr, seed, c in rows
        ]
    )


def test_the_rate_with_the_best_seed_mean_is_kept_not_the_best_single_seed():
    summary = _summary(
        [
            # 1e-3 has the best single seed (0.9) but the worse mean (0.5 against 0.6).
            ("dpo", 1e-3, 0, 0.9),
            ("dpo", 1e-3, 1, 0.1),
            ("dpo", 5e-4, 0, 0.6),
            ("dpo", 5e-4, 1, 0.6),
            ("iterated_dpo", 1e-3, 0, 0.7),
            ("iterated_dpo", 1e-3, 1, 0.5),
            ("iterated_dpo", 5e-4, 0, 0.2),
            ("iterated_dpo", 5e-4, 1, 0.2),
            ("expert_iteration", None, 0, 0.3),
            ("expert_iteration", None, 1, 0.4),
        ]
    )
    summary["lr_selected"] = analysis.lr_selected(summary)
    kept = summary[summary["lr_selected"]].groupby("method")["lr"].apply(set)
    assert kept["dpo"] == {5e-4} and kept["iterated_dpo"] == {1e-3}
    assert summary.loc[summary["method"] == "expert_iteration", "lr_selected"].all()
    # The table's means count the kept rate's trials alone: 0.6 for DPO, not the 0.55 of all four.
    agg = analysis.aggregate(summary).set_index("method")
    assert agg.loc["dpo", "mean"] == pytest.approx(0.6) and agg.loc["dpo", "count"] == 2
    assert agg.loc["iterated_dpo", "mean"] == pytest.approx(0.6)
    grid = analysis.lr_grid(summary)
    assert grid.loc[("function_composition", "sft", "dpo")].to_dict() == {
        "lr 0.0005": 0.6,
        "lr 0.001": 0.5,
        "kept": "0.0005",
    }
