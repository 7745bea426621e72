from __future__ import annotations

import pytest

from pwlock.models import build_tiny_model, word_level_tokenizer
from pwlock.config import TinyModelConfig
from pwlock.tasks import make_task

SMALL_TASK = {"name": "function_composition", "seed": 0, "n_problems": 2000}
TINY = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


@pytest.fixture(scope="session")
def task():
    return make_task(SMALL_TASK)


@pytest.fixture(scope="session")
def tokenizer(task):
    return word_level_tokenizer(task.vocabulary())


@pytest.fixture
def tiny_model(tokenizer):
    return build_tiny_model(TINY, tokenizer, seed=0)


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A module's own compile cache for C++ programs (PWLOCK_CACHE), not the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PWLOCK_CACHE", str(tmp_path_factory.mktemp("pwlock-cache")))
        yield


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (SeaweedFS) on loopback for the whole session, bucket `pwlock`."""
    from pwlock.s3server import SeaweedServer

    with SeaweedServer(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def s3_env(s3_server, monkeypatch, tmp_path):
    """The server's endpoint, region and credentials in the environment, as a user would export
    them; a fresh local artifact cache per test."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PWLOCK_CACHE", str(tmp_path / "cache"))
    return s3_server


def bucket_objects(server, prefix: str = "") -> dict[str, int]:
    """Every object under `prefix` in the server's bucket, listed with boto3 (not pyarrow), with its size."""
    client = server._client()
    out: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=server.bucket, Prefix=prefix):
        out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    return out
