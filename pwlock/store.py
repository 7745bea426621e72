"""Where artifacts and results live: a local directory, or an S3-compatible bucket by URL.

    results/                       a local directory (the default)
    s3://bucket/prefix             AWS S3, MinIO, SeaweedFS, R2, GCS's S3 API, ...

Under one root: `artifacts/<key>/` (upstream artifacts, keyed by a content hash of the config that
produced them, so a study builds each once and later studies reuse it) and one directory per
experiment (Tune's experiment state, trial results and checkpoints, study.yaml, summary.csv, ...).

Both backends speak pyarrow.fs, the filesystem layer Ray Tune itself uses, so the same object serves
artifacts and Tune. Credentials come only from the standard AWS chain (environment, ~/.aws, instance
role); the endpoint and region from arguments, the study's `store:` config or AWS_ENDPOINT_URL /
AWS_REGION. Nothing secret is ever passed to pyarrow explicitly, so nothing secret is pickled into
Tune's experiment state or written to results.

Artifacts are written atomically: locally a scratch directory is renamed into place; on S3 every
file is uploaded and checked first and the metadata object last, and only an artifact with its
metadata counts as built. The metadata lists every file with its size and SHA-256 and carries a
hash of itself (pwlock.integrity): an artifact whose files or metadata differ from what was built
counts as not built, is never used, and is built again. Store calls retry transient errors with
backoff for `retry_s` seconds, then fail with a message naming the store; wrong credentials, missing
buckets, a full disk, a read-only or unwritable directory fail at once.

    python -m pwlock.store verify STORE     # check every artifact of a store; exit 1 if one is damaged
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.fs as pafs
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_before_delay, wait_exponential

from pwlock import cache_root, integrity
from pwlock.localfs import whole_files_filesystem

log = logging.getLogger(__name__)

ARTIFACTS = "artifacts"
META = "pwlock-meta.json"
OWNER = ".owner.json"  # beside a scratch directory: who builds in it
CHUNK = 8 << 20
T = TypeVar("T")


class StoreError(RuntimeError):
    """The store cannot be used: unreachable, wrong credentials, missing bucket, or lost data."""


class StoreURLError(StoreError, ValueError):
    """A store given as something that is neither a directory nor s3://bucket/prefix."""


class ArtifactDamaged(StoreError):
    """An artifact whose files or metadata differ from what was built."""

    def __init__(self, message: str, why: str):
        super().__init__(message)
        self.why = why


def content_key(stage: str, spec: Mapping[str, Any]) -> str:
    """`<stage>-<16 hex digits>`: a hash of the canonical JSON of everything the stage depends on."""
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return f"{stage}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


@dataclass(frozen=True)
class StoreSpec:
    """What a worker needs to open the same store: never credentials."""

    url: str
    endpoint_url: str | None = None
    region: str | None = None
    retry_s: float = 120.0


_PERMANENT = (
    "ACCESS_DENIED",
    "AccessDenied",
    "INVALID_ACCESS_KEY",
    "InvalidAccessKeyId",
    "SIGNATURE",
    "SignatureDoesNotMatch",
    "NO_SUCH_BUCKET",
    "NoSuchBucket",
    "Forbidden",
)


# A full disk, a quota, a read-only file system or a denied permission does not pass by waiting.
_PERMANENT_ERRNO = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.ENAMETOOLONG}
_PERMANENT_TEXT = ("No space left", "Disk quota", "Read-only file system", "Permission denied", "QuotaExceeded")


def _transient(e: BaseException) -> bool:
    if isinstance(e, (FileNotFoundError, NotADirectoryError, IsADirectoryError, StoreError)):
        return False
    if not isinstance(e, OSError) or e.errno in _PERMANENT_ERRNO:
        return False
    return not any(s in str(e) for s in (*_PERMANENT, *_PERMANENT_TEXT))


