"""A store whose disk fills up mid-sweep: the sweep fails with the store and the cause, and once
space is freed, --resume finishes every trial exactly once. A real tmpfs (needs root), real local
Ray, the real CLI in subprocesses."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from pwlock.trial import DONE, JOURNAL, attempt_records
from tests.test_fault_tolerance import STUDY, _start, _wait, check_local_results, sweep_command
from tests.tmpfs import tmpfs

ROOT = Path(__file__).resolve().parents[1]


def _fill(path: Path) -> None:
    """Write zeros until the file system is full."""
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass


@pytest.mark.slow
def test_a_full_store_fails_the_sweep_and_resume_finishes_it_once_space_is_freed(tmp_path):
    config = tmp_path / "faults.yaml"
    config.write_text(yaml.safe_dump(STUDY))
    with tmpfs(tmp_path / "mnt", "64m") as mnt:
        storage, name = mnt / "store", "full-disk"
        exp = storage / name
        driver = _start("--config", str(config), "--storage", str(storage), "--name", name)
        _wait("trials to start", lambda: list(exp.glob(f"{JOURNAL}/*/start-*.json")), timeout=600, proc=driver)
        filler = mnt / "filler"
        _fill(filler)
        out, _ = driver.communicate(timeout=900)
        print(out[-6000:])
        assert driver.returncode == 2
        error = out[out.rindex("error: ") :]  # stopped at the first trial failure: the store cannot be written
        assert f"store {storage}: cannot write there: No space left on device" in error
        assert "The sweep stopped: its store cannot be used" in error
        assert f"--resume --name {name} --storage {storage}" in error
        assert not list(storage.rglob("*.tmp-*"))  # no partial file of pwlock's
        filler.unlink()
        again = subprocess.run(
            sweep_command("--resume", "--name", name, "--storage", str(storage)),
            capture_output=True,
            text=True,
            timeout=900,
        )
        print(again.stdout[-3000:], again.stderr[-6000:])
        assert again.returncode == 0
        for j in (exp / JOURNAL).iterdir():
            assert (j / DONE).is_file() and attempt_records([p.name for p in j.iterdir()])
        check_local_results(exp)
