"""Verified artifacts: a truncated, a same-size corrupted or a deleted file, or an edited stored
evaluation, is never used: the build finds it, says which artifact and why, and builds it again.
Local directory and a real S3 server (SeaweedFS on loopback); real tiny models."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from pwlock import integrity
from pwlock.artifacts import Artifact, build_artifact
from pwlock.models import load_policy, save_policy
from pwlock.stages import build
from pwlock.store import META, ArtifactDamaged, Store, open_store
from tests.conftest import SMALL_TASK

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = "model.safetensors"


@pytest.fixture
def model_builders(tiny_model, tokenizer):
    """A stage that saves a real tiny model, counting its builds."""
    built: list[str] = []

    def save(store: Store, a: Artifact, scratch: Path) -> dict:
        save_policy(tiny_model, tokenizer, scratch)
        built.append(a.key)
        return {"parameters": sum(p.numel() for p in tiny_model.parameters())}

    return {"strong_model": save}, built


def _model_artifact() -> Artifact:
    return Artifact("strong_model", "strong model", {"test": uuid.uuid4().hex})


def _scores_artifact() -> Artifact:
    spec = {"task": SMALL_TASK, "eval": {"split": "val", "max_problems": 20}}
    return Artifact("policy_scores", "policy scores", spec)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _zero_16k(path: Path) -> None:
    """16 KiB of weights zeroed in place: same size, other content."""
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        f.write(b"\0" * 16384)


DAMAGE = {
    "truncated": (_truncate, "has"),
    "same_size_corrupted": (_zero_16k, "content differs"),
    "deleted": (Path.unlink, "is missing"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_local_weights_are_rebuilt_with_a_line_naming_the_artifact(tmp_path, model_builders, damage, caplog):
    builders, built = model_builders
    store = open_store(tmp_path / "store")
    a = _model_artifact()
    build_artifact(store.spec, a, builders)
    weights = Path(store.path("artifacts", a.key, WEIGHTS))
    spoil, why = DAMAGE[damage]
    spoil(weights)
    state = store.check_artifact(a.key)
    assert not state.built and why in state.why()
    with pytest.raises(ArtifactDamaged, match=a.key):  # never handed to a user
        store.artifact_dir(a.key)
    with caplog.at_level(logging.WARNING, "pwlock.stages"):
        meta = build_artifact(store.spec, a, builders)
    print(caplog.text)
    assert not meta["reused"] and built == [a.key, a.key]
    assert f"strong model {a.key} is damaged" in caplog.text and why in caplog.text
    assert store.check_artifact(a.key).built
    load_policy(store.artifact_dir(a.key))
    assert build_artifact(store.spec, a, builders)["reused"] and len(built) == 2  # whole again: reused
    assert not list((tmp_path / "store" / ".scratch").iterdir())  # the damaged copy is gone


def test_an_edited_stored_evaluation_is_detected_and_rebuilt(tmp_path, caplog):
    store = open_store(tmp_path)
    a = _scores_artifact()
    first = build(store.spec, a)
    meta_path = Path(store.path("artifacts", a.key, META))
    meta = json.loads(meta_path.read_text())
    meta["scores"]["weak"] = 0.777
    meta_path.write_text(json.dumps(meta, indent=2))
    assert not store.has(a.key)
    assert "changed after it was written" in store.check_artifact(a.key).why()
    with caplog.at_level(logging.WARNING, "pwlock.stages"):
        again = build(store.spec, a)
    assert "policy scores" in caplog.text and a.key in caplog.text and "digest mismatch" in caplog.text
    assert not again["reused"] and again["scores"] == first["scores"] != 0.777


def test_an_artifact_built_before_hashes_is_reused_and_a_truncated_one_is_not(tmp_path, model_builders):
    """Metadata without a file list (older stores): reused as before, checked where it can be."""
    builders, built = model_builders
    store = open_store(tmp_path)
    a = _model_artifact()
    build_artifact(store.spec, a, builders)
    meta_path = Path(store.path("artifacts", a.key, META))
    meta = json.loads(meta_path.read_text())
    del meta[integrity.FILES], meta[integrity.DIGEST]
    meta_path.write_text(json.dumps(meta))
    state = store.check_artifact(a.key)
    assert state.built and state.legacy
    assert build_artifact(store.spec, a, builders)["reused"] and len(built) == 1
    _truncate(Path(store.path("artifacts", a.key, WEIGHTS)))
    assert "model.safetensors has" in store.check_artifact(a.key).why()
    assert not build_artifact(store.spec, a, builders)["reused"] and len(built) == 2


def test_each_file_is_hashed_once_per_process(tmp_path, model_builders):
    """A second check reads no file again: a change that keeps size and time goes unseen until the
    next process, which is the price of checking cheaply."""
    builders, _ = model_builders
    store = open_store(tmp_path)
    a = _model_artifact()
    build_artifact(store.spec, a, builders)
    weights = Path(store.path("artifacts", a.key, WEIGHTS))
    assert store.check_artifact(a.key).built
    st = weights.stat()
    _zero_16k(weights)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert store.check_artifact(a.key).built  # the hash from this process's first check
    code = f"from pwlock.store import open_store; print(open_store({str(tmp_path)!r}).check_artifact({a.key!r}).why())"
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "content differs" in fresh.stdout


# -- S3 ---------------------------------------------------------------------------------------------


def _object(s3_env, key: str) -> bytes:
    return s3_env._client().get_object(Bucket=s3_env.bucket, Key=key)["Body"].read()


def _put_object(s3_env, key: str, data: bytes) -> None:
    s3_env._client().put_object(Bucket=s3_env.bucket, Key=key, Body=data)


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_weights_in_the_bucket_are_rebuilt(s3_env, model_builders, damage, caplog):
    builders, built = model_builders
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    store = open_store(f"s3://{s3_env.bucket}/{prefix}")
    a = _model_artifact()
    build_artifact(store.spec, a, builders)
    key = f"{prefix}/artifacts/{a.key}/{WEIGHTS}"
    data = _object(s3_env, key)
    if damage == "truncated":
        _put_object(s3_env, key, data[: len(data) // 2])
    elif damage == "same_size_corrupted":
        mid = len(data) // 2
        _put_object(s3_env, key, data[:mid] + b"\0" * 16384 + data[mid + 16384 :])
    else:
        s3_env._client().delete_object(Bucket=s3_env.bucket, Key=key)
    with pytest.raises(ArtifactDamaged, match=a.key):  # a fresh cache: the download is checked
        store.artifact_dir(a.key)
    assert not (store.cache / "artifacts" / a.key).exists()
    with caplog.at_level(logging.WARNING, "pwlock.stages"):
        meta = build_artifact(store.spec, a, builders)
    print(caplog.text)
    assert not meta["reused"] and len(built) == 2
    assert f"strong model {a.key} is damaged" in caplog.text and DAMAGE[damage][1] in caplog.text
    assert _object(s3_env, key) == data  # the same config builds the same bytes
    load_policy(store.artifact_dir(a.key))
    assert store.inspect(a.key, deep=True).built


def test_a_damaged_cached_copy_is_downloaded_again(s3_env, model_builders, caplog):
    builders, built = model_builders
    store = open_store(f"s3://{s3_env.bucket}/t-{uuid.uuid4().hex[:8]}")
    a = _model_artifact()
    build_artifact(store.spec, a, builders)
    cached = store.artifact_dir(a.key)
    _zero_16k(cached / WEIGHTS)
    fresh = open_store(store.spec)  # another process: its own hashes
    with caplog.at_level(logging.WARNING, "pwlock.store"):
        assert fresh.artifact_dir(a.key) == cached
    assert "cached copy" in caplog.text and a.key in caplog.text and "content differs" in caplog.text
    load_policy(cached)
    assert len(built) == 1  # the bucket's copy was whole: nothing rebuilt


def test_an_edited_stored_evaluation_in_the_bucket_is_rebuilt(s3_env):
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    store = open_store(f"s3://{s3_env.bucket}/{prefix}")
    a = _scores_artifact()
    first = build(store.spec, a)
    key = f"{prefix}/artifacts/{a.key}/{META}"
    meta = json.loads(_object(s3_env, key))
    meta["scores"]["weak"] = 0.777
    _put_object(s3_env, key, json.dumps(meta).encode())
    assert not store.has(a.key)
    again = build(store.spec, a)
    assert not again["reused"] and again["scores"] == first["scores"]


# -- python -m pwlock.store verify ------------------------------------------------------------------


def _verify(store_url: str) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, "-m", "pwlock.store", "verify", store_url], capture_output=True, text=True, cwd=ROOT
    )
    print(out.stdout, out.stderr)
    return out


def _healthy_then_damaged(store: Store, builders) -> tuple[Artifact, Artifact]:
    model, scores = _model_artifact(), _scores_artifact()
    build_artifact(store.spec, model, builders)
    build(store.spec, scores)
    ok = _verify(store.url)
    assert ok.returncode == 0, ok.stderr
    assert "2 artifacts" in ok.stdout and "2 ok, 0 legacy, 0 damaged" in ok.stdout
    return model, scores


def test_verify_reports_a_healthy_and_a_damaged_local_store(tmp_path, model_builders):
    store = open_store(tmp_path)
    model, scores = _healthy_then_damaged(store, model_builders[0])
    _zero_16k(Path(store.path("artifacts", model.key, WEIGHTS)))
    meta_path = Path(store.path("artifacts", scores.key, META))
    meta_path.write_text(meta_path.read_text().replace('"strong": 1.0', '"strong": 0.777'))
    (Path(store.path("artifacts", "strong_model-half")) / WEIGHTS).parent.mkdir()
    (Path(store.path("artifacts", "strong_model-half")) / WEIGHTS).write_bytes(b"x")
    bad = _verify(store.url)
    assert bad.returncode == 1
    assert f"damaged    {model.key}  strong model: {WEIGHTS}'s content differs" in bad.stdout
    assert f"damaged    {scores.key}  policy scores: its metadata was changed" in bad.stdout
    assert "incomplete strong_model-half" in bad.stdout
    assert "0 ok, 0 legacy, 2 damaged, 1 incomplete" in bad.stdout


def test_verify_reports_a_healthy_and_a_damaged_bucket(s3_env, model_builders):
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    store = open_store(f"s3://{s3_env.bucket}/{prefix}")
    model, _ = _healthy_then_damaged(store, model_builders[0])
    s3_env._client().delete_object(Bucket=s3_env.bucket, Key=f"{prefix}/artifacts/{model.key}/{WEIGHTS}")
    bad = _verify(store.url)
    assert bad.returncode == 1 and f"{WEIGHTS} is missing" in bad.stdout and "1 ok, 0 legacy, 1 damaged" in bad.stdout


def test_verify_refuses_a_store_that_is_not_there(tmp_path):
    out = _verify(str(tmp_path / "nothing"))
    assert out.returncode == 2 and "no such directory" in out.stderr


def test_verify_reports_an_artifact_built_before_hashes_as_legacy(tmp_path, model_builders):
    store = open_store(tmp_path)
    a = _model_artifact()
    build_artifact(store.spec, a, model_builders[0])
    meta_path = Path(store.path("artifacts", a.key, META))
    meta = json.loads(meta_path.read_text())
    del meta[integrity.FILES], meta[integrity.DIGEST]
    meta_path.write_text(json.dumps(meta))
    out = _verify(store.url)
    assert out.returncode == 0
    assert f"legacy     {a.key}  strong model: built before pwlock recorded hashes" in out.stdout
    _truncate(Path(store.path("artifacts", a.key, WEIGHTS)))
    out = _verify(store.url)
    assert out.returncode == 1 and "model.safetensors has" in out.stdout and "0 legacy, 1 damaged" in out.stdout
