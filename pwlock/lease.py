"""One driver per experiment: a lease object in the store, `.leases/<experiment>.json`.

A driver takes the lease before any work (a new run or `--resume`), renews a heartbeat in it every
`heartbeat_s` while it runs, and removes it when it ends. A second driver is refused, told which
driver holds the experiment and since when. A lease whose heartbeat is older than `stale_s` is a
dead driver's: `--take-over` takes it, and only then; a lease of a driver on this host whose process
is gone is taken over at once (a killed driver, then `--resume`).

Taking is exclusive: locally a hard link of a complete file (atomic; fails if the name exists), on
S3 a conditional PUT (`If-None-Match: *`); heartbeats and take-overs replace the lease only if it is
still the one read (on S3 `If-Match` on its ETag), so of two drivers racing, one wins. A driver whose
lease another took over notices at its next heartbeat (`lost`) and writes no results.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pwlock.store import Store, StoreError, s3_endpoint

log = logging.getLogger(__name__)

# Beside the experiments, not in one: Tune copies an experiment's directory to its staging area on
# --resume and uploads it back, which would put back a stale copy of the lease.
LEASES = ".leases"
HEARTBEAT_S = 30.0
STALE_S = 600.0


class LeaseHeld(StoreError):
    """Another driver holds the experiment."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lease: a driver's run id, host and pid, since when, and its last heartbeat."""

    run: str
    host: str
    pid: int
    since: str  # UTC, ISO 8601
    heartbeat: float  # Unix time of its last heartbeat, by its own clock

    def age(self) -> float:
        return time.time() - self.heartbeat

    def dead_here(self) -> bool:
        """Provably dead: it ran on this host and its process is gone."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False

    def describe(self) -> str:
        return (
            f"driver {self.run[:12]} (pid {self.pid} on {self.host}), running since {self.since}, "
            f"last heartbeat {self.age():.0f} s ago"
        )


@dataclass(frozen=True)
class _Read:
    body: bytes
    token: Any  # what a conditional replace compares: the body locally, the ETag on S3


class _LocalObject:
    def __init__(self, path: Path):
        self.path = path

    def create(self, body: bytes) -> Any:
        """Create it holding `body` unless it exists: its token, or None."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            tmp.write_bytes(body)
            os.link(tmp, self.path)
            return body
        except FileExistsError:
            return None
        finally:
            tmp.unlink(missing_ok=True)

    def read(self) -> _Read | None:
        try:
            body = self.path.read_bytes()
        except FileNotFoundError:
            return None
        return _Read(body, body)

    def replace(self, body: bytes, token: Any) -> Any:
        """Replace it with `body` if it is still what `token` says: the new token, or None."""
        current = self.read()
        if current is None or current.token != token:
            return None
        tmp = self.path.with_name(f"{self.path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            tmp.write_bytes(body)
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        return body

    def delete(self, token: Any) -> None:
        current = self.read()
        if current is not None and current.token == token:
            self.path.unlink(missing_ok=True)


class _S3Object:
    """The lease as an S3 object, through boto3: pyarrow has no conditional writes. A server without
    them (501 NotImplemented) gets a look before each write instead, with a warning: two drivers
    starting within the same second could then both run."""

    def __init__(self, store: Store, rel: str):
        import boto3  # a second S3 client, only for drivers on S3 stores

        self.url = store.url
        self.bucket, _, prefix = store.path(rel).partition("/")
        self.key = prefix
        region = store.spec.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        self.client = boto3.client("s3", endpoint_url=s3_endpoint(store.spec), region_name=region or "us-east-1")
        self.conditional = True

    @staticmethod
    def _code(e: Exception) -> str | None:
        return getattr(e, "response", {}).get("Error", {}).get("Code")

    def _put(self, body: bytes, **condition: str) -> Any:
        """The new ETag, or None when the condition does not hold."""
        if not self.conditional:  # look, then write
            current = self.read()
            if "IfNoneMatch" in condition:
                holds = current is None
            else:
                holds = current is not None and current.token == condition["IfMatch"]
            if not holds:
                return None
            condition = {}
        try:
            return self.client.put_object(Bucket=self.bucket, Key=self.key, Body=body, **condition)["ETag"]
        except Exception as e:
            code = self._code(e)
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                return None
            if code in ("NotImplemented", "501") and self.conditional:
                log.warning("store %s has no conditional writes: the lease is checked before it is written", self.url)
                self.conditional = False
                return self._put(body, **condition)
            raise StoreError(f"store {self.url}: writing the lease {self.key} failed: {e}") from e

    def create(self, body: bytes) -> Any:
        return self._put(body, IfNoneMatch="*")

    def read(self) -> _Read | None:
        try:
            r = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except Exception as e:
            if self._code(e) in ("NoSuchKey", "404"):
                return None
            raise StoreError(f"store {self.url}: reading the lease {self.key} failed: {e}") from e
        return _Read(r["Body"].read(), r["ETag"])

    def replace(self, body: bytes, token: Any) -> Any:
        return self._put(body, IfMatch=token)

    def delete(self, token: Any) -> None:
        current = self.read()
        if current is not None and current.token == token:
            self.client.delete_object(Bucket=self.bucket, Key=self.key)


class Lease:
    """The lease of `experiment` for the driver `run`; `with Lease(...).acquire():` holds it."""

    def __init__(
        self,
        store: Store,
        experiment: str,
        run: str,
        heartbeat_s: float = HEARTBEAT_S,
        stale_s: float = STALE_S,
    ):
        self.store, self.experiment, self.run = store, experiment, run
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        rel = lease_path(experiment)
        self.object = _LocalObject(Path(store.path(rel))) if store.local else _S3Object(store, rel)
        self.since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.lost: str | None = None  # who took it over, once this driver noticed
        self._token: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        holder = Holder(self.run, socket.gethostname(), os.getpid(), self.since, time.time())
        return json.dumps(asdict(holder)).encode()

    def holder(self) -> Holder | None:
        read = self.object.read()
        return None if read is None else _holder(read.body)

    def acquire(self, take_over: bool = False) -> Lease:
        where = f"experiment {self.store.uri(self.experiment)}"
        body = self._body()
        for _ in range(3):  # a lease let go of between our create and our read: try again
            self._token = self.object.create(body)
            if self._token is not None:
                break
            current = self.object.read()
            if current is None:
                continue
            holder = _holder(current.body)
            who = holder.describe() if holder else "a driver whose lease cannot be read"
            stale = holder is None or holder.age() > self.stale_s
            if holder is not None and holder.dead_here():  # killed on this host: no need to wait
                who, stale, take_over = f"{who}, whose process is gone", True, True
            if not take_over:
                hint = (
                    f"its heartbeat stopped over {self.stale_s:.0f} s ago: if that driver is dead, "
                    "run again with --take-over"
                    if stale
                    else "wait for it to finish, or stop it"
                )
                raise LeaseHeld(f"{where} is being run by {who}; {hint}")
            if not stale:
                raise LeaseHeld(
                    f"{where} is being run by {who}: --take-over takes only a lease whose heartbeat "
                    f"stopped over {self.stale_s:.0f} s ago"
                )
            self._token = self.object.replace(body, current.token)
            if self._token is None:
                raise LeaseHeld(f"{where}: another driver took over the lease of {who} first")
            log.warning("%s: took over the lease of %s", where, who)
            break
        else:
            raise LeaseHeld(f"{where}: the lease kept changing hands; try again")
        self._thread = threading.Thread(target=self._beat, name=f"pwlock-lease-{self.experiment}", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                token = self.object.replace(self._body(), self._token)
                if token is None:
                    read = self.object.read()
                    holder = None if read is None else _holder(read.body)
                    if holder is not None and holder.run == self.run:  # rewritten, but still ours
                        self._token = read.token
                        continue
                    self.lost = holder.describe() if holder else "nobody (the lease was removed)"
                    log.error("experiment %s: this driver's lease is now held by %s", self.experiment, self.lost)
                    return
                self._token = token
            except Exception as e:  # an outage: the next heartbeat tries again
                log.warning("experiment %s: heartbeat failed (%s); trying again", self.experiment, e)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.lost is None and self._token is not None:
            try:
                self.object.delete(self._token)
            except (StoreError, OSError) as e:  # a store out of reach: the error that ends the run matters more
                log.warning(
                    "experiment %s: could not remove this driver's lease (%s); the next driver here takes it over",
                    self.experiment,
                    e,
                )

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lease_path(experiment: str) -> str:
    """Where an experiment's lease lives, relative to the store's root."""
    return f"{LEASES}/{experiment}.json"


def _holder(body: bytes) -> Holder | None:
    try:
        return Holder(**json.loads(body))
    except (ValueError, TypeError):
        return None
