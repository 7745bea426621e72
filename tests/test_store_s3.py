"""The S3 store against a real S3-compatible server (SeaweedFS on loopback)."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest

from pwlock.stages import Artifact, build
from pwlock.store import META, StoreError, open_store
from tests.conftest import SMALL_TASK, bucket_objects


def _prefix() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def test_artifact_built_into_the_bucket_then_reused(s3_env):
    prefix = _prefix()
    store = open_store(f"s3://{s3_env.bucket}/{prefix}")
    store.check()
    a = Artifact("policy_scores", "policy scores", {"task": SMALL_TASK, "eval": {"split": "val", "max_problems": 50}})
    first = build(store.spec, a)
    objects = bucket_objects(s3_env, prefix)
    assert f"{prefix}/artifacts/{a.key}/{META}" in objects
    second = build(store.spec, a)
    assert not first["reused"] and second["reused"] and second["scores"] == first["scores"]
    assert bucket_objects(s3_env, prefix) == objects  # nothing rewritten


def test_model_artifact_round_trip_through_bucket_and_cache(s3_env, tmp_path, tiny_model, tokenizer):
    from pwlock.models import load_policy, save_policy

    store = open_store(f"s3://{s3_env.bucket}/{_prefix()}")
    scratch = store.scratch_dir("m-1")
    save_policy(tiny_model, tokenizer, scratch)
    files = sorted(p.name for p in scratch.iterdir())
    uri = store.commit("m-1", scratch, {"label": "test"})
    assert uri.startswith("s3://") and not scratch.exists()
    local = store.artifact_dir("m-1")  # downloaded into PWLOCK_CACHE
    assert sorted(p.name for p in local.iterdir()) == sorted([*files, META])
    model, _ = load_policy(local)
    for a, b in zip(tiny_model.state_dict().values(), model.state_dict().values()):
        assert (a == b).all()
    assert store.artifact_dir("m-1") == local  # cached: no second download


def test_half_uploaded_artifact_is_never_taken_as_built(s3_env):
    store = open_store(f"s3://{s3_env.bucket}/{_prefix()}")
    store.write_text("artifacts/m-2/model.safetensors", "partial")  # a worker died mid-upload
    assert not store.has("m-2")
    with pytest.raises(StoreError, match="not built"):
        store.artifact_dir("m-2")


def test_wrong_credentials_fail_at_once_with_a_clear_message(s3_env, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    store = open_store(f"s3://{s3_env.bucket}/x")
    t0 = time.monotonic()
    with pytest.raises(StoreError) as e:
        store.check()
    print(f"wrong credentials refused in {time.monotonic() - t0:.2f} s")
    message = str(e.value)
    assert "refused" in message and "AWS_ACCESS_KEY_ID" in message and s3_env.endpoint in message
    assert "SIGNATURE_DOES_NOT_MATCH" in message or "ACCESS_DENIED" in message
    assert "not-the-secret" not in str(e.value)


def test_unreachable_endpoint_fails_after_a_short_retry(s3_env, monkeypatch):
    from pwlock.s3server import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    t0 = time.monotonic()
    with pytest.raises(StoreError, match="gave up after retrying") as e:
        open_store(f"s3://{s3_env.bucket}/x").check()
    print(f"unreachable endpoint reported in {time.monotonic() - t0:.2f} s")
    assert "Could not connect" in str(e.value) or "NETWORK_CONNECTION" in str(e.value)


def test_missing_bucket_is_refused(s3_env):
    with pytest.raises(StoreError, match="bucket 'no-such-bucket-pwlock' does not exist"):
        open_store("s3://no-such-bucket-pwlock/x").check()


def test_transient_outage_is_ridden_out(s3_env):
    """A write issued while the server is down lands once it is back."""
    store = open_store(f"s3://{s3_env.bucket}/{_prefix()}")
    s3_env.stop()
    result: dict = {}
    writer = threading.Thread(target=lambda: result.update(ok=store.write_text("late.json", json.dumps({"a": 1}))))
    try:
        writer.start()
        time.sleep(3)
        assert writer.is_alive()  # still retrying
    finally:
        s3_env.start()
    writer.join(120)
    assert "ok" in result and json.loads(store.read_text("late.json")) == {"a": 1}


def test_credentials_are_not_pickled_with_the_filesystem(s3_env):
    import pickle

    store = open_store(f"s3://{s3_env.bucket}/x")
    blob = pickle.dumps(store.fs) + pickle.dumps(store.spec)
    assert s3_env.secret_key.encode() not in blob and s3_env.access_key.encode() not in blob


def _write_during_outage(s3_env, fs, path: str) -> dict:
    """Write `path` through `fs` while the server is down for 4 s; what the write did."""
    result: dict = {}

    def write() -> None:
        try:
            with fs.open_output_stream(path) as f:
                f.write(b"late")
            result["ok"] = True
        except Exception as e:  # pyarrow's OSError, or pwlock's StoreError once retry_s is spent
            result["error"] = e

    s3_env.stop()
    writer = threading.Thread(target=write)
    try:
        writer.start()
        time.sleep(4)
        result["alive_during_outage"] = writer.is_alive()
    finally:
        s3_env.start()
    writer.join(120)
    return result


def test_the_filesystem_trial_workers_get_rides_out_an_outage(s3_env):
    """Tune pickles the store's filesystem to its trial workers: unpickled, it keeps its retries
    (pwlock's, for store.retry_s; a bare pyarrow S3FileSystem, unpickled, has lost even its own and
    fails while the server is down)."""
    import pickle

    import pyarrow.fs as pafs

    prefix = f"{s3_env.bucket}/t-{uuid.uuid4().hex[:8]}"
    store = open_store(f"s3://{prefix}")
    tune_fs = store.tune_storage()["storage_filesystem"]
    blob = pickle.dumps(tune_fs)
    assert s3_env.secret_key.encode() not in blob and s3_env.access_key.encode() not in blob
    assert isinstance(tune_fs, pafs.S3FileSystem)  # in the driver: no Python called from Arrow's threads
    in_worker = pickle.loads(blob)
    assert in_worker.handler.spec == store.fs.made_from[0]  # endpoint and region as resolved here
    result = _write_during_outage(s3_env, in_worker, f"{prefix}/from-worker.txt")
    assert result.get("ok") and result["alive_during_outage"], result
    assert f"{prefix.split('/', 1)[1]}/from-worker.txt" in bucket_objects(s3_env, prefix.split("/", 1)[1])

    spec = store.fs.made_from[0]
    bare = pafs.S3FileSystem(
        region=spec.region,
        endpoint_override=spec.endpoint_url.split("://")[1],
        scheme="http",
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=10),
    )
    bare = pickle.loads(pickle.dumps(bare))  # pyarrow's own pickling: the retry strategy is gone
    lost = _write_during_outage(s3_env, bare, f"{prefix}/bare.txt")
    print(lost)
    assert "error" in lost and not lost["alive_during_outage"]


def test_a_server_whose_port_was_taken_meanwhile_starts_on_fresh_ports(tmp_path):
    """A port picked free can be bound by another process before the server binds it: the first
    start then picks fresh ports and starts."""
    import socket

    from pwlock.s3server import SeaweedServer

    server = SeaweedServer(tmp_path / "weed")
    taken = server.ports["s3"][0]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        with server:
            assert server.ports["s3"][0] != taken
            assert server._client().head_bucket(Bucket=server.bucket)["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert f"port {taken} for S3".encode() in (tmp_path / "weed" / "weed.log").read_bytes()
