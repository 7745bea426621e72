"""Where artifacts live: a local directory now, an S3-compatible bucket by URL later.

Upstream artifacts (π_strong, locked models, policy scores) are keyed by a content hash of the
config that produced them, so a study builds each one once and every later study with the same
upstream config reuses it. Writes are atomic: an artifact is built in a scratch directory and
renamed into place, so a half-written model is never taken as built.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ARTIFACTS = "artifacts"
META = "pwlock-meta.json"


def content_key(stage: str, spec: Mapping[str, Any]) -> str:
    """`<stage>-<16 hex digits>`: a hash of the canonical JSON of everything the stage depends on."""
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return f"{stage}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


class LocalStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()

    @property
    def url(self) -> str:
        return str(self.root)

    def artifact_dir(self, key: str) -> Path:
        return self.root / ARTIFACTS / key

    def has(self, key: str) -> bool:
        return (self.artifact_dir(key) / META).is_file()

    def meta(self, key: str) -> dict[str, Any]:
        return json.loads((self.artifact_dir(key) / META).read_text())

    def scratch_dir(self, key: str) -> Path:
        path = self.root / ".scratch" / f"{key}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        return path

    def commit(self, key: str, scratch: Path, meta: Mapping[str, Any]) -> Path:
        """Publish a finished scratch directory as artifact `key`, atomically. If another worker
        published the same key first, its artifact stands (same config, same content)."""
        (scratch / META).write_text(json.dumps(dict(meta), indent=2, sort_keys=True, default=str))
        target = self.artifact_dir(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(scratch, target)
        except OSError:
            if not self.has(key):
                raise
            shutil.rmtree(scratch, ignore_errors=True)
        return target


def open_store(url: str | os.PathLike) -> LocalStore:
    url = str(url)
    if "://" in url and not url.startswith("file://"):
        scheme = url.split("://", 1)[0]
        raise ValueError(f"storage {url!r}: the {scheme}:// store is not available yet; use a local directory")
    return LocalStore(url.removeprefix("file://"))
