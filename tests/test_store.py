from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pwlock.artifacts import build_artifact
from pwlock.stages import Artifact, build
from pwlock.store import OWNER, content_key, open_store
from tests.conftest import SMALL_TASK

ROOT = Path(__file__).resolve().parents[1]


def test_content_key_depends_on_content_not_order():
    assert content_key("s", {"a": 1, "b": [1, 2]}) == content_key("s", {"b": [1, 2], "a": 1})
    assert content_key("s", {"a": 1}) != content_key("s", {"a": 2})
    assert content_key("s", {"a": 1}).startswith("s-")


def test_artifact_is_built_once_then_reused(tmp_path):
    store = open_store(tmp_path)
    a = Artifact("policy_scores", "policy scores", {"task": SMALL_TASK, "eval": {"split": "val", "max_problems": 50}})
    first = build(store.spec, a)
    assert not first["reused"] and store.has(a.key)
    built_at = (store.artifact_dir(a.key) / "pwlock-meta.json").stat().st_mtime_ns
    second = build(store.spec, a)
    assert second["reused"] and second["scores"] == first["scores"]
    assert (store.artifact_dir(a.key) / "pwlock-meta.json").stat().st_mtime_ns == built_at
    assert first["scores"]["strong"] == 1.0


def test_commit_is_atomic_and_first_writer_wins(tmp_path):
    store = open_store(tmp_path)
    half = store.scratch_dir("k-1")
    (half / "weights").write_text("partial")
    assert not store.has("k-1")  # a scratch directory is never taken as built
    store.commit("k-1", half, {"n": 1})
    late = store.scratch_dir("k-1")
    store.commit("k-1", late, {"n": 2})
    assert store.meta("k-1")["n"] == 1
    assert not late.exists()


def test_unsupported_store_url_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="gs://"):
        open_store("gs://bucket/prefix")
    assert open_store(f"file://{tmp_path}").root == str(tmp_path.resolve())


def test_a_build_that_lost_the_race_reports_the_artifact_that_is_used(tmp_path):
    """Two workers build the same artifact; the one that publishes second keeps the first's and
    reports its metadata, build time included (what timings.json records)."""
    store = open_store(tmp_path)
    a = Artifact("policy_scores", "policy scores", {"task": SMALL_TASK, "eval": {"split": "val", "max_problems": 20}})
    first: dict = {}

    def slow_build(store, artifact, scratch):
        first.update(build(store.spec, artifact))  # another worker finishes while this one builds
        return {"scores": {"mine": 0.5}}

    second = build_artifact(store.spec, a, {"policy_scores": slow_build})
    assert not first["reused"] and second["build"] == first["build"] == store.meta(a.key)["build"]
    assert second["build_seconds"] == first["build_seconds"] and "mine" not in second["scores"]
    assert not list((tmp_path / ".scratch").iterdir())  # the loser's scratch and owner file are gone


def test_check_removes_the_scratch_directories_of_killed_builds(tmp_path):
    store = open_store(tmp_path)
    code = (
        f"import os; from pwlock.store import open_store; d = open_store({str(tmp_path)!r}).scratch_dir('k-dead'); "
        "(d / 'weights').write_text('partial'); os._exit(9)"  # killed mid-build: nothing cleaned up
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 9
    live = store.scratch_dir("k-live")  # this process builds in it now
    old, fresh = tmp_path / ".scratch" / "k-old-0000", tmp_path / ".scratch" / "k-fresh-0000"
    old.mkdir()
    fresh.mkdir()
    os.utime(old, (time.time() - 2 * 86400,) * 2)  # no owner file (made before owners were recorded)
    store.check()
    left = sorted(p.name for p in (tmp_path / ".scratch").iterdir())
    assert left == sorted([live.name, live.name + OWNER, fresh.name])