@dataclass(frozen=True)
class ArtifactState:
    """What the store holds of one artifact: its metadata (None: none) and what is wrong with it."""

    key: str
    meta: dict[str, Any] | None
    problems: tuple[str, ...] = ()

    @property
    def built(self) -> bool:
        return self.meta is not None and not self.problems

    @property
    def legacy(self) -> bool:
        return self.meta is not None and integrity.legacy(self.meta)

    @property
    def label(self) -> str:
        return str((self.meta or {}).get("label", self.key))

    def why(self) -> str:
        return "; ".join(self.problems)


class Store:
    """A store root on a pyarrow filesystem. Use `open_store` to make one."""

    def __init__(self, spec: StoreSpec, fs: pafs.FileSystem, root: str, cache: Path | None = None):
        self.spec, self.fs, self.root = spec, fs, root.rstrip("/")
        self.local = isinstance(fs, pafs.LocalFileSystem)
        self.cache = cache or cache_root()

    @property
    def url(self) -> str:
        return self.spec.url

    def __repr__(self) -> str:
        return f"Store({self.url})"

    def path(self, *parts: str) -> str:
        """A path in the store's filesystem (for pyarrow and Tune)."""
        return "/".join([self.root, *parts])

    def uri(self, *parts: str) -> str:
        """A path for people and for `open_store` / `pwlock.analysis`: a directory or s3:// URL."""
        return self.path(*parts) if self.local else "s3://" + self.path(*parts)

    # -- retries ----------------------------------------------------------------------------------

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run a store operation, retrying transient errors with backoff for `spec.retry_s`."""

        def warn(state: RetryCallState) -> None:
            log.warning(
                "store %s: %s failed (%s); retry %d", self.url, what, state.outcome.exception(), state.attempt_number
            )

        retrying = Retrying(
            retry=retry_if_exception(_transient),
            # No sleep that would end past retry_s: a store that stays down fails within retry_s
            # plus one request's time.
            stop=stop_before_delay(self.spec.retry_s),
            wait=wait_exponential(multiplier=0.5, max=15),
            before_sleep=warn,
            reraise=True,
        )
        try:
            return retrying(fn)
        except FileNotFoundError:
            raise
        except OSError as e:
            kind = "gave up after retrying for %.0f s" % self.spec.retry_s if _transient(e) else "refused"
            raise StoreError(f"store {self.url}: {what} {kind}: {e}") from e

    def quick(self, timeout_s: float = 5.0) -> Store:
        """The same store, giving up after `timeout_s` and single-try requests: for probes."""
        spec = StoreSpec(self.spec.url, self.spec.endpoint_url, self.spec.region, timeout_s)
        fs = self.fs if self.local else s3_filesystem(self.spec, connect_timeout=2, attempts=1)
        return Store(spec, fs, self.root, self.cache)

    def check(self, timeout_s: float = 5.0, quick: Store | None = None) -> None:
        """Fail fast with a clear message if the store cannot be written: run before any work.
        `quick` (from `quick()`) probes without making an S3 client, which, while another thread's
        request is retrying against a dead server, waits for that request to end."""
        endpoint = s3_endpoint(self.spec)
        if self.local:
            self._check_directory()
            self.clean_scratch()
            return
        probe = self.path(".pwlock-probe", uuid.uuid4().hex)
        quick = quick or self.quick(timeout_s)
        bucket = self.root.split("/", 1)[0]
        try:
            info = quick.call("looking up the bucket", lambda: quick.fs.get_file_info(bucket))
            if info.type == pafs.FileType.NotFound:
                raise StoreError(f"store {self.url}: bucket {bucket!r} does not exist; create it first")
            quick.call("writing a probe object", lambda: quick._put(probe, b"ok"))
            quick.call("deleting the probe object", lambda: quick.fs.delete_file(probe))
            self.clean_scratch()
        except StoreError as e:
            raise StoreError(
                f"{e}\n(credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
                f"~/.aws or an instance role; endpoint {endpoint or 'AWS default'})"
            ) from None

    def _check_directory(self) -> None:
        """A local store: a directory, or one to create in an existing directory; writable."""
        root = Path(self.root)
        expected = "expected a directory (created if its parent exists) or s3://bucket/prefix"
        if root.exists() and not root.is_dir():
            raise StoreError(f"store {self.url}: is a file, not a directory; {expected}")
        if not root.exists() and not root.parent.is_dir():
            raise StoreError(
                f"store {self.url}: its parent directory {root.parent} does not exist; {expected} "
                "(create the parent first if the path is right)"
            )
        try:
            root.mkdir(exist_ok=True)
            self._put(self.path(f".pwlock-probe-{uuid.uuid4().hex[:8]}"), b"ok", keep=False)
        except OSError as e:
            full = e.errno in (errno.ENOSPC, errno.EDQUOT)  # the right place, no room
            raise StoreError(
                f"store {self.url}: cannot write there: {e.strerror or e}" + ("" if full else f"; {expected}")
            ) from None

    # -- small objects ----------------------------------------------------------------------------

    def _put(self, path: str, data: bytes, keep: bool = True) -> None:
        if self.local:  # rename makes the write atomic; an object store's PUT already is
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            _atomic_local(lambda tmp: Path(tmp).write_bytes(data), path, keep)
            return
        with self.fs.open_output_stream(path) as f:
            f.write(data)

    def write_bytes(self, rel: str, data: bytes) -> None:
        self.call(f"writing {rel}", lambda: self._put(self.path(rel), data))

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    def read_bytes(self, rel: str) -> bytes:
        def read() -> bytes:
            with self.fs.open_input_stream(self.path(rel)) as f:
                return f.read()

        return self.call(f"reading {rel}", read)

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode()

    def exists(self, rel: str) -> bool:
        info = self.call(f"looking up {rel}", lambda: self.fs.get_file_info(self.path(rel)))
        return info.type != pafs.FileType.NotFound

    def listdir(self, rel: str) -> list[str]:
        """Names directly under `rel` (empty if it does not exist)."""
        sel = pafs.FileSelector(self.path(rel), allow_not_found=True)
        infos = self.call(f"listing {rel}", lambda: self.fs.get_file_info(sel))
        return sorted(i.base_name for i in infos)

    def upload_dir(self, local: Path, rel: str) -> None:
        """Copy a local directory's files under `rel`, checking each arrived whole (pyarrow's bulk
        copy can drop a failed upload with only a printed warning, so files go one by one)."""
        for src in sorted(p for p in Path(local).rglob("*") if p.is_file()):
            dest = self.path(rel, src.relative_to(local).as_posix())
            self.call(f"uploading {src.name}", lambda s=src, d=dest: self._upload_file(s, d))

    def _upload_file(self, src: Path, dest: str) -> None:
        if self.local:
            Path(dest).parent.mkdir(parents=True, exist_ok=True)
            _atomic_local(lambda tmp: shutil.copyfile(src, tmp), dest)
            return
        with open(src, "rb") as f, self.fs.open_output_stream(dest) as out:
            while chunk := f.read(CHUNK):
                out.write(chunk)
        size = self.fs.get_file_info(dest).size
        if size != src.stat().st_size:
            raise OSError(f"{dest}: uploaded {size} bytes of {src.stat().st_size}")

    # -- artifacts --------------------------------------------------------------------------------

    def has(self, key: str) -> bool:
        """Built and whole as far as a look without reading its files tells: metadata intact, every
        listed file there with its size. What `check_artifact` and `artifact_dir` check in full."""
        return self.inspect(key).built

    def meta(self, key: str) -> dict[str, Any]:
        return json.loads(self.read_text(f"{ARTIFACTS}/{key}/{META}"))

    def inspect(self, key: str, deep: bool = False) -> ArtifactState:
        """What is wrong with artifact `key` where the store holds it: its metadata, its files'
        presence and sizes, and with `deep` their hashes (read from the store, nothing kept)."""
        rel = f"{ARTIFACTS}/{key}"
        try:
            raw = self.read_text(f"{rel}/{META}")
        except FileNotFoundError:
            return ArtifactState(key, None, ("it has no metadata: never built, or its build did not finish",))
        try:
            meta = json.loads(raw)
        except ValueError as e:
            return ArtifactState(key, {}, (f"its metadata is not valid JSON ({e})",))
        if problem := integrity.meta_problem(meta):
            return ArtifactState(key, meta, (problem,))
        if self.local:
            return ArtifactState(key, meta, tuple(integrity.local_problems(meta, Path(self.path(rel)), deep)))
        if integrity.legacy(meta):
            return ArtifactState(key, meta)  # nothing recorded to compare with; checked when downloaded
        sel = pafs.FileSelector(self.path(rel), recursive=True)
        infos = self.call(f"listing {rel}", lambda: self.fs.get_file_info(sel))
        prefix = self.path(rel) + "/"
        sizes = {i.path.removeprefix(prefix): i.size for i in infos if i.type == pafs.FileType.File}
        problems = integrity.size_problems(meta, sizes)
        if deep and not problems:
            for name, entry in meta[integrity.FILES].items():
                digest = self.call(f"reading {rel}/{name}", lambda n=name: self._object_sha256(f"{rel}/{n}"))
                if problem := integrity.hash_problem(name, entry, digest):
                    problems.append(problem)
        return ArtifactState(key, meta, tuple(problems))

    def _object_sha256(self, rel: str) -> str:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return integrity.stream_sha256(f)

    def check_artifact(self, key: str) -> ArtifactState:
        """Artifact `key` checked in full before it is reused: every file's hash, in the store's own
        directory, or on S3 as downloaded into this node's cache (where its users read it)."""
        if self.local:
            return self.inspect(key, deep=True)
        state = self.inspect(key)
        if not state.built or not state.meta.get(integrity.FILES):
            return state
        try:
            self.artifact_dir(key)
        except ArtifactDamaged as e:
            return ArtifactState(key, state.meta, (e.why,))
        return state

    def artifact_dir(self, key: str) -> Path:
        """A local directory holding artifact `key`, checked whole (each file hashed once per
        process): the store's own locally, else a copy in this node's cache. Raises StoreError if
        it is not built, ArtifactDamaged if it differs from what was built."""
        if self.local:
            state = self.inspect(key, deep=True)
            if not state.built:
                raise _unusable(self, state)
            return Path(self.path(ARTIFACTS, key))
        target = self.cache / "artifacts" / key
        if (target / META).is_file():
            problems = _cached_problems(target)
            if not problems:
                return target
            log.warning("cached copy %s of artifact %s is damaged (%s); downloading it again", target, key, problems)
            _remove_dir(target)
        state = self.inspect(key)
        if not state.built:
            raise _unusable(self, state)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=target.parent))
        try:
            self.download_dir(f"{ARTIFACTS}/{key}", tmp)
            problems = integrity.local_problems(state.meta, tmp, deep=True)
            if problems:
                raise _unusable(self, ArtifactState(key, state.meta, tuple(problems)))
            try:
                os.rename(tmp, target)
            except OSError:  # another process on this node fetched it first
                if not (target / META).is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def download_dir(self, rel: str, dest: Path | None = None) -> Path:
        """A local copy of directory `rel`: the directory itself in a local store, else its files
        downloaded (each checked whole) into `dest` or a fresh directory in the cache."""
        if self.local and dest is None:
            return Path(self.path(rel))
        if dest is None:
            (self.cache / "downloads").mkdir(parents=True, exist_ok=True)
            dest = Path(tempfile.mkdtemp(prefix="dir-", dir=self.cache / "downloads"))
        sel = pafs.FileSelector(self.path(rel), recursive=True)
        files = [
            i for i in self.call(f"listing {rel}", lambda: self.fs.get_file_info(sel)) if i.type == pafs.FileType.File
        ]
        prefix = self.path(rel) + "/"
        for info in files:
            target = dest / info.path.removeprefix(prefix)
            target.parent.mkdir(parents=True, exist_ok=True)
            self.call(f"downloading {info.path}", lambda i=info, t=target: self._download_file(i, t))
        return dest

    def delete_file(self, rel: str) -> None:
        def delete() -> None:
            try:
                self.fs.delete_file(self.path(rel))
            except FileNotFoundError:
                pass

        self.call(f"deleting {rel}", delete)

    def delete_dir(self, rel: str) -> None:
        def delete() -> None:
            try:
                self.fs.delete_dir(self.path(rel))
            except FileNotFoundError:
                pass

        self.call(f"deleting {rel}", delete)

    def _download_file(self, info: pafs.FileInfo, dest: Path) -> None:
        try:
            with self.fs.open_input_stream(info.path) as f, open(dest, "wb") as out:
                while chunk := f.read(CHUNK):
                    out.write(chunk)
            if dest.stat().st_size != info.size:
                raise OSError(f"{info.path}: downloaded {dest.stat().st_size} bytes of {info.size}")
        except BaseException:
            dest.unlink(missing_ok=True)
            raise

    def _scratch_base(self) -> Path:
        return Path(self.root) / ".scratch" if self.local else self.cache / "scratch"

    def scratch_dir(self, key: str) -> Path:
        """A fresh local directory to build artifact `key` in, with an owner file beside it (this
        host and process), so that one a killed build left can be told from one in use."""
        path = self._scratch_base() / f"{key}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "created": time.time()}
        path.with_name(path.name + OWNER).write_text(json.dumps(owner))
        return path

    def drop_scratch(self, path: Path) -> None:
        """Remove a scratch directory and its owner file."""
        shutil.rmtree(path, ignore_errors=True)
        path.with_name(path.name + OWNER).unlink(missing_ok=True)

    def clean_scratch(self, unowned_after_s: float = 86400.0) -> list[str]:
        """Remove scratch directories that builds killed on this host left behind (their process is
        gone), and ones without an owner file older than `unowned_after_s`; their names."""
        base = self._scratch_base()
        removed = []
        for path in sorted(base.iterdir()) if base.is_dir() else []:
            if not path.is_dir():
                continue
            try:
                owner = json.loads(path.with_name(path.name + OWNER).read_text())
                dead = owner["host"] == socket.gethostname() and not _alive(owner["pid"])
            except (OSError, ValueError, KeyError):
                dead = time.time() - path.stat().st_mtime > unowned_after_s
            if dead:
                self.drop_scratch(path)
                removed.append(path.name)
        if removed:
            log.info("store %s: removed %d scratch directories of dead builds", self.url, len(removed))
        return removed

    def commit(self, key: str, scratch: Path, meta: Mapping[str, Any], replace: bool = False) -> str:
        """Publish a finished scratch directory as artifact `key`, atomically, its metadata listing
        every file's size and hash. If another worker published the same key first and its artifact
        is whole, it stands (same config, same content); a damaged one (`replace`: the caller found
        it so) is replaced."""
        sealed = integrity.seal({**meta, integrity.FILES: integrity.manifest(scratch, skip=[META])})
        body = json.dumps(sealed, indent=2, sort_keys=True)
        if self.local:
            (scratch / META).write_text(body)
            target = Path(self.path(ARTIFACTS, key))
            target.parent.mkdir(parents=True, exist_ok=True)
            for _ in range(3):  # each round: publish, or keep a whole one, or move a damaged one aside
                try:
                    os.rename(scratch, target)
                    self.drop_scratch(scratch)  # its owner file
                    return str(target)
                except OSError:
                    if not target.exists():
                        raise
                if self.inspect(key, deep=True).built:
                    self.drop_scratch(scratch)
                    return str(target)
                aside = self.scratch_dir(f"{key}-damaged")
                try:
                    os.replace(target, aside)
                except FileNotFoundError:  # another worker moved it first
                    pass
                self.drop_scratch(aside)
            raise StoreError(f"store {self.url}: could not publish artifact {key}: others kept replacing it")
        state = self.inspect(key)
        if replace or not state.built:
            if state.meta is not None:  # its metadata first: from now on it does not count as built
                self.call(f"deleting {key}'s metadata", lambda: self.fs.delete_file(self.path(ARTIFACTS, key, META)))
            self.delete_dir(f"{ARTIFACTS}/{key}")
            self.upload_dir(scratch, f"{ARTIFACTS}/{key}")
            self.write_text(f"{ARTIFACTS}/{key}/{META}", body)  # last: now it counts as built
        self.drop_scratch(scratch)
        return self.uri(ARTIFACTS, key)

    # -- Tune -------------------------------------------------------------------------------------

    def tune_storage(self) -> dict[str, Any]:
        """`storage_path` / `storage_filesystem` for tune.RunConfig."""
        if self.local:  # Tune's files written whole or not at all (a full disk cuts none off)
            return {"storage_path": self.root, "storage_filesystem": whole_files_filesystem()}
        return {"storage_path": self.root, "storage_filesystem": s3_filesystem(self.spec, kind=TuneS3FileSystem)}


