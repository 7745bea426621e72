from __future__ import annotations

import atexit
import faulthandler
import os
import sys
from collections import Counter
from pathlib import Path

import pytest

from pwlock.config import TinyModelConfig
from pwlock.models import build_tiny_model, word_level_tokenizer
from pwlock.tasks import make_task

# Every process this test process starts carries its pid (Ray's nodes and workers inherit it), so a
# test that counts processes by title counts its own, not those of a test running beside it (-n 2).
os.environ["PWLOCK_TEST_RUN"] = str(os.getpid())

SMALL_TASK = {"name": "function_composition", "seed": 0, "n_problems": 2000}
TINY = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


def pytest_collection_modifyitems(config, items):
    """Files with the most slow tests first: with the suite spread over processes by file (xdist's
    --dist loadfile), the long files start early instead of ending the run on one process."""
    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])  # stable: each file's own order kept


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


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray for the tests of one module, stopped after them."""
    import ray

    from pwlock.config import RayConfig
    from pwlock.runtime import init_ray

    init_ray(RayConfig(num_cpus=2))
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def models_cache(tmp_path_factory) -> Path:
    """A pwlock cache that the test processes of one run share, for what is slow to make and never
    changes: SmolLM2 converted from its GGUF package, CHAMP's wheel (each is made once, whole, by
    whichever process needs it first)."""
    root = tmp_path_factory.getbasetemp()
    path = (root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root) / "pwlock-models-cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="module")
def models_cache_env(models_cache):
    """PWLOCK_CACHE pointed at the run's shared models cache for one module's tests."""
    before = os.environ.get("PWLOCK_CACHE")
    os.environ["PWLOCK_CACHE"] = str(models_cache)
    yield models_cache
    if before is None:
        del os.environ["PWLOCK_CACHE"]
    else:
        os.environ["PWLOCK_CACHE"] = before


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


# --- how the test process ends --------------------------------------------------------------------
# The suite leaves native threads behind (Ray's core worker, torch's pools, pyarrow's S3 client):
# interpreter teardown, which frees module state while such threads may still run, is where an
# exit-time crash can come from, and it would turn a passing run into exit 139. So the session ends
# in a fixed order, each step visible: Ray stopped, every atexit handler run (pyarrow finalizes S3,
# weakref finalizers stop sandbox servers), then the process exits with pytest's own status
# without tearing the interpreter down. faulthandler stays on to the last, so a crash in any of
# these steps still prints where it happened.
_exit_status: int | None = None


def pytest_sessionfinish(session, exitstatus):
    global _exit_status
    _exit_status = int(exitstatus)
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():  # a test that left its driver up; Ray stops here, not at teardown
            ray.shutdown()


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    if _exit_status is None:  # pytest stopped before a session ran (usage error, --help)
        return
    faulthandler.enable(file=sys.__stderr__, all_threads=True)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_exit_status)
