"""Storage mistakes a user makes on the command line are refused before any work, with a message
naming the store and what was expected, and nothing written anywhere."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pwlock.store import StoreError, StoreURLError, open_store
from tests.tmpfs import read_only, tmpfs

ROOT = Path(__file__).resolve().parents[1]


def _sweep(storage: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "sweeps" / "sample_efficiency.py"), "--quick", "--storage", storage],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )
    print(proc.stderr[-3000:])
    return proc


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.fixture
def work(tmp_path):
    """The command's working directory, empty."""
    (tmp_path / "cwd").mkdir()
    return tmp_path / "cwd"


def _refused(proc: subprocess.CompletedProcess, *phrases: str) -> None:
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert error and all(p in error[0] for p in phrases), error


def test_a_file_as_the_store_is_refused(work):
    target = work / "results.txt"
    target.write_text("notes")
    _refused(_sweep(str(target), work), f"store {target}", "is a file, not a directory", "expected a directory")
    assert target.read_text() == "notes" and _tree(work) == ["results.txt"]


def test_a_store_whose_parent_is_missing_is_refused(work):
    target = work / "no" / "such" / "results"
    _refused(_sweep(str(target), work), f"store {target}", f"parent directory {target.parent} does not exist")
    assert _tree(work) == []


@pytest.mark.parametrize("url", ["s3:/bucket/prefix", "s3:bucket", "S3://bucket/prefix", "s3://", "s3:///prefix"])
def test_a_malformed_s3_url_is_refused(work, url):
    _refused(_sweep(url, work), f"storage {url!r}", "s3://bucket/prefix")
    assert _tree(work) == []  # no local directory named `s3:`


@pytest.mark.parametrize("url", ["gs://bucket/prefix", "http://127.0.0.1:8333/pwlock", "hdfs://x/y"])
def test_an_unknown_scheme_is_refused(work, url):
    scheme = url.split("://")[0]
    _refused(_sweep(url, work), f"storage {url!r}", f"{scheme}:// is not supported", "s3://bucket/prefix")
    assert _tree(work) == []


@pytest.fixture
def mount(tmp_path):
    with tmpfs(tmp_path / "mnt") as point:
        yield point


def test_an_unwritable_store_is_refused(work, mount):
    (mount / "results").mkdir()
    read_only(mount)
    _refused(_sweep(str(mount / "results"), work), f"store {mount / 'results'}", "Read-only file system")
    _refused(_sweep(str(mount / "new"), work), f"store {mount / 'new'}", "Read-only file system")
    assert _tree(mount) == ["results"] and _tree(work) == []


def test_the_same_mistakes_are_refused_by_open_store_and_check(tmp_path):
    with pytest.raises(StoreURLError, match="malformed URL"):
        open_store("s3:/bucket")
    with pytest.raises(ValueError, match="gs:// is not supported"):  # a ValueError too, as before
        open_store("gs://bucket/prefix")
    (tmp_path / "f").write_text("")
    with pytest.raises(StoreError, match="is a file"):
        open_store(tmp_path / "f").check()
    assert open_store(f"file://{tmp_path}").root == str(tmp_path.resolve())
    open_store(tmp_path / "new").check()  # a directory to create in an existing one is fine
    assert (tmp_path / "new").is_dir() and _tree(tmp_path / "new") == []  # its probe is gone
