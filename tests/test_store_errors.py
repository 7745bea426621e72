"""Errors that waiting does not cure (a full disk, a read-only file system) fail at once, naming the
store and the cause, and leave no partial file behind; the journal counts only complete attempt
records."""

from __future__ import annotations

import logging

import pytest

from pwlock.store import StoreError, open_store
from pwlock.trial import attempt_records
from tests.tmpfs import read_only, tmpfs

MIB = b"\0" * (1 << 20)


def _files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _no_retry(caplog) -> None:
    assert not [r for r in caplog.records if "retry" in r.getMessage()], caplog.text


def test_a_full_disk_fails_at_once_and_leaves_no_temporary_file(tmp_path, caplog):
    with tmpfs(tmp_path / "mnt", "256k") as mnt:
        store = open_store(mnt / "store")
        store.check()
        store.write_text("exp/journal/t/start-001-1.json", "{}")
        with caplog.at_level(logging.WARNING, "pwlock.store"):
            with pytest.raises(StoreError) as e:
                store.write_bytes("exp/journal/t/start-002-2.json", MIB)  # an attempt record that cannot land
            print(e.value)
            assert f"store {store.url}" in str(e.value) and "No space left on device" in str(e.value)
            big = tmp_path / "upload"
            big.mkdir()
            (big / "weights.bin").write_bytes(MIB)
            with pytest.raises(StoreError, match="No space left on device"):
                store.upload_dir(big, "exp/journal/t/checkpoint-1")
        _no_retry(caplog)
        assert _files(mnt / "store") == ["exp/journal/t/start-001-1.json"]  # no *.tmp-* file, no partial copy
        assert attempt_records(store.listdir("exp/journal/t")) == ["start-001-1.json"]
        store.write_text("exp/summary.csv", "a\n")  # the small write still fits: the store is usable


def test_the_journal_counts_only_complete_attempt_records():
    entries = ["start-001-17.json", "start-002-18.json.tmp-0a1b2c3d", "start-003-19.json", "latest.json", "done.json"]
    assert attempt_records(entries) == ["start-001-17.json", "start-003-19.json"]


def test_a_read_only_store_fails_at_once(tmp_path, caplog):
    with tmpfs(tmp_path / "mnt") as mnt:
        (mnt / "store").mkdir()
        store = open_store(mnt / "store")
        read_only(mnt)
        with caplog.at_level(logging.WARNING, "pwlock.store"), pytest.raises(StoreError) as e:
            store.write_text("exp/study.yaml", "name: x")
        print(e.value)
        assert f"store {store.url}" in str(e.value) and "Read-only file system" in str(e.value)
        _no_retry(caplog)


def test_tunes_files_are_written_whole_or_not_at_all(tmp_path):
    """What Tune copies into a local store (its experiment state, results, error files) goes through
    the store's filesystem: on a full disk the previous version stays, never a cut-off one."""
    import pyarrow.fs as pafs

    store = open_store(tmp_path / "mnt" / "store")
    fs = store.tune_storage()["storage_filesystem"]
    staging = tmp_path / "staging"
    staging.mkdir()
    with tmpfs(tmp_path / "mnt", "256k") as mnt:
        store.check()
        (staging / "experiment_state.json").write_text('{"trials": 4}')
        pafs.copy_files(str(staging), store.path("exp"), destination_filesystem=fs)
        (staging / "experiment_state.json").write_bytes(b'{"trials": 4, "pad": "' + MIB + b'"}')
        with pytest.raises(OSError, match="No space left on device"):
            pafs.copy_files(str(staging), store.path("exp"), destination_filesystem=fs)
        assert (mnt / "store" / "exp" / "experiment_state.json").read_text() == '{"trials": 4}'
        assert _files(mnt / "store") == ["exp/experiment_state.json"]
