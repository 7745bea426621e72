"""A small file system of a test's own (tmpfs), so that a full disk and a read-only store are real."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def tmpfs(point: Path, size: str = "256k") -> Iterator[Path]:
    """Mount a tmpfs of `size` at `point` (created) for the block; skips the test where mounting is
    not allowed (it needs root)."""
    point.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)]
    try:
        subprocess.run(cmd, check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"cannot mount a tmpfs here: {e}")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=True)


def read_only(point: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)
