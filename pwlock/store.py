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
metadata counts as built. Store calls retry transient errors with backoff for `retry_s` seconds,
then fail with a message naming the store; wrong credentials and missing buckets fail at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pyarrow.fs as pafs
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_delay, wait_exponential

log = logging.getLogger(__name__)

ARTIFACTS = "artifacts"
META = "pwlock-meta.json"
CHUNK = 8 << 20
T = TypeVar("T")


class StoreError(RuntimeError):
    """The store cannot be used: unreachable, wrong credentials, missing bucket, or lost data."""


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


def _transient(e: BaseException) -> bool:
    if isinstance(e, (FileNotFoundError, NotADirectoryError, IsADirectoryError, StoreError)):
        return False
    return isinstance(e, OSError) and not any(s in str(e) for s in _PERMANENT)


class Store:
    """A store root on a pyarrow filesystem. Use `open_store` to make one."""

    def __init__(self, spec: StoreSpec, fs: pafs.FileSystem, root: str, cache: Path | None = None):
        self.spec, self.fs, self.root = spec, fs, root.rstrip("/")
        self.local = isinstance(fs, pafs.LocalFileSystem)
        self.cache = cache or Path(os.environ.get("PWLOCK_CACHE", Path.home() / ".cache" / "pwlock"))

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
            stop=stop_after_delay(self.spec.retry_s),
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

    def check(self, timeout_s: float = 5.0) -> None:
        """Fail fast with a clear message if the store cannot be written: run before any work."""
        endpoint = _endpoint(self.spec)
        if self.local:
            Path(self.root).mkdir(parents=True, exist_ok=True)
            if not os.access(self.root, os.W_OK):
                raise StoreError(f"store {self.url}: directory is not writable")
            return
        probe = self.path(".pwlock-probe", uuid.uuid4().hex)
        quick = Store(
            StoreSpec(self.spec.url, self.spec.endpoint_url, self.spec.region, timeout_s),
            _s3_filesystem(self.spec, connect_timeout=2, attempts=1),
            self.root,
        )
        bucket = self.root.split("/", 1)[0]
        try:
            info = quick.call("looking up the bucket", lambda: quick.fs.get_file_info(bucket))
            if info.type == pafs.FileType.NotFound:
                raise StoreError(f"store {self.url}: bucket {bucket!r} does not exist; create it first")
            quick.call("writing a probe object", lambda: quick._put(probe, b"ok"))
            quick.call("deleting the probe object", lambda: quick.fs.delete_file(probe))
        except StoreError as e:
            raise StoreError(
                f"{e}\n(credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
                f"~/.aws or an instance role; endpoint {endpoint or 'AWS default'})"
            ) from None

    # -- small objects ----------------------------------------------------------------------------

    def _put(self, path: str, data: bytes) -> None:
        if self.local:  # rename makes the write atomic; an object store's PUT already is
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(tmp).write_bytes(data)
            os.replace(tmp, path)
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
            shutil.copyfile(src, dest)
            return
        with open(src, "rb") as f, self.fs.open_output_stream(dest) as out:
            while chunk := f.read(CHUNK):
                out.write(chunk)
        size = self.fs.get_file_info(dest).size
        if size != src.stat().st_size:
            raise OSError(f"{dest}: uploaded {size} bytes of {src.stat().st_size}")

    # -- artifacts --------------------------------------------------------------------------------

    def has(self, key: str) -> bool:
        return self.exists(f"{ARTIFACTS}/{key}/{META}")

    def meta(self, key: str) -> dict[str, Any]:
        return json.loads(self.read_text(f"{ARTIFACTS}/{key}/{META}"))

    def artifact_dir(self, key: str) -> Path:
        """A local directory holding artifact `key`: the store's own locally, else a cached copy
        (artifacts never change once built, so a cached copy stays valid)."""
        if self.local:
            return Path(self.path(ARTIFACTS, key))
        target = self.cache / "artifacts" / key
        if (target / META).is_file():
            return target
        if not self.has(key):
            raise StoreError(f"store {self.url}: artifact {key} is not built")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=target.parent))
        try:
            self.download_dir(f"{ARTIFACTS}/{key}", tmp)
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

    def delete_dir(self, rel: str) -> None:
        def delete() -> None:
            try:
                self.fs.delete_dir(self.path(rel))
            except FileNotFoundError:
                pass

        self.call(f"deleting {rel}", delete)

    def _download_file(self, info: pafs.FileInfo, dest: Path) -> None:
        with self.fs.open_input_stream(info.path) as f, open(dest, "wb") as out:
            while chunk := f.read(CHUNK):
                out.write(chunk)
        if dest.stat().st_size != info.size:
            raise OSError(f"{info.path}: downloaded {dest.stat().st_size} bytes of {info.size}")

    def scratch_dir(self, key: str) -> Path:
        """A fresh local directory to build artifact `key` in."""
        base = Path(self.root) / ".scratch" if self.local else self.cache / "scratch"
        path = base / f"{key}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        return path

    def commit(self, key: str, scratch: Path, meta: Mapping[str, Any]) -> str:
        """Publish a finished scratch directory as artifact `key`, atomically. If another worker
        published the same key first, its artifact stands (same config, same content)."""
        body = json.dumps(dict(meta), indent=2, sort_keys=True, default=str)
        if self.local:
            (scratch / META).write_text(body)
            target = Path(self.path(ARTIFACTS, key))
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(scratch, target)
            except OSError:
                if not self.has(key):
                    raise
                shutil.rmtree(scratch, ignore_errors=True)
            return str(target)
        if not self.has(key):
            self.upload_dir(scratch, f"{ARTIFACTS}/{key}")
            self.write_text(f"{ARTIFACTS}/{key}/{META}", body)  # last: now it counts as built
        shutil.rmtree(scratch, ignore_errors=True)
        return self.uri(ARTIFACTS, key)

    # -- Tune -------------------------------------------------------------------------------------

    def tune_storage(self) -> dict[str, Any]:
        """`storage_path` / `storage_filesystem` for tune.RunConfig."""
        if self.local:
            return {"storage_path": self.root}
        return {"storage_path": self.root, "storage_filesystem": self.fs}


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/prefix` -> ("bucket", "prefix")."""
    rest = url.removeprefix("s3://").strip("/")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"storage {url!r}: expected s3://bucket/prefix")
    return bucket, prefix


# allow_delayed_open: a small object is one PUT, not a three-request multipart upload (16 -> 10
# requests per trial); no background writes: with delayed open they buffer Tune's 64 MiB copy
# chunks (driver peak 1,006 -> 346 MB at 1,000 trials).
S3_WRITES = {"allow_delayed_open": True, "background_writes": False}


def _endpoint(spec: StoreSpec) -> str | None:
    return spec.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def _s3_filesystem(spec: StoreSpec, connect_timeout: float = 5, attempts: int = 10) -> pafs.S3FileSystem:
    endpoint = _endpoint(spec)
    region = spec.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    kwargs: dict[str, Any] = {}
    if endpoint:
        scheme, _, host = endpoint.rpartition("://")
        kwargs.update(endpoint_override=host.rstrip("/"), scheme=scheme or "https")
    # Each request retries on its own too (Tune's checkpoint uploads go through this filesystem):
    # AWS standard backoff, capped at 20 s, over `attempts` tries rides out a store restart.
    return pafs.S3FileSystem(
        region=region,
        connect_timeout=connect_timeout,
        request_timeout=60,
        **S3_WRITES,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=attempts),
        **kwargs,
    )


def open_store(
    url: str | os.PathLike | StoreSpec,
    endpoint_url: str | None = None,
    region: str | None = None,
    retry_s: float = 120.0,
) -> Store:
    """A local directory (also `file://...`) or `s3://bucket/prefix`."""
    spec = url if isinstance(url, StoreSpec) else StoreSpec(str(url), endpoint_url, region, retry_s)
    raw = spec.url
    if raw.startswith("s3://"):
        bucket, prefix = parse_s3_url(raw)
        return Store(
            StoreSpec(f"s3://{bucket}/{prefix}".rstrip("/"), spec.endpoint_url, spec.region, spec.retry_s),
            _s3_filesystem(spec),
            f"{bucket}/{prefix}".rstrip("/"),
        )
    if "://" in raw and not raw.startswith("file://"):
        scheme = raw.split("://", 1)[0]
        raise ValueError(f"storage {raw!r}: {scheme}:// is not supported; use a local directory or s3://bucket/prefix")
    root = str(Path(raw.removeprefix("file://")).expanduser().resolve())
    return Store(StoreSpec(root, None, None, spec.retry_s), pafs.LocalFileSystem(), root)
