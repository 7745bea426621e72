from __future__ import annotations

import pytest

from pwlock.stages import Artifact, build
from pwlock.store import content_key, open_store
from tests.conftest import SMALL_TASK


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
