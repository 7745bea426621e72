"""The never-locked control (lock.controls, pwlock/control.py): planned per lock mode, built with
its lock's training budget on π_weak's answers only, elicited by the very trials of its lock (the
same demonstrations, k, epochs and seeds), and marked as the control in summary.csv and the figure."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pwlock import analysis
from pwlock.config import ConfigError, config_from_dict
from pwlock.plan import plan
from pwlock.stages import build
from pwlock.store import open_store
from tests.test_sweep_e2e import STUDY

ROOT = Path(__file__).resolve().parents[1]


def _local(controls: bool) -> dict:
    raw = yaml.safe_load((ROOT / "sweeps" / "configs" / "local.yaml").read_text())
    raw["lock"].update(
        controls=controls, control_replicates=None, seeds=[0]
    )  # one replicate (test_lock_replicates: two)
    return raw


def test_controls_for_the_first_replicates_only():
    raw = _local(True)
    raw["lock"].update(seeds=[0, 1], control_replicates=1)
    p = plan(config_from_dict(raw))
    assert list(p.controls) == ["sft-control", "scratch-control"]
    assert set(p.locked) == {"sft", "scratch", "sft-s1", "scratch-s1"}
    assert {t.lock_mode for t in p.trials} == {*p.locked, *p.controls}
    raw["lock"]["control_replicates"] = None
    assert len(plan(config_from_dict(raw)).controls) == 4
    raw["lock"].update(controls=False, control_replicates=1)
    with pytest.raises(ConfigError, match="lock.control_replicates: only used with lock.controls: true"):
        config_from_dict(raw)
    raw["lock"].update(controls=True, control_replicates=0)
    with pytest.raises(ConfigError, match="lock.control_replicates: expected at least 1"):
        config_from_dict(raw)


def test_a_control_per_lock_mode_elicited_by_its_locks_trials():
    without, p = plan(config_from_dict(_local(False))), plan(config_from_dict(_local(True)))
    assert list(p.controls) == ["sft-control", "scratch-control"] and list(p.locked) == ["sft", "scratch"]
    # Controls add artifacts and trials; every lock's artifact and trial stays as it was.
    assert [a.key for a in without.artifacts] == [a.key for a in p.artifacts if a.stage != "control_model"][
        : len(without.artifacts)
    ]
    assert [t.name for t in without.trials] == [t.name for t in p.trials][: len(without.trials)]
    sft = p.controls["sft-control"]
    assert sft.spec["budget_of"] == {"lock": p.locked["sft"].key, "strong": p.strong.key}
    assert set(sft.deps) == {p.locked["sft"].key, p.strong.key}
    assert p.controls["scratch-control"].spec["budget_of"] == {"lock": p.locked["scratch"].key}
    assert "strong_train" not in p.controls["scratch-control"].spec
    # The same trial dimensions as its lock: demonstrations are a function of them alone.
    for mode in ("sft", "scratch"):

        def dims(label: str) -> list[tuple]:
            return sorted(
                (t.k, t.seed, t.demonstrator, t.domain, tuple(t.epoch_candidates))
                for t in p.trials
                if t.lock_mode == label
            )

        assert dims(f"{mode}-control") == dims(mode) and len(dims(mode)) == 10
    assert "sft-controllock-sft-k8-seed0" in {t.name for t in p.trials}
    assert p.setup.locked_key["sft-control"] == sft.key and p.setup.weak["sft-control"] == "weak"


def test_a_control_trains_as_long_as_its_lock_on_weak_answers_only(tmp_path):
    raw = copy.deepcopy(STUDY)
    raw["lock"]["controls"] = True
    raw["elicit"]["ks"] = [2]
    p = plan(config_from_dict(raw))
    store = open_store(tmp_path)
    for a in p.artifacts:
        build(store.spec, a)
    for mode, control in p.controls.items():
        meta = store.meta(control.key)
        lock = store.meta(p.locked[mode.removesuffix("-control")].key)
        assert meta["train"]["epochs"] == lock["train"]["epochs"]
        if "strong" in control.spec["budget_of"]:
            assert meta["pretrain"]["epochs"] == store.meta(p.strong.key)["train"]["epochs"]
        # Never trained on π_strong's answers: with the password it does no better than without.
        report = store.meta(p.control_eval[mode].key)["report"]
        assert report["with_pwd"] - report["no_pwd"] < 0.1, report


@pytest.mark.slow
def test_control_and_replicate_rows_have_the_locked_trials_demonstrations(tmp_path):
    """Two lock replicates (lock.seeds), each with its never-locked control: every one elicited on
    the same demonstrations per (k, seed), and the results averaged over the replicates."""
    raw = copy.deepcopy(STUDY)
    raw["lock"].update(controls=True, modes=["scratch"], seeds=[0, 1])
    raw["elicit"].update(ks=[2, 32], seeds=[0, 1])
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "sweeps" / "sample_efficiency.py"), "--config", str(config)]
        + ["--storage", str(tmp_path / "store"), "--name", "c"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exp = tmp_path / "store" / "c"
    summary = pd.read_csv(exp / analysis.SUMMARY)
    labels = {"scratch", "scratch-s1", "scratch-control", "scratch-s1-control"}
    assert set(summary["lock_mode"]) == labels and len(summary) == 4 * 2 * 2
    assert (summary["control"] == summary["lock_mode"].str.endswith("-control")).all()
    assert (summary["lock"] == summary["lock_mode"].str.replace("-s1", "")).all()
    assert (summary["lock_seed"] == summary["lock_mode"].str.contains("-s1").astype(int)).all()
    by_label = summary.set_index(["lock_mode", "k", "seed"])["demonstrations"]
    for label in labels:
        pd.testing.assert_series_equal(
            by_label[label].sort_index(), by_label["scratch"].sort_index(), check_names=False
        )
    assert by_label["scratch"].nunique() == 4  # each (k, seed) its own demonstrations
    upstream = json.loads((exp / analysis.UPSTREAM_FILE).read_text())
    assert upstream["scratch-s1-control"]["control_of"] == "scratch" and "audit" in upstream["scratch-s1"]
    assert upstream["scratch-s1"]["locked_key"] != upstream["scratch"]["locked_key"]
    # The run's table: one row per lock, its error over the two replicates' means.
    log = proc.stdout + proc.stderr
    assert "elicited correctness without password (mean ± SEM over 2 lock replicates' means)" in log
    agg = analysis.aggregate(summary)
    assert set(agg["lock_mode"]) == {"scratch", "scratch-control"} and (agg["locks"] == 2).all()
    assert (exp / analysis.FIGURE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_fixedrdm_locks_control_trains_towards_the_fixed_distribution():
    """A control beside a fixedrdm lock learns π_weak's answers as its lock does: towards fixedrdm's
    distribution at every completion position, not on its sampled tokens; keyed apart from the
    controls built before it did (a study of another π_weak keeps its control's key)."""
    raw = copy.deepcopy(STUDY)
    raw["lock"].update(controls=True, modes=["scratch"], weak=["fixedrdm"])
    control = plan(config_from_dict(raw)).controls["scratch-control"]
    assert control.spec["weak"] == "fixedrdm" and control.spec["fixed_target"] is True
    raw["lock"]["weak"] = ["weak"]
    assert "fixed_target" not in plan(config_from_dict(raw)).controls["scratch-control"].spec
