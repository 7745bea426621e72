"""Every shipped config plans to the artifact keys and trial names recorded in
tests/fixtures/plan_keys.json: a store built before a change to pwlock's planning is reused after
it, and an experiment's trials keep their names. The text-task configs plan on the repository's
fixtures, as in test_paper_configs.py. A change that means to move keys rewrites the file with

    .venv/bin/python tests/test_plan_keys.py

and says why in its commit."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pwlock.config import config_from_dict  # noqa: E402
from pwlock.description import is_description  # noqa: E402
from pwlock.plan import plan  # noqa: E402
from tests.test_paper_configs import TEXT_CONFIGS, on_fixtures  # noqa: E402

CONFIGS = ROOT / "sweeps" / "configs"
RECORDED = Path(__file__).parent / "fixtures" / "plan_keys.json"


def shipped() -> list[str]:
    return sorted(p.name for p in CONFIGS.glob("*.yaml") if not is_description(yaml.safe_load(p.read_text())))


def snapshot(name: str, quick: bool, tmp: Path) -> dict:
    """The plan of a shipped config (on the fixtures for the text tasks): each artifact's label,
    stage and key in build order, and the trial names."""
    if name in TEXT_CONFIGS:
        raw, ks = on_fixtures(name, tmp)
        # The task's data paths enter its artifacts' keys: relative to the checkout (the test runs
        # there), so that the recorded keys hold in any clone.
        raw["task"] = yaml.safe_load(yaml.safe_dump(raw["task"]).replace(f"{ROOT}/", ""))
        quick_elicit = raw.get("quick", {}).get("elicit", {})
        if "ks" in quick_elicit:  # --quick's ks, cut to the fixture's elicit split too
            quick_elicit["ks"] = [k for k in quick_elicit["ks"] if k <= max(ks)] or ks[:1]
    else:
        raw = yaml.safe_load((CONFIGS / name).read_text())
    p = plan(config_from_dict(raw, source=name, quick=quick))
    return {"artifacts": [[a.label, a.stage, a.key] for a in p.artifacts], "trials": [t.name for t in p.trials]}


def every_snapshot() -> dict[str, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        return {
            f"{name}{' --quick' * quick}": snapshot(name, quick, Path(tmp))
            for name in shipped()
            for quick in (False, True)
        }


@pytest.mark.parametrize("name", shipped())
def test_each_shipped_config_plans_the_recorded_keys_and_trial_names(name, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    recorded = json.loads(RECORDED.read_text())
    for quick in (False, True):
        label = f"{name}{' --quick' * quick}"
        assert label in recorded, f"{label}: not recorded; run `python tests/test_plan_keys.py`"
        assert snapshot(name, quick, tmp_path) == recorded[label], label


def test_every_shipped_config_is_recorded():
    assert sorted(json.loads(RECORDED.read_text())) == sorted(f"{n}{q}" for n in shipped() for q in ("", " --quick"))


if __name__ == "__main__":
    os.chdir(ROOT)
    RECORDED.write_text(json.dumps(every_snapshot(), indent=1) + "\n")
    print(f"wrote {RECORDED.relative_to(ROOT)}")
