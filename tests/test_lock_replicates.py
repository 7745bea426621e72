"""Lock replicates (lock.seeds): π_strong's model, every lock and control built once per seed and
elicited alike; error bars over the replicates' means, so they cover lock-to-lock variance."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from pwlock import analysis
from pwlock.config import ConfigError, config_from_dict
from pwlock.plan import plan
from tests.test_control import ROOT


def _local(**lock) -> dict:
    raw = yaml.safe_load((ROOT / "sweeps" / "configs" / "local.yaml").read_text())
    raw["lock"].update({"seeds": [0], "control_replicates": None, **lock})
    return raw


def test_each_replicate_builds_its_own_strong_model_locks_and_controls():
    one, two = (
        plan(config_from_dict(_local(controls=True))),
        plan(config_from_dict(_local(controls=True, seeds=[0, 1]))),
    )
    assert list(two.locked) == ["sft", "scratch", "sft-s1", "scratch-s1"]
    assert list(two.controls) == ["sft-control", "scratch-control", "sft-s1-control", "scratch-s1-control"]
    assert {label: (r.lock, r.seed) for label, r in two.replicates.items()} == {
        "sft": ("sft", 0),
        "scratch": ("scratch", 0),
        "sft-s1": ("sft", 1),
        "scratch-s1": ("scratch", 1),
        "sft-control": ("sft-control", 0),
        "scratch-control": ("scratch-control", 0),
        "sft-s1-control": ("sft-control", 1),
        "scratch-s1-control": ("scratch-control", 1),
    }
    # The first replicate is the study without replicates, built from the same seed: the same
    # artifacts and trials, so that adding replicates reuses what a study built.
    assert {a.key for a in one.artifacts} <= {a.key for a in two.artifacts}
    assert all(two.locked[label].key == a.key for label, a in one.locked.items())
    assert {t.name for t in one.trials} <= {t.name for t in two.trials}
    assert two.locked["sft"].key != two.locked["sft-s1"].key
    assert two.locked["scratch"].key != two.locked["scratch-s1"].key
    # Each replicate's sft lock starts from its own π_strong model; its control too.
    strongs = [a for a in two.artifacts if a.stage == "strong_model"]
    assert len(strongs) == 2 and strongs[0].key != strongs[1].key
    for seed, strong in zip((0, 1), strongs):
        suffix = f"-s{seed}" if seed else ""
        assert strong.key in two.locked[f"sft{suffix}"].deps and strong.key in two.controls[f"sft{suffix}-control"].deps
        assert two.replicates[f"sft{suffix}"].strong_eval.deps == (strong.key,)
    assert len({a.key for a in two.artifacts}) == len(two.artifacts)  # nothing planned twice
    # Every replicate elicited by the same grid of trials.
    assert len(two.trials) == 2 * len(one.trials)
    dims = {label: sorted((t.method, t.k, t.seed) for t in two.trials if t.lock_mode == label) for label in two.locked}
    assert dims["sft"] == dims["sft-s1"] == dims["scratch-s1"] and len(dims["sft"]) == 10


def test_one_seed_listed_keeps_the_labels_and_keys_of_a_study_without_replicates():
    plain, listed = plan(config_from_dict(_local())), plan(config_from_dict(_local(seeds=[0])))
    assert [a.key for a in listed.artifacts] == [a.key for a in plain.artifacts]
    assert [t.name for t in listed.trials] == [t.name for t in plain.trials]


def test_a_seed_listed_twice_is_refused():
    with pytest.raises(ConfigError, match=r"lock\.seeds: expected each seed once .*\[1\] twice"):
        config_from_dict(_local(seeds=[0, 1, 1]))


def _summary(values: dict[tuple[str, int], list[float]]) -> pd.DataFrame:
    """Rows of one k for lock labels (with their replicate's lock and seed) and elicitation seeds."""
    rows = []
    for (label, lock_seed), per_seed in values.items():
        for seed, v in enumerate(per_seed):
            lock = label.removesuffix(f"-s{lock_seed}")
            rows.append(
                {
                    "task": "t",
                    "lock_mode": label,
                    "lock": lock if lock_seed >= 0 else None,
                    "lock_seed": lock_seed if lock_seed >= 0 else None,
                    "method": "sft",
                    "k": 8,
                    "seed": seed,
                    "correctness_selected": v,
                }
            )
    return pd.DataFrame(rows)


def test_error_bars_over_lock_replicates_by_hand():
    values = {("sft", 0): [0.1, 0.3, 0.2], ("sft-s1", 1): [0.7, 0.9, 0.8], ("scratch", 0): [0.5, 0.5, 0.6]}
    agg = analysis.aggregate(_summary(values)).set_index("lock_mode")
    # sft: two replicates, means 0.2 and 0.8: mean 0.5, SEM = sd(0.2, 0.8) / sqrt(2) = 0.3.
    assert agg.loc["sft", "mean"] == pytest.approx(0.5) and agg.loc["sft", "sem"] == pytest.approx(0.3)
    assert agg.loc["sft", "locks"] == 2 and agg.loc["sft", "count"] == 6
    assert agg.loc["sft", "error_over"] == "lock replicates"
    # The seed-to-seed SEM would have been far smaller: what one lock per mode hides.
    assert np.std([0.1, 0.3, 0.2], ddof=1) / np.sqrt(3) < 0.06
    # scratch: one replicate: the SEM over its seeds.
    assert agg.loc["scratch", "locks"] == 1 and agg.loc["scratch", "error_over"] == "seeds"
    assert agg.loc["scratch", "sem"] == pytest.approx(np.std([0.5, 0.5, 0.6], ddof=1) / np.sqrt(3))
    assert "SEM over lock replicates, or seeds" in analysis.table(_summary(values).assign(**{"correctness": 0}))


def test_experiments_from_before_replicates_aggregate_as_before():
    values = {("sft", -1): [0.1, 0.3, 0.2]}
    agg = analysis.aggregate(_summary(values).drop(columns=["lock", "lock_seed"]))
    assert list(agg["lock_mode"]) == ["sft"] and agg["error_over"].tolist() == ["seeds"]
    assert agg["mean"].iloc[0] == pytest.approx(0.2) and agg["sem"].iloc[0] == pytest.approx(0.1 / np.sqrt(3))


def test_the_smallest_k_reaching_0_8_beside_the_control_at_that_k():
    rows = []
    means = {"sft": [0.3, 0.7, 0.85, 0.95], "sft-control": [0.2, 0.3, 0.5, 0.9], "scratch": [0.1, 0.2, 0.3, 0.5]}
    for label, per_k in means.items():
        for k, m in zip((8, 32, 128, 512), per_k):
            for seed, d in enumerate((-0.01, 0.01)):
                rows.append(
                    {
                        "task": "t",
                        "lock_mode": label,
                        "method": "sft",
                        "k": k,
                        "seed": seed,
                        "correctness_selected": m + d,
                    }
                )
    summary = pd.DataFrame(rows)
    reach = analysis.k_reaching(summary).set_index("lock")
    assert reach.loc["sft", "k"] == 128 and reach.loc["sft", "mean"] == pytest.approx(0.85)
    assert reach.loc["sft", "control"] == pytest.approx(0.5)  # the control at k = 128, not where it reaches 0.8
    assert pd.isna(reach.loc["scratch", "k"]) and pd.isna(reach.loc["scratch", "control"])  # never; no control
    assert "sft-control" not in reach.index
    assert "smallest k whose mean reaches 0.8" in analysis.table(summary.assign(correctness=0))
