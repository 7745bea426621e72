"""Elicitation methods declare themselves (pwlock.elicit.methods.METHODS): a new method is one
function and one registry entry, and the plan, the price, the trial and the analysis take it from
there, with no change to any of them. Here a toy method, SFT at half the learning rate, is
registered, planned, priced and run end to end through Ray Tune."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pandas as pd
import pytest
import ray
from ray import cloudpickle

from pwlock import analysis
from pwlock.config import config_from_dict
from pwlock.elicit import sft
from pwlock.elicit.base import Method
from pwlock.elicit.methods import METHODS
from pwlock.plan import plan
from pwlock.pricing import estimate_plan
from pwlock.store import open_store
from pwlock.sweep import run
from tests.test_sweep_e2e import STUDY


def run_half_lr(e, checkpoint, checkpoint_every_s, start):
    """The toy method: SFT on the trial's demonstrations at half the learning rate."""
    e.train = dataclasses.replace(e.train, lr=e.train.lr / 2)
    sft.run(e, checkpoint, checkpoint_every_s, start)


HALF_LR = Method("sft_half_lr", run_half_lr, sft.price, demonstrations="trial")


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(METHODS, HALF_LR.name, HALF_LR)
    # Trials run in Ray's workers: the entry travels in the trial's setup, this module by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield HALF_LR
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _study(methods: list[str]) -> dict:
    study = {**STUDY, "name": "registry", "lock": {**STUDY["lock"], "modes": ["sft"]}}
    return {**study, "elicit": {**study["elicit"], "methods": methods, "ks": [4], "seeds": [0, 1]}}


def test_an_unregistered_method_is_refused_naming_the_field():
    from pwlock.config import ConfigError

    with pytest.raises(ConfigError, match=r"elicit\.methods\[1\]: unknown method 'sft_half_lr'"):
        plan(config_from_dict(_study(["sft", "sft_half_lr"])))


def test_a_registered_method_is_planned_and_priced_like_sft(registered):
    p = plan(config_from_dict(_study(["sft", "sft_half_lr"])))
    by_method = {m: [t for t in p.trials if t.method == m] for m in ("sft", "sft_half_lr")}
    assert [t.name for t in by_method["sft_half_lr"]] == [
        "sftlock-sft_half_lr-k4-seed0",
        "sftlock-sft_half_lr-k4-seed1",
    ]
    # The same grid and epoch candidates as SFT, and (same price function) the same price.
    assert [(t.k, t.seed, t.epoch_candidates) for t in by_method["sft_half_lr"]] == [
        (t.k, t.seed, t.epoch_candidates) for t in by_method["sft"]
    ]
    hours = {i.id: i.gpu_hours for i in estimate_plan(p).trials}
    for a, b in zip(by_method["sft"], by_method["sft_half_lr"]):
        assert hours[a.name] == hours[b.name] > 0
    assert p.setup.methods["sft_half_lr"] is HALF_LR


@pytest.mark.slow
def test_a_registered_method_runs_end_to_end_and_reaches_the_results(registered, tmp_path):
    store = open_store(str(tmp_path / "store"))
    p = plan(config_from_dict(_study(["sft", "sft_half_lr"]), source=str(tmp_path / "study.yaml")))
    try:
        where = run(p, store, experiment="registry")
    finally:
        ray.shutdown()
    summary = pd.read_csv(Path(where) / analysis.SUMMARY)
    rows = summary[summary["method"] == "sft_half_lr"]
    assert len(rows) == 2 and rows["correctness_selected"].between(0, 1).all()
    assert not rows["rl"].any()  # selected like SFT: the best seed-mean epoch candidate
    assert (Path(where) / analysis.FIGURE).exists()
