"""--resume runs an experiment with the config it started with: a study.yaml edited since is refused,
naming the fields that differ; a missing experiment says what to do instead."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pwlock.analysis import STUDY
from pwlock.config import ConfigError, config_from_dict, to_dict
from pwlock.store import open_store
from pwlock.study_record import read_study, write_study
from tests.test_fault_tolerance import STUDY as FAULTS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def stored(tmp_path):
    store = open_store(tmp_path / "store")
    store.check()
    cfg = config_from_dict(FAULTS, source="faults.yaml")
    write_study(store, "exp", cfg)
    return store, cfg, Path(store.path("exp", STUDY))


def test_an_unedited_study_reads_back_as_written(stored):
    store, cfg, path = stored
    assert path.read_text().startswith("# pwlock sha256 of the rest of this file: ")
    again = read_study(store, "exp")
    assert {k: v for k, v in to_dict(again).items() if k != "source"} == {
        k: v for k, v in to_dict(cfg).items() if k != "source"
    }


def test_an_edited_learning_rate_and_an_added_seed_are_refused_by_name(stored):
    store, _, path = stored
    text = path.read_text()
    path.write_text(text.replace("lr: 0.001", "lr: 0.002").replace("  - 1\n", "  - 1\n  - 2\n", 1))
    with pytest.raises(ConfigError) as e:
        read_study(store, "exp")
    print(e.value)
    assert "was edited after the experiment started" in str(e.value)
    assert "elicit.train.lr: 0.001 -> 0.002" in str(e.value) and "elicit.seeds: [0, 1] -> [0, 1, 2]" in str(e.value)
    assert "--config FILE --name NEW" in str(e.value)


def test_a_study_written_before_the_hash_is_read_as_it_is(stored):
    store, _, path = stored
    path.write_text(path.read_text().split("\n", 1)[1].replace("lr: 0.001", "lr: 0.002"))
    assert read_study(store, "exp").elicit.train.lr == 0.002


def _resume(store, name: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "sweeps" / "sample_efficiency.py"), "--resume", "--name", name]
    proc = subprocess.run([*cmd, "--storage", store.url], capture_output=True, text=True, timeout=300)
    print(proc.stderr[-2000:])
    return proc


def test_resume_refuses_an_edited_study_and_explains_a_missing_one(stored):
    store, _, path = stored
    path.write_text(path.read_text().replace("lr: 0.001", "lr: 0.002"))
    before = sorted(p.name for p in Path(store.root).rglob("*"))
    edited = _resume(store, "exp")
    assert edited.returncode == 2 and "Traceback" not in edited.stderr
    assert "elicit.train.lr: 0.001 -> 0.002" in edited.stderr
    missing = _resume(store, "never-started")
    assert missing.returncode == 2 and "run the same command again without --resume" in missing.stderr
    assert sorted(p.name for p in Path(store.root).rglob("*")) == before  # nothing written
