"""What an artifact is made of, so that a damaged one is never used: its files' sizes and SHA-256
hashes, and a hash of its metadata (which holds stored evaluations' numbers), both written into the
metadata, which is written last.

Artifacts built before pwlock recorded hashes ("legacy") carry neither; what can still be checked
of them is checked: safetensors files whose header promises more bytes than the file holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

FILES = "files"  # metadata field: {relative path: {"size": bytes, "sha256": hex}}
DIGEST = "digest"  # metadata field: sha256 of the metadata's canonical JSON without this field
CHUNK = 8 << 20

# (path, inode, size, mtime) -> sha256: a file is hashed once per process while it is unchanged
_hashed: dict[tuple[str, int, int, int], str] = {}


def stream_sha256(f: BinaryIO) -> str:
    h = hashlib.sha256()
    while chunk := f.read(CHUNK):
        h.update(chunk)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """The file's SHA-256, computed once per process unless the file changes (size, mtime, inode)."""
    st = path.stat()
    key = (os.path.abspath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _hashed:
        with open(path, "rb") as f:
            _hashed[key] = stream_sha256(f)
    return _hashed[key]


def manifest(directory: Path, skip: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """Every file under `directory` (but `skip`, relative paths) with its size and hash."""
    skipped = set(skip)
    out = {}
    for p in sorted(q for q in directory.rglob("*") if q.is_file()):
        rel = p.relative_to(directory).as_posix()
        if rel not in skipped:
            out[rel] = {"size": p.stat().st_size, "sha256": file_sha256(p)}
    return out


def _canonical(meta: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in meta.items() if k != DIGEST}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()


def seal(meta: Mapping[str, Any]) -> dict[str, Any]:
    """`meta` as JSON will read it back, with its digest."""
    plain = json.loads(json.dumps(dict(meta), default=str))
    plain[DIGEST] = hashlib.sha256(_canonical(plain)).hexdigest()
    return plain


def legacy(meta: Mapping[str, Any]) -> bool:
    """Built before pwlock recorded files and hashes."""
    return FILES not in meta and DIGEST not in meta


def meta_problem(meta: Mapping[str, Any]) -> str | None:
    if legacy(meta):
        return None
    if DIGEST not in meta or FILES not in meta:
        return f"its metadata lacks {FILES if DIGEST in meta else DIGEST!r}"
    if hashlib.sha256(_canonical(meta)).hexdigest() != meta[DIGEST]:
        return "its metadata was changed after it was written (digest mismatch)"
    return None


def size_problems(meta: Mapping[str, Any], sizes: Mapping[str, int]) -> list[str]:
    """Listed files that are missing or of another size than recorded (`sizes`: what is there)."""
    out = []
    for rel, entry in meta.get(FILES, {}).items():
        if rel not in sizes:
            out.append(f"{rel} is missing")
        elif sizes[rel] != entry["size"]:
            out.append(f"{rel} has {sizes[rel]:,} bytes, expected {entry['size']:,}")
    return out


def hash_problem(rel: str, expected: Mapping[str, Any], actual_sha256: str) -> str | None:
    if actual_sha256 != expected["sha256"]:
        got, want = actual_sha256[:12], expected["sha256"][:12]
        return f"{rel}'s content differs from what was built (sha256 {got}…, expected {want}…)"
    return None


def local_problems(meta: Mapping[str, Any], directory: Path, deep: bool) -> list[str]:
    """What is wrong with an artifact's files in a local directory: sizes always, hashes if `deep`;
    a legacy artifact's safetensors headers."""
    if legacy(meta):
        return [p for f in sorted(directory.rglob("*.safetensors")) if (p := safetensors_problem(f, directory))]
    files = meta[FILES]
    sizes = {rel: (directory / rel).stat().st_size for rel in files if (directory / rel).is_file()}
    problems = size_problems(meta, sizes)
    if deep and not problems:
        problems = [p for rel, e in files.items() if (p := hash_problem(rel, e, file_sha256(directory / rel)))]
    return problems


def safetensors_problem(path: Path, root: Path) -> str | None:
    """A safetensors file shorter or longer than its header says (truncated, or not safetensors)."""
    rel = path.relative_to(root).as_posix()
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                return f"{rel} is truncated: its header alone needs {n + 8:,} bytes, the file has {size:,}"
            header = json.loads(f.read(n))
    except (struct.error, ValueError) as e:
        return f"{rel} is not a readable safetensors file ({e})"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        return f"{rel} has {size:,} bytes, its header says {8 + n + end:,}"
    return None
