"""pwlock.analysis.list_experiments: the experiments in a store, from a directory or an s3:// URL,
on experiments Ray Tune really wrote."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from ray import tune

from pwlock import analysis
from pwlock.store import open_store


def trainable(config: dict) -> None:
    tune.report({"correctness": config["x"] / 10})


def run_experiment(storage: Path, name: str, trials: int) -> None:
    tune.Tuner(
        trainable,
        param_space={"x": tune.grid_search(list(range(trials)))},
        run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0),
    ).fit()


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory, local_ray) -> Path:
    """A store with two Tune experiments (the first with a summary, as a finished pwlock sweep
    leaves) beside the store's own artifacts."""
    root = tmp_path_factory.mktemp("listing") / "store"
    run_experiment(root, "first", trials=2)
    run_experiment(root, "second", trials=1)
    store = open_store(str(root))
    store.write_text(f"first/{analysis.SUMMARY}", "trial,correctness\n")
    store.write_text("artifacts/strong_model-0123/meta.json", "{}")
    return root


def test_lists_each_experiment_newest_first(store_dir):
    out = analysis.list_experiments(store_dir)
    assert list(out.columns) == ["experiment", "path", "trials", "finished", "started"]
    assert set(out["experiment"]) == {"first", "second"}  # not `artifacts`
    rows = out.set_index("experiment")
    assert rows.loc["first", "trials"] == 2 and rows.loc["second", "trials"] == 1
    assert rows.loc["first", "finished"] and not rows.loc["second", "finished"]
    assert rows.loc["first", "path"] == str(store_dir / "first")
    assert out["started"].notna().all() and out["started"].is_monotonic_decreasing
    # `path` is what the other readers take.
    assert list(analysis.load_summary(rows.loc["first", "path"]).columns) == ["trial", "correctness"]


def test_lists_a_store_on_s3(store_dir, s3_env):
    url = f"s3://{s3_env.bucket}/listing-{store_dir.parent.name}"
    s3 = open_store(url)
    for name in ("first", "second", "artifacts"):
        s3.upload_dir(store_dir / name, name)
    out = analysis.list_experiments(url)
    local = analysis.list_experiments(store_dir)
    assert list(out["path"]) == [f"{url}/{name}" for name in local["experiment"]]
    pd.testing.assert_frame_equal(out.drop(columns="path"), local.drop(columns="path"))


def test_a_missing_store_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nowhere'}: no store there"):
        analysis.list_experiments(tmp_path / "nowhere")
