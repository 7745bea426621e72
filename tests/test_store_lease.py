"""One driver per experiment: the lease in the store, in a local directory and on a real S3 server.
A dead driver is a real process killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import pytest

from pwlock.lease import Holder, Lease, LeaseHeld, lease_path
from pwlock.store import Store, open_store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> Store:
    if request.param == "local":
        return open_store(tmp_path / "store")
    s3_env = request.getfixturevalue("s3_env")
    return open_store(f"s3://{s3_env.bucket}/lease-{uuid.uuid4().hex[:8]}")


def _wait(what: str, check, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def test_a_second_driver_is_refused_naming_the_holder_and_since_when(store):
    with Lease(store, "exp", "run-a").acquire() as first:
        holder = first.holder()
        assert holder.run == "run-a" and holder.pid == os.getpid()
        with pytest.raises(LeaseHeld) as e:
            Lease(store, "exp", "run-b").acquire()
        print(e.value)
        message = str(e.value)
        assert store.uri("exp") in message and "run-a" in message and f"pid {os.getpid()}" in message
        assert f"since {first.since}" in message and "wait for it to finish" in message
        with pytest.raises(LeaseHeld, match="takes only a lease whose heartbeat stopped"):
            Lease(store, "exp", "run-b").acquire(take_over=True)  # a live driver is never displaced
        Lease(store, "other", "run-b").acquire().release()  # another experiment is free
    assert not store.exists(lease_path("exp"))  # let go when the driver ends
    Lease(store, "exp", "run-b").acquire().release()


def test_the_heartbeat_renews_the_lease(store):
    with Lease(store, "exp", "run-a", heartbeat_s=0.1).acquire() as lease:
        first = lease.holder().heartbeat
        _wait("a heartbeat", lambda: lease.holder().heartbeat > first)
        assert lease.lost is None


def _held_elsewhere(store: Store, heartbeat: float) -> None:
    """A lease as a driver on another node writes it."""
    holder = Holder("other-run", "other-node", 4242, "2026-12-06T08:00:00Z", heartbeat)
    store.write_text(lease_path("exp"), json.dumps(asdict(holder)))


def test_a_stale_lease_is_taken_over_with_the_flag_only(store):
    _held_elsewhere(store, time.time() - 5)  # its last heartbeat 5 s ago
    with pytest.raises(LeaseHeld, match="other-run .pid 4242 on other-node., running since 2026-12-06T08:00:00Z"):
        Lease(store, "exp", "run-b", stale_s=60).acquire(take_over=True)  # not stale yet
    with pytest.raises(LeaseHeld, match="if that driver is dead, run again with --take-over") as e:
        Lease(store, "exp", "run-b", stale_s=1).acquire()
    print(e.value)
    with Lease(store, "exp", "run-b", stale_s=1).acquire(take_over=True) as lease:
        assert lease.holder().run == "run-b"


def test_a_killed_driver_on_this_host_is_taken_over_at_once(store):
    """Killed (SIGKILL: no release), then --resume at once: its process is gone, so no waiting."""
    code = (
        "import time; from pwlock.store import open_store; from pwlock.lease import Lease; "
        f"Lease(open_store({store.url!r}), 'exp', 'dead-run').acquire(); print('held', flush=True); time.sleep(600)"
    )
    driver = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert driver.stdout.readline().strip() == "held"
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    assert Lease(store, "exp", "x").holder().run == "dead-run"
    with Lease(store, "exp", "run-b").acquire() as lease:
        assert lease.holder().run == "run-b"


def test_a_driver_whose_lease_was_taken_over_notices(store):
    """A hung driver (SIGSTOP) loses its lease to a --take-over; woken (SIGCONT), its next heartbeat
    finds the new holder, and its release leaves the new lease alone."""
    code = (
        "import time; from pwlock.store import open_store; from pwlock.lease import Lease; "
        f"lease = Lease(open_store({store.url!r}), 'exp', 'hung-run', heartbeat_s=0.1).acquire(); "
        "print('held', flush=True)\n"
        "while lease.lost is None: time.sleep(0.05)\n"
        "lease.release(); print('lost to', lease.lost, flush=True)"
    )
    driver = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert driver.stdout.readline().strip() == "held"
        driver.send_signal(signal.SIGSTOP)
        _wait("the hung driver's lease to go stale", lambda: Lease(store, "exp", "x").holder().age() > 1)
        with Lease(store, "exp", "run-b", stale_s=1).acquire(take_over=True):
            driver.send_signal(signal.SIGCONT)
            said = driver.stdout.readline()
            print(said)
            assert said.startswith("lost to driver run-b")
            assert driver.wait(30) == 0
            assert Lease(store, "exp", "x").holder().run == "run-b"
    finally:
        driver.kill()
        driver.wait()


def test_a_bucket_without_conditional_writes_still_refuses_a_second_driver(s3_env):
    """Where the server has no conditional writes, the lease is looked at before each write."""
    store = open_store(f"s3://{s3_env.bucket}/lease-{uuid.uuid4().hex[:8]}")
    first = Lease(store, "exp", "run-a", heartbeat_s=0.1)
    first.object.conditional = False
    with first.acquire():
        beat = first.holder().heartbeat
        _wait("a heartbeat", lambda: first.holder().heartbeat > beat)
        second = Lease(store, "exp", "run-b")
        second.object.conditional = False
        with pytest.raises(LeaseHeld, match="run-a"):
            second.acquire()
        assert first.lost is None
    assert not store.exists(lease_path("exp"))
