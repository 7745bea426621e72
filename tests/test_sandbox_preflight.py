"""The sandbox preflight: it passes where the sandbox runs, and where a container's settings deny
what the sandbox needs it refuses with the reason and the fix. Each denial is real: the check runs
in a child process under a seccomp filter shaped like Docker's default profile (namespaces denied),
or as root without CAP_SYS_ADMIN (a Kubernetes pod's default), or with Landlock's system calls
denied, and the sandbox's own probe and launcher inherit it."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pwlock import sandbox

ROOT = Path(__file__).resolve().parents[1]

# A seccomp filter installed with ctypes (no libseccomp binding here): the x86-64 system call
# numbers below are denied with the errno given; everything else is allowed. clone is denied only
# with namespace flags, and clone3 with ENOSYS (glibc then falls back to clone), as Docker does.
SECCOMP = textwrap.dedent(
    """
    import ctypes, errno
    DENY = {deny!r}
    libc = ctypes.CDLL(None, use_errno=True)
    class Insn(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]
    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Insn))]
    LD, JEQ, JSET, RET = 0x20, 0x15, 0x45, 0x06
    ALLOW, ERRNO = 0x7FFF0000, 0x00050000
    NAMESPACES = 0x7E020000  # CLONE_NEW{{NS,CGROUP,UTS,IPC,USER,PID,NET}}
    insns = [(LD, 0, 0, 0)]  # the system call's number
    for nr, err in DENY.items():
        insns += [(JEQ, 0, 1, nr), (RET, 0, 0, ERRNO | err)]
    if {clone_ns}:
        insns += [(JEQ, 0, 3, 56), (LD, 0, 0, 16), (JSET, 0, 1, NAMESPACES), (RET, 0, 0, ERRNO | errno.EPERM)]
    insns += [(RET, 0, 0, ALLOW)]
    prog = Prog(len(insns), (Insn * len(insns))(*[Insn(*i) for i in insns]))
    assert libc.prctl(38, 1, 0, 0, 0) == 0  # no_new_privs, which a filter needs without CAP_SYS_ADMIN
    assert libc.prctl(22, 2, ctypes.byref(prog)) == 0, ctypes.get_errno()  # PR_SET_SECCOMP, a filter
    """
)
CHECK = textwrap.dedent(
    """
    import sys
    from pwlock import sandbox
    try:
        sandbox.preflight()
    except sandbox.SandboxUnavailable as e:
        print(e)
        sys.exit(3)
    print("preflight passed")
    """
)
UNSHARE, CLONE3 = 272, 435
LANDLOCK = (444, 445, 446)
x86_64 = pytest.mark.skipif(platform.machine() != "x86_64", reason="the filter's system call numbers are x86-64's")


def run_check(prefix: str = "", argv: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """The preflight in a fresh interpreter (after `prefix`, a filter), under `argv` (a wrapper)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = prefix + CHECK
    return subprocess.run([*argv, sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_preflight_passes_here_with_every_protection():
    enforced = sandbox.preflight()
    assert all(enforced[k] for k in sandbox.REQUIRED), enforced
    assert sandbox.toolchain().startswith("g++")


@x86_64
def test_refused_where_seccomp_denies_namespaces_as_dockers_default_profile_does():
    import errno

    filt = SECCOMP.format(deny={UNSHARE: errno.EPERM, CLONE3: errno.ENOSYS}, clone_ns=True)
    r = run_check(filt)
    assert r.returncode == 3, r.stdout + r.stderr
    message = r.stdout
    assert "the code sandbox cannot run on this node" in message
    assert "cannot enforce unprivileged" in message  # Landlock and a cgroup still hold the rest here
    assert "a seccomp filter is on" in message  # why
    for fix in (*sandbox.DOCKER_RUN_OPTIONS, "securityContext", "non-root user", "docs/sandbox.md"):
        assert fix in message, fix
    print(message)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("capsh"), reason="needs root and capsh")
def test_refused_as_root_without_cap_sys_admin_as_in_a_default_pod():
    r = run_check(argv=("capsh", "--drop=cap_sys_admin", "--", "-c", 'exec "$0" "$@"'))  # capsh runs bash
    assert r.returncode == 3, r.stdout + r.stderr
    assert "runs as root without CAP_SYS_ADMIN" in r.stdout and "capabilities.add [SYS_ADMIN]" in r.stdout


@x86_64
def test_refused_without_landlock():
    import errno

    r = run_check(SECCOMP.format(deny=dict.fromkeys(LANDLOCK, errno.ENOSYS), clone_ns=False))
    assert r.returncode == 3, r.stdout + r.stderr
    assert "writes_confined" in r.stdout and "Landlock is unavailable" in r.stdout


def test_preflight_runs_on_every_node_of_a_ray_cluster(local_ray):
    results = sandbox.preflight_cluster(["python"])
    assert len(results) == 1
    ((node, enforced),) = results.items()
    assert all(enforced[k] for k in sandbox.REQUIRED)


def test_a_code_study_checks_the_sandbox_on_every_node_before_any_work(local_ray):
    """sweep.preflight_sandbox, which a sweep runs right after Ray starts: the code task's languages
    checked on this (one-node) cluster; a task that runs no code checks nothing."""
    from types import SimpleNamespace

    from pwlock.config import config_from_dict
    from pwlock.sweep import preflight_sandbox
    from pwlock.tasks import make_task
    from tests.conftest import SMALL_TASK

    fixtures = Path(__file__).parent / "fixtures" / "code"
    code = make_task({"name": "code", "data": [{"path": str(fixtures / "stdio.jsonl")}], "language": "cpp"})
    cfg = config_from_dict({"name": "code", "task": SMALL_TASK})
    enforced = preflight_sandbox(SimpleNamespace(task=code, cfg=cfg))
    assert enforced and all(e for e in enforced.values())  # one entry per node, what it enforces
    assert preflight_sandbox(SimpleNamespace(task=make_task(SMALL_TASK), cfg=cfg)) is None