class RetryingS3FileSystem(pafs.S3FileSystem):
    """pyarrow's S3 filesystem, pickled as what made it: pyarrow's own pickling drops the retry
    strategy (and the endpoint's scheme and timeouts come along too). Never holds credentials."""

    made_from: tuple[StoreSpec, float, int]

    def __reduce__(self):
        return (s3_filesystem, self.made_from)


class TuneS3FileSystem(RetryingS3FileSystem):
    """Tune's filesystem for an S3 store. In the driver, the store's own filesystem: Tune's uploads
    there (experiment state, results) are snapshots it takes again, and a failed one only logs.
    Pickled, as Tune sends it to trial workers, it becomes `TuneS3Handler` over the store's spec:
    a worker's uploads (checkpoints, which fail the trial when they fail) retry for `retry_s` like
    pwlock's own calls. Not in the driver: a handler is Python called from Arrow's threads, and one
    of those still retrying when the driver exits (a dead store) aborts the interpreter."""

    def __reduce__(self):
        return (_worker_filesystem, (self.made_from[0],))


def _worker_filesystem(spec: StoreSpec) -> pafs.PyFileSystem:
    return pafs.PyFileSystem(TuneS3Handler(spec))


class TuneS3Handler(pafs.FileSystemHandler):
    """An S3 store as a trial worker's Tune filesystem: each operation retried like the store's own
    (`Store.call`, for `retry_s`), so that Tune's uploads in trial workers (checkpoints) ride out an
    outage as pwlock's do, and fail with the store's message once it stays down. Pickled as its
    spec: no credentials, and the retries come along."""

    def __init__(self, spec: StoreSpec):
        self.spec = spec
        self.store = open_store(spec)
        self.fs = self.store.fs

    def __reduce__(self):
        return (TuneS3Handler, (self.spec,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TuneS3Handler) and other.spec == self.spec

    def __ne__(self, other: object) -> bool:
        return not self == other

    def _call(self, what: str, path: str, fn: Callable[[], T]) -> T:
        return self.store.call(f"{what} {path} (Tune)", fn)

    def get_type_name(self) -> str:
        return "pwlock-s3"

    def normalize_path(self, path: str) -> str:
        return self.fs.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self._call("looking up", ",".join(paths), lambda: self.fs.get_file_info(paths))

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self._call("listing", selector.base_dir, lambda: self.fs.get_file_info(selector))

    def create_dir(self, path: str, recursive: bool) -> None:
        self._call("creating", path, lambda: self.fs.create_dir(path, recursive=recursive))

    def delete_dir(self, path: str) -> None:
        self._call("deleting", path, lambda: self.fs.delete_dir(path))

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self._call("emptying", path, lambda: self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok))

    def delete_root_dir_contents(self) -> None:
        raise OSError("pwlock's S3 filesystem does not empty the bucket")

    def delete_file(self, path: str) -> None:
        self._call("deleting", path, lambda: self.fs.delete_file(path))

    def move(self, src: str, dest: str) -> None:
        self._call("moving", f"{src} to {dest}", lambda: self.fs.move(src, dest))

    def copy_file(self, src: str, dest: str) -> None:
        self._call("copying", f"{src} to {dest}", lambda: self.fs.copy_file(src, dest))

    def open_input_stream(self, path: str) -> pa.NativeFile:
        """The whole object, read with retries (Tune's files are small: records and state)."""
        return pa.BufferReader(self._call("reading", path, lambda: self._read(path)))

    def open_input_file(self, path: str) -> pa.NativeFile:
        return self.open_input_stream(path)

    def _read(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def open_output_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        return pa.PythonFile(_SpooledUpload(self, path), mode="w")

    def open_append_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        raise OSError("S3 objects cannot be appended to")


class _SpooledUpload:
    """A file kept locally as it is written, uploaded whole when closed, with the store's retries."""

    def __init__(self, handler: TuneS3Handler, path: str):
        self.handler, self.path, self.closed = handler, path, False
        self.f = tempfile.SpooledTemporaryFile(max_size=CHUNK)

    def write(self, data: Any) -> int:
        return self.f.write(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.handler._call("writing", self.path, self._upload)
        finally:
            self.f.close()

    def _upload(self) -> None:
        self.f.seek(0)
        with self.handler.fs.open_output_stream(self.path) as out:
            while chunk := self.f.read(CHUNK):
                out.write(chunk)


def _unusable(store: Store, state: ArtifactState) -> StoreError:
    where = f"store {store.url}: artifact {state.key}"
    if state.meta is None:
        return StoreError(f"{where} is not built ({state.why()})")
    return ArtifactDamaged(
        f"{where} ({state.label}) is damaged: {state.why()}; running the sweep again builds it anew", state.why()
    )


def _cached_problems(directory: Path) -> list[str]:
    """What is wrong with a cached copy of an artifact, judged by its own metadata."""
    try:
        meta = json.loads((directory / META).read_text())
    except ValueError as e:
        return [f"its metadata is not valid JSON ({e})"]
    if problem := integrity.meta_problem(meta):
        return [problem]
    return integrity.local_problems(meta, directory, deep=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def _remove_dir(path: Path) -> None:
    """Remove a directory others may be reading or removing too: renamed away first, so that no one
    takes a half-removed one for whole."""
    aside = path.with_name(f"{path.name}.removing-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def _atomic_local(write: Callable[[str], Any], path: str, keep: bool = True) -> None:
    """Write a local file under a temporary name, then rename it into place (`keep`) or remove it
    (a probe); a failed write leaves nothing behind, not even its temporary file."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        write(tmp)
        if keep:
            os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/prefix` -> ("bucket", "prefix")."""
    rest = url.removeprefix("s3://")
    bucket, _, prefix = rest.rstrip("/").partition("/")
    if not bucket:
        raise StoreURLError(f"storage {url!r}: no bucket; expected s3://bucket/prefix")
    return bucket, prefix.strip("/")


# allow_delayed_open: a small object is one PUT, not a three-request multipart upload (16 -> 10
# requests per trial); no background writes: with delayed open they buffer Tune's 64 MiB copy
# chunks (driver peak 1,006 -> 346 MB at 1,000 trials).
S3_WRITES = {"allow_delayed_open": True, "background_writes": False}


def s3_endpoint(spec: StoreSpec) -> str | None:
    return spec.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def s3_filesystem(
    spec: StoreSpec, connect_timeout: float = 5, attempts: int = 3, kind: type = RetryingS3FileSystem
) -> RetryingS3FileSystem:
    """The filesystem of an S3 store (a `kind` of RetryingS3FileSystem); the endpoint and region
    resolved here travel with it."""
    endpoint = s3_endpoint(spec)
    region = spec.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    kwargs: dict[str, Any] = {}
    if endpoint:
        scheme, _, host = endpoint.rpartition("://")
        kwargs.update(endpoint_override=host.rstrip("/"), scheme=scheme or "https")
    # Each request retries a blip on its own (AWS standard backoff: under 1 + 2 s over 3 tries);
    # riding out an outage is Store.call's job, for retry_s. More tries here kept a request against a
    # dead server going for 70-90 s (10 tries), past retry_s, and a driver's exit waited for it.
    fs = kind(
        region=region,
        connect_timeout=connect_timeout,
        request_timeout=60,
        **S3_WRITES,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=attempts),
        **kwargs,
    )
    fs.made_from = (StoreSpec(spec.url, endpoint, region, spec.retry_s), connect_timeout, attempts)
    return fs


def open_store(
    url: str | os.PathLike | StoreSpec,
    endpoint_url: str | None = None,
    region: str | None = None,
    retry_s: float = 120.0,
) -> Store:
    """A local directory (also `file://...`) or `s3://bucket/prefix`."""
    spec = url if isinstance(url, StoreSpec) else StoreSpec(str(url), endpoint_url, region, retry_s)
    raw = spec.url
    _check_url(raw)
    if raw.startswith("s3://"):
        bucket, prefix = parse_s3_url(raw)
        return Store(
            StoreSpec(f"s3://{bucket}/{prefix}".rstrip("/"), spec.endpoint_url, spec.region, spec.retry_s),
            s3_filesystem(spec),
            f"{bucket}/{prefix}".rstrip("/"),
        )
    root = str(Path(raw.removeprefix("file://")).expanduser().resolve())
    return Store(StoreSpec(root, None, None, spec.retry_s), pafs.LocalFileSystem(), root)


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


def _check_url(raw: str) -> None:
    """Refuse what looks like a URL but is not s3://bucket/prefix or file://: a typo must not become
    a local directory named `s3:`."""
    expected = "expected a local directory or s3://bucket/prefix"
    if not raw.strip():
        raise StoreURLError(f"storage {raw!r}: empty; {expected}")
    m = _SCHEME.match(raw)
    if m is None or raw.startswith(("s3://", "file://")):
        if raw.startswith("s3://"):
            parse_s3_url(raw)
        return
    scheme = m.group(1)
    if "://" in raw and scheme.lower() not in ("s3", "file"):
        raise StoreURLError(f"storage {raw!r}: {scheme}:// is not supported; {expected}")
    raise StoreURLError(
        f"storage {raw!r}: a malformed URL; {expected} (a directory whose name has a colon: write ./{raw})"
    )


# -- python -m pwlock.store verify ------------------------------------------------------------------


def verify(store: Store) -> tuple[list[str], bool]:
    """Every artifact of `store` checked in full (each file's hash, read from the store): a report's
    lines, and whether none is damaged."""
    keys = store.listdir(ARTIFACTS)
    lines, counts = [], {"ok": 0, "legacy": 0, "damaged": 0, "incomplete": 0}
    for key in keys:
        state = store.inspect(key, deep=True)
        if state.meta is None:
            status, note = "incomplete", state.why()
        elif state.problems:
            status, note = "damaged", state.why()
        elif state.legacy:
            checked = "safetensors sizes checked" if store.local else "nothing recorded to check against"
            status, note = "legacy", f"built before pwlock recorded hashes: {checked}"
        else:
            files = state.meta[integrity.FILES]
            size = sum(f["size"] for f in files.values())
            status, note = "ok", f"{len(files)} files, {size:,} bytes" if files else "metadata only, its digest holds"
        counts[status] += 1
        lines.append(f"  {status:<10} {key}  {state.label}: {note}")
    head = f"store {store.url}: {len(keys)} artifacts"
    tail = ", ".join(f"{n} {status}" for status, n in counts.items())
    return [head, *lines, tail], counts["damaged"] == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pwlock.store", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("verify", help="check every artifact's files and metadata; exit 1 if one is damaged")
    check.add_argument("store", help="a directory or s3://bucket/prefix")
    check.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL)")
    check.add_argument("--region", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        store = open_store(args.store, args.endpoint_url, args.region)
        if store.local and not Path(store.root).is_dir():
            raise StoreError(f"store {store.url}: no such directory")
        lines, healthy = verify(store)
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
