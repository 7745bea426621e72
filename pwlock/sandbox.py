"""Run untrusted generated programs (Python or C++) with its input on stdin, many in parallel.

Each run gets a fresh directory as its working directory and, where the kernel allows it (probed
once per process; `Sandbox.enforced` says what holds):

- namespaces: its own network namespace (no interface but a down loopback: no network at all),
  pid namespace (no process of the run survives it: daemons die with it), mount namespace (a
  fresh /proc; empty read-only tmpfs over /tmp, /var/tmp, /dev/shm, /run, /home and /root),
  IPC, UTS and cgroup namespaces; a user namespace too when not started as root;
- an unprivileged uid: a per-slot uid when started as root (so RLIMIT_NPROC applies, and root's
  files are out of reach), the caller's own uid in a user namespace otherwise; no_new_privs;
- Landlock: reads and execution only beneath the system directories (/usr, /lib*, /bin, /sbin,
  /etc, /dev, /proc) and the run's own files, writes only beneath its working directory, no TCP
  bind/connect, no signals to processes outside the run;
- rlimits per process: CPU, address space, processes, file size, open files, no core files; and,
  where this process may create cgroups (root, here), a cgroup per run slot capping the memory and
  the number of tasks of all the run's processes together;
- a clean environment (nothing of the caller's), a new session, a wall-clock deadline after which
  the whole run is killed, a cap on captured stdout.

Every file the program leaves in its directory is reported (`RunResult.files_written`), for the
paper's rule that a correct solution writes no file. Runs start from a fork server
(`sandbox_launch`), so no interpreter starts per run; C++ compiles once per source (g++, in the
sandbox too), cached on disk under $PWLOCK_CACHE/cpp (default ~/.cache/pwlock/cpp).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import logging
import marshal
import math
import os
import queue
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pwlock import cache_root

log = logging.getLogger(__name__)

LAUNCHER = Path(__file__).with_name("sandbox_launch.py")
INSIDE = "/tmp/sandbox"  # the run's directory, as the program sees it
INSIDE_PYTHON = "/tmp/python"  # the Python installation, bound read-only
HIDE = ("/tmp", "/var/tmp", "/dev/shm", "/run", "/home", "/root")
READABLE = ("/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin", "/etc", "/dev", "/proc")
DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")
UID_BASE = 1_800_000_000  # per-slot uids when started as root: far above any real account
HOST_GRACE_S = 10.0  # the host waits this long past the run's own deadline before giving up on it
CXX = "/usr/bin/g++"
CXX_FLAGS = ("-std=c++17", "-O2", "-pipe")
LANGUAGES = ("python", "cpp")


class SandboxError(RuntimeError):
    """The sandbox could not be built or is weaker than required: never the program's fault."""


class SandboxUnavailable(SandboxError):
    """This machine cannot run the sandbox as required: the message says why and how to fix it."""


@dataclass(frozen=True)
class Limits:
    wall_s: float = 5.0
    cpu_s: float = 5.0  # RLIMIT_CPU kills at the next whole second above; `RunResult.timed_out` uses the exact figure
    memory_mb: int = 1024  # RLIMIT_AS, per process
    nproc: int = 32  # RLIMIT_NPROC: processes and threads of the run
    fsize_mb: float = 1.0  # RLIMIT_FSIZE: the largest file a program may write
    nofile: int = 256
    stdout_bytes: int = 4 << 20  # more kills the run
    stderr_bytes: int = 64 << 10  # more is dropped


@dataclass(frozen=True)
class Program:
    language: str  # "python" or "cpp"
    source: str

    def __post_init__(self) -> None:
        if self.language not in LANGUAGES:
            raise ValueError(f"language: expected one of {LANGUAGES}, got {self.language!r}")


@dataclass(frozen=True)
class RunResult:
    exit_code: int | None  # negative: killed by that signal; None: never ran (compile error) or killed by the deadline
    stdout: str = ""
    stderr: str = ""
    cpu_s: float = 0.0
    wall_s: float = 0.0
    timed_out: bool = False
    output_exceeded: bool = False
    files_written: tuple[str, ...] = ()
    compile_error: str | None = None

    @property
    def ok(self) -> bool:
        """Compiled, exited 0 within its limits and its output cap."""
        return self.exit_code == 0 and not (self.timed_out or self.output_exceeded or self.compile_error)


@dataclass
class _Machine:
    root: bool
    landlock_abi: int
    namespaces_root: bool
    namespaces_userns: bool

    @property
    def namespaces(self) -> bool:
        return self.namespaces_root if self.root else self.namespaces_userns


@functools.cache
def machine() -> _Machine:
    """What this kernel allows, probed once per process in a throwaway child."""
    out = subprocess.run([*_PYTHON_FLAGS, str(LAUNCHER), "probe"], capture_output=True, env={}, timeout=60)
    if out.returncode != 0:
        raise SandboxError(f"sandbox probe failed: {out.stderr.decode(errors='replace').strip()}")
    return _Machine(**marshal.loads(out.stdout))


_PYTHON_FLAGS = (sys.executable, "-I", "-S", "-B")


class _Server:
    """The fork server (sandbox_launch.serve): one message per run, on a unix socket."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._proc = subprocess.Popen(
            [*_PYTHON_FLAGS, str(LAUNCHER), "serve", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={},
        )
        theirs.close()

    def send(self, spec: dict, fds: Sequence[int]) -> None:
        with self._lock:
            if self._proc.poll() is not None:
                raise SandboxError(
                    f"the sandbox server exited {self._proc.returncode}: "
                    f"{self._proc.stderr.read().decode(errors='replace')[-2000:]}"
                )
            socket.send_fds(self._sock, [marshal.dumps(spec)], list(fds))

    def close(self) -> None:
        self._sock.close()  # the server sees EOF and exits; runs in flight finish on their own
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc.stderr.close()


def enforced(m: _Machine | None = None, cgroups: bool = False) -> dict[str, bool]:
    """What a run on this machine is held to, protection by protection; `cgroups`: whether runs
    get a cgroup (a `Sandbox` knows once it has tried to make them)."""
    m = m or machine()
    ns, ll = m.namespaces, m.landlock_abi
    return {
        "network": ns or ll >= 4,  # a network namespace; else Landlock's TCP rules (TCP only)
        "processes_contained": ns or cgroups,  # nothing outlives the run: its pid namespace, or its cgroup is killed
        "writes_confined": ll >= 1,  # Landlock: writes only beneath the working directory
        "reads_confined": ll >= 1,  # Landlock: reads only beneath system directories and the run's files
        "signals_confined": ns or ll >= 6,
        "shared_dirs_hidden": ns,  # /tmp, /run, ... replaced by empty read-only tmpfs
        "unprivileged": ns or not m.root,  # root drops to a per-slot uid inside the namespaces
        "process_limit": ns or not m.root or cgroups,  # RLIMIT_NPROC does not bind root; a cgroup's pids.max does
        "memory_total": cgroups,  # a cgroup caps the memory of all the run's processes together
    }


REQUIRED = ("network", "processes_contained", "writes_confined", "unprivileged")


class _Slots:
    """Slot numbers for concurrent runs: a run started as root gets the uid UID_BASE + our pid's
    block + its slot, so RLIMIT_NPROC counts only its own processes, and its slot's cgroup."""

    def __init__(self) -> None:
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._next = 0
        self._lock = threading.Lock()

    def acquire(self) -> int:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            with self._lock:
                self._next += 1
                return self._next % 1_000

    def release(self, slot: int) -> None:
        self._free.put(slot)


def slot_uid(slot: int) -> int:
    return UID_BASE + (os.getpid() % 100_000) * 1_000 + slot


class _Cgroups:
    """One cgroup per slot capping a run's processes together: memory (RLIMIT_AS is per process)
    and tasks. cgroup v1's memory and pids controllers, or v2 where both are delegated to us;
    usually only root may create them. `available` is False where neither works."""

    def __init__(self, name: str, enabled: bool = True) -> None:
        self.roots: dict[str, Path] = {}  # "memory" / "pids" (v1) or "v2" -> this sandbox's cgroup
        self._made: list[Path] = []
        try:
            if enabled:
                self._discover(name)
        except OSError as e:
            log.debug("sandbox: no cgroups: %s", e)
            self.roots = {}

    @property
    def available(self) -> bool:
        return bool(self.roots)

    def _discover(self, name: str) -> None:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
        ours = {}
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for c in controllers.split(",") if controllers else ["v2"]:
                ours[c] = path.lstrip("/")
        v1 = {}
        for _, where, fstype, options, *_ in mounts:
            if fstype == "cgroup":
                for c in ("memory", "pids"):
                    if c in options.split(",") and c in ours:
                        v1[c] = Path(where) / ours[c]
        if len(v1) == 2:
            candidates = v1
        else:
            v2 = next((Path(m[1]) / ours.get("v2", "") for m in mounts if m[2] == "cgroup2"), None)
            if v2 is None or not {"memory", "pids"} <= set((v2 / "cgroup.subtree_control").read_text().split()):
                return
            candidates = {"v2": v2}
        for c, parent in candidates.items():
            root = parent / name
            root.mkdir()
            self._made.append(root)
            self.roots[c] = root

    def procs_files(self, slot: int, limits: Limits) -> list[str]:
        """The slot's cgroup.procs files, limits set for this run."""
        out = []
        for c, root in self.roots.items():
            group = root / f"slot-{slot}"
            if not group.exists():
                group.mkdir()
                self._made.append(group)
            memory = str(limits.memory_mb << 20)
            tasks = str(limits.nproc + 3)  # and the launcher, the init and a launcher still exiting
            settings = {
                "memory": {"memory.limit_in_bytes": memory},
                "pids": {"pids.max": tasks},
                "v2": {"memory.max": memory, "memory.swap.max": "0", "pids.max": tasks},
            }[c]
            for file, value in settings.items():
                if (group / file).exists():
                    (group / file).write_text(value)
            out.append(str(group / "cgroup.procs"))
        return out

    def remove(self) -> None:
        for group in reversed(self._made):
            for attempt in range(50):  # the last run's launcher may still be leaving it
                try:
                    group.rmdir()
                    break
                except OSError as e:
                    if attempt == 49:
                        log.warning("sandbox: cannot remove cgroup %s: %s", group, e)
                    time.sleep(0.02)
        self._made.clear()


_SLOTS = _Slots()


@functools.cache
def _cxx_version() -> str:
    return subprocess.run([CXX, "--version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]


def _rmtree(path: Path) -> None:
    def fix(func, p, _exc):  # a program may leave a directory it made unreadable
        os.chmod(os.path.dirname(p), 0o700)
        if os.path.isdir(p) and not os.path.islink(p):
            os.chmod(p, 0o700)
        func(p)

    shutil.rmtree(path, onerror=fix)


class Sandbox:
    """Runs programs in parallel, `workers` at a time (default: one per core).

    `require` names protections (keys of `enforced()`) that must hold on this machine, or the
    constructor raises; what is missing beyond them is logged once.
    """

    def __init__(
        self, workers: int | None = None, require: Sequence[str] = REQUIRED, cache_dir: str | Path | None = None
    ):
        self.machine = machine()
        self._base = Path(tempfile.mkdtemp(prefix="pwlock-sandbox-"))
        os.chmod(self._base, 0o755)
        self._cgroups = _Cgroups(self._base.name, enabled=self.machine.root)
        self.enforced = enforced(self.machine, self._cgroups.available)
        missing = [k for k in require if not self.enforced.get(k, False)]
        if missing:
            self._cgroups.remove()
            _rmtree(self._base)
            raise unavailable(self.machine, missing)
        weak = [k for k, v in self.enforced.items() if not v]
        if weak:
            log.warning("sandbox: not enforced on this machine: %s", ", ".join(weak))
        self.workers = workers or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="sandbox")
        self._cache = Path(cache_dir) if cache_dir else cache_root() / "cpp"
        self._compiled: dict[str, tuple[Path | None, str | None]] = {}
        self._compile_locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._server = _Server()
        # Not closed explicitly (a task keeps its sandbox for its lifetime): stop the server and
        # remove the runs' directory when the sandbox is collected or the interpreter exits.
        self._finalizer = weakref.finalize(self, _shutdown, self._pool, self._server, self._base, self._cgroups)

    # -- public -------------------------------------------------------------------------------
    def run(self, program: Program, stdin: str | bytes = b"", limits: Limits = Limits()) -> RunResult:
        if program.language == "cpp":
            binary, error = self.compile_cpp(program.source)
            if binary is None:
                return RunResult(exit_code=None, compile_error=error)
            return self._execute(["{root}/prog"], {"prog": binary}, stdin, limits)
        return self._execute([], {"main.py": program.source.encode()}, stdin, limits, python=True)

    @property
    def pool(self) -> ThreadPoolExecutor:
        """The worker threads; each run occupies one while its program runs."""
        return self._pool

    def submit(self, program: Program, stdin: str | bytes = b"", limits: Limits = Limits()) -> Future:
        return self._pool.submit(self.run, program, stdin, limits)

    def map(self, jobs: Iterable[tuple[Program, str | bytes, Limits]]) -> list[RunResult]:
        """Run every (program, stdin, limits) in parallel; results in order."""
        jobs = list(jobs)
        self.compile_many({p.source for p, _, _ in jobs if p.language == "cpp"})
        return [f.result() for f in [self.submit(*job) for job in jobs]]

    def compile_many(self, sources: Iterable[str]) -> None:
        for f in [self._pool.submit(self.compile_cpp, s) for s in set(sources)]:
            f.result()

    def compile_cpp(self, source: str) -> tuple[Path | None, str | None]:
        """(binary, None) or (None, compiler message); cached by a hash of the compiler, its flags
        and the source, in memory and on disk (compile errors too)."""
        key = hashlib.sha256("\0".join([_cxx_version(), *CXX_FLAGS, source]).encode()).hexdigest()
        with self._locks_lock:
            lock = self._compile_locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._compiled:
                self._compiled[key] = self._compile_uncached(key, source)
            return self._compiled[key]

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------
    def _compile_uncached(self, key: str, source: str) -> tuple[Path | None, str | None]:
        binary, error = self._cache / key[:2] / key, self._cache / key[:2] / f"{key}.err"
        if binary.exists():
            return binary, None
        if error.exists():
            return None, error.read_text()
        limits = Limits(wall_s=120, cpu_s=60, memory_mb=4096, nproc=16, fsize_mb=256, stdout_bytes=1 << 20)
        argv = [CXX, *CXX_FLAGS, "-o", "{root}/work/prog", "{root}/main.cpp"]
        keep: dict[str, bytes] = {}
        result = self._execute(argv, {"main.cpp": source.encode()}, b"", limits, keep=("prog",), kept=keep)
        binary.parent.mkdir(parents=True, exist_ok=True)
        tmp = binary.parent / f".{key}.{os.getpid()}.{threading.get_ident()}"
        if result.ok and "prog" in keep:
            tmp.write_bytes(keep["prog"])
            os.chmod(tmp, 0o755)
            os.replace(tmp, binary)
            return binary, None
        if result.timed_out:  # not cached: it may be the machine's load, not the source
            return None, "compilation timed out"
        message = (result.stderr or result.stdout or f"g++ exited with {result.exit_code}")[-4000:]
        tmp.write_text(message)
        os.replace(tmp, error)
        return None, message

    def _execute(
        self,
        argv: list[str],
        files: dict[str, bytes | Path],
        stdin: str | bytes,
        limits: Limits,
        python: bool = False,
        keep: Sequence[str] = (),
        kept: dict[str, bytes] | None = None,
    ) -> RunResult:
        """Run `argv` ("{root}" stands for the run's directory as the program sees it), or the
        Python program `main.py` when `python`, with `files` in the run's directory; `keep`: files
        the program makes that are wanted (copied into `kept`), not reported as written."""
        m = self.machine
        run_root = Path(tempfile.mkdtemp(prefix="run-", dir=self._base))
        stdin_path = self._base / f"{run_root.name}.stdin"
        slot = _SLOTS.acquire()
        uid = slot_uid(slot) if (m.root and m.namespaces) else None
        ours: list[int] = []  # descriptors still to close
        try:
            os.chmod(run_root, 0o755)
            work = run_root / "work"
            work.mkdir(mode=0o700)
            for name, content in files.items():
                dest = run_root / name
                if isinstance(content, Path):
                    try:
                        os.link(content, dest)
                    except OSError:
                        shutil.copy2(content, dest)
                else:
                    dest.write_bytes(content)
                os.chmod(dest, 0o755 if name == "prog" else 0o644)
            if uid is not None:
                os.chown(work, uid, uid)
            stdin_path.write_bytes(stdin.encode() if isinstance(stdin, str) else stdin)
            inside = INSIDE if m.namespaces else str(run_root)
            spec = self._spec([a.replace("{root}", inside) for a in argv], run_root, inside, limits, uid, python)
            spec["cgroups"] = self._cgroups.procs_files(slot, limits) if self._cgroups.available else []

            stdin_fd = os.open(stdin_path, os.O_RDONLY | os.O_CLOEXEC)
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            status_r, status_w = os.pipe()
            cancel_r, cancel_w = os.pipe()
            ours += [out_r, err_r, status_r, cancel_w]
            theirs = [stdin_fd, out_w, err_w, status_w, cancel_r]
            start = time.monotonic()
            try:
                self._server.send(spec, theirs)
            finally:
                for fd in theirs:
                    os.close(fd)
            deadline = start + limits.wall_s + HOST_GRACE_S

            def cancel() -> None:  # the launcher stops the run when the cancel pipe closes
                ours.remove(cancel_w)
                os.close(cancel_w)

            stdout, stderr, exceeded, status = _read_run(out_r, err_r, status_r, deadline, limits, cancel)
            wall = time.monotonic() - start
            if "setup_error" in status:
                raise SandboxError(f"sandbox setup failed: {status['setup_error']}")
            if not status:
                raise SandboxError("the sandbox reported no status for a run (its server died?)")
            cpu = float(status.get("cpu_s", 0.0))
            killed = "killed" in status and not exceeded
            written = tuple(sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.name not in keep))
            for name in keep:
                if kept is not None and (work / name).is_file():
                    kept[name] = (work / name).read_bytes()
            return RunResult(
                exit_code=status.get("exit"),
                stdout=stdout.decode(errors="replace"),
                stderr=stderr.decode(errors="replace"),
                cpu_s=cpu,
                wall_s=float(status.get("wall_s", wall)),
                timed_out=killed or cpu > limits.cpu_s or float(status.get("wall_s", 0.0)) > limits.wall_s,
                output_exceeded=exceeded,
                files_written=written,
            )
        finally:
            for fd in ours:
                os.close(fd)
            stdin_path.unlink(missing_ok=True)
            _rmtree(run_root)
            _SLOTS.release(slot)

    def _spec(
        self, argv: list[str], run_root: Path, inside: str, limits: Limits, uid: int | None, python: bool
    ) -> dict:
        m = self.machine
        mb = 1 << 20
        cpu = math.ceil(limits.cpu_s)
        fsize = int(limits.fsize_mb * mb)
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": f"{inside}/work",
            "TMPDIR": f"{inside}/work",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
        }
        binds = [[str(run_root), INSIDE, False]]
        readable = [p for p in READABLE if os.path.exists(p)] + [inside]
        python_spec = {}
        if python:
            # Python programs run in the sandbox's own (forked, confined) interpreter; its standard
            # library may lie in a hidden directory (a home), so it is bound read-only.
            prefix = INSIDE_PYTHON if m.namespaces else sys.base_prefix
            if m.namespaces:
                binds.append([sys.base_prefix, INSIDE_PYTHON, True])
            readable.append(prefix)
            python_spec = {"python_main": f"{inside}/main.py", "python_prefix": [sys.base_prefix, prefix]}
        return {
            **python_spec,
            "wall_s": limits.wall_s,
            "namespaces": m.namespaces,
            "userns": m.namespaces and not m.root,
            "hide": list(HIDE),
            "binds": binds,
            "cwd": f"{inside}/work",
            "argv": argv,
            "env": env,
            "uid": uid,
            "rlimits": {
                "CPU": [cpu, cpu + 1],
                "AS": [limits.memory_mb * mb] * 2,
                "NPROC": [limits.nproc] * 2,
                "FSIZE": [fsize] * 2,
                "NOFILE": [limits.nofile] * 2,
                "CORE": [0, 0],
            },
            "landlock": {"abi": m.landlock_abi, "read": readable, "write": [f"{inside}/work"], "devices": list(DEVICES)}
            if m.landlock_abi >= 1
            else None,
        }


def _shutdown(pool: ThreadPoolExecutor, server: _Server, base: Path, cgroups: _Cgroups) -> None:
    # Never waits for the pool's threads: a collected sandbox's finalizer runs in whatever thread
    # the garbage collector happens to run in, which may hold threading's own locks (a thread
    # starting, say) that joining a thread needs. The idle workers exit on their own.
    pool.shutdown(wait=False, cancel_futures=True)
    server.close()
    cgroups.remove()
    _rmtree(base)


def _read_run(
    out_fd: int, err_fd: int, status_fd: int, deadline: float, limits: Limits, cancel: Callable[[], None]
) -> tuple[bytes, bytes, bool, dict]:
    """Read stdout, stderr and the status until the status closes (the launcher is gone, and with
    it the run). Past stdout's cap the run is cancelled and its output cut; stderr past its cap is
    dropped. Returns (stdout, stderr, stdout passed its cap, status)."""
    out, err, status = bytearray(), bytearray(), bytearray()
    caps = {out_fd: (out, limits.stdout_bytes), err_fd: (err, limits.stderr_bytes), status_fd: (status, 1 << 20)}
    open_fds = [out_fd, err_fd, status_fd]
    exceeded = False
    while status_fd in open_fds:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise SandboxError("a run outlived its deadline: the sandbox did not stop it")
        ready, _, _ = select.select(open_fds, [], [], remaining)
        for fd in ready:
            chunk = os.read(fd, 1 << 16)
            buf, cap = caps[fd]
            if not chunk:
                open_fds.remove(fd)
            elif len(buf) + len(chunk) > cap:
                buf += chunk[: cap - len(buf)]
                if fd == out_fd and not exceeded:
                    exceeded = True
                    cancel()
                    open_fds.remove(fd)
            else:
                buf += chunk
    # The run is over; what its pipes still hold was written before it ended.
    for fd in (out_fd, err_fd):
        while fd in open_fds and select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 1 << 16)
            buf, cap = caps[fd]
            if not chunk:
                break
            buf += chunk[: max(cap - len(buf), 0)]
            if fd == out_fd and len(buf) >= cap:
                exceeded = True
                break
    parsed: dict = {}
    for line in status.decode().splitlines():
        parsed.update(ast.literal_eval(line))
    return bytes(out), bytes(err), exceeded, parsed


# -- preflight: refuse a study before its first trial where the sandbox cannot run --------------

# What a container started as root needs: creating namespaces and mounting a fresh /proc need
# CAP_SYS_ADMIN, and without it Docker's and containerd's default seccomp profiles deny unshare and
# AppArmor's default container profile denies mount. cluster/ grants exactly these to the nodes
# that score code (tests/test_cluster_configs.py checks).
DOCKER_RUN_OPTIONS = ("--cap-add=SYS_ADMIN", "--security-opt=seccomp=unconfined", "--security-opt=apparmor=unconfined")
K8S_SECURITY_CONTEXT = {
    "capabilities": {"add": ["SYS_ADMIN"]},
    "seccompProfile": {"type": "Unconfined"},
    "appArmorProfile": {"type": "Unconfined"},
}
CAP_SYS_ADMIN = 21
FIX = (
    "fix (any one):\n"
    f"  - Docker (`ray up`: docker.worker_run_options in cluster/aws.yaml): {' '.join(DOCKER_RUN_OPTIONS)}\n"
    "  - Kubernetes (cluster/kuberay/): the worker container's securityContext: capabilities.add [SYS_ADMIN], "
    "seccompProfile Unconfined, appArmorProfile Unconfined (Kubernetes >= 1.30; before, the annotation "
    "container.apparmor.security.beta.kubernetes.io/ray-worker: unconfined)\n"
    "  - without added capabilities: run the container as a non-root user where unprivileged user namespaces "
    "are allowed (seccomp and AppArmor unconfined, kernel.unprivileged_userns_clone=1, "
    "kernel.apparmor_restrict_unprivileged_userns=0); the sandbox then needs no capability\n"
    "  - or run studies of other tasks on these nodes: only the code task starts the sandbox\n"
    "(docs/sandbox.md, 'Preflight')"
)


def _status() -> dict[str, str]:
    """This process's /proc/self/status fields (capabilities, seccomp mode)."""
    lines = Path("/proc/self/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def reasons(m: _Machine, missing: Sequence[str]) -> list[str]:
    """Why this machine cannot enforce `missing`, in the terms of the setting to change."""
    status, out = _status(), []
    seccomp = status.get("Seccomp") == "2"
    if not m.namespaces:
        if m.root:
            if not int(status.get("CapEff", "0"), 16) >> CAP_SYS_ADMIN & 1:
                out.append("this process runs as root without CAP_SYS_ADMIN, which creating namespaces needs")
            else:
                out.append("root cannot create namespaces here (unshare failed)")
        else:
            out.append("unprivileged user namespaces are denied (unshare of a user namespace failed)")
            for path, bad in (
                ("/proc/sys/user/max_user_namespaces", "0"),
                ("/proc/sys/kernel/unprivileged_userns_clone", "0"),
                ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1"),
            ):
                if _read(path) == bad:
                    out.append(f"{path} is {bad}")
        if seccomp:
            out.append(
                "a seccomp filter is on (Seccomp: 2 in /proc/self/status): Docker's and containerd's default "
                "profiles deny unshare without CAP_SYS_ADMIN"
            )
    if m.landlock_abi < 1:
        release = os.uname().release
        lsm = _read("/sys/kernel/security/lsm")
        why = f"Landlock is unavailable (kernel {release}; it needs Linux >= 5.13 with landlock among its LSMs"
        why += f", which are {lsm})" if lsm else ")"
        if seccomp:
            why += "; a seccomp filter is on and may deny landlock_create_ruleset"
        out.append(why)
    if not out:
        out.append(f"missing {list(missing)} on {m}")
    return out


def unavailable(m: _Machine, missing: Sequence[str]) -> SandboxUnavailable:
    why = "\n".join(f"  - {r}" for r in reasons(m, missing))
    return SandboxUnavailable(
        f"the code sandbox cannot run on this node ({socket.gethostname()}): it cannot enforce {', '.join(missing)}\n"
        f"why:\n{why}\n{FIX}"
    )


_CHECKS = {
    "python": ("import sys\nprint(sum(map(int, sys.stdin.read().split())))", "19 23", "42\n"),
    "cpp": (
        "#include <iostream>\nint main() { long a, b; std::cin >> a >> b; std::cout << a + b << std::endl; }",
        "19 23",
        "42\n",
    ),
}


def preflight(languages: Sequence[str] = LANGUAGES, require: Sequence[str] = REQUIRED) -> dict[str, bool]:
    """Check that the sandbox runs on this node before a study relies on it: the kernel probe, then
    a real run per language (C++ compiled in the sandbox, without the compile cache). Returns what
    is enforced; raises SandboxUnavailable naming the reason and the fix."""
    unknown = set(languages) - set(LANGUAGES)
    if unknown:
        raise ValueError(f"languages: expected some of {LANGUAGES}, got {sorted(unknown)}")
    try:
        m = machine()
    except (SandboxError, OSError, subprocess.SubprocessError) as e:
        raise SandboxUnavailable(f"the code sandbox cannot run on this node ({socket.gethostname()}): {e}\n{FIX}")
    if "cpp" in languages and not os.access(CXX, os.X_OK):
        raise SandboxUnavailable(
            f"the code sandbox cannot compile C++ on this node ({socket.gethostname()}): {CXX} is missing "
            "(apt-get install g++; pwlock's image has it)"
        )
    log.debug("sandbox preflight: %s", m)
    # A fresh compile cache: the compiler itself must run in the sandbox, not a binary cached earlier.
    with tempfile.TemporaryDirectory(prefix="pwlock-preflight-") as cache, Sandbox(1, require, cache) as box:
        for language in languages:
            source, stdin, expected = _CHECKS[language]
            try:
                r = box.run(Program(language, source), stdin, Limits(wall_s=60, cpu_s=30))
            except SandboxError as e:
                raise SandboxUnavailable(
                    f"the code sandbox cannot run a {language} program on this node ({socket.gethostname()}): {e}\n"
                    f"{FIX}"
                ) from e
            if not r.ok or r.stdout != expected:
                raise SandboxUnavailable(
                    f"the code sandbox ran a correct {language} program on this node ({socket.gethostname()}) but "
                    f"it failed: exit {r.exit_code}, compile error {r.compile_error!r}, stderr {r.stderr[-2000:]!r}"
                )
        return dict(box.enforced)


def toolchain() -> str:
    """The code task's C++ compiler, checked outside any sandbox (for image builds, where namespaces
    are denied): compiles a C++17 program with the task's flags and runs it. Returns its version."""
    with tempfile.TemporaryDirectory(prefix="pwlock-toolchain-") as tmp:
        source, binary = Path(tmp) / "main.cpp", Path(tmp) / "prog"
        source.write_text(_CHECKS["cpp"][0])
        subprocess.run([CXX, *CXX_FLAGS, "-o", str(binary), str(source)], check=True, capture_output=True)
        out = subprocess.run([str(binary)], input="19 23", capture_output=True, text=True, check=True).stdout
        if out != "42\n":
            raise SandboxError(f"{CXX}: a compiled C++ program printed {out!r}, expected '42\\n'")
    return _cxx_version()


def _preflight_here(languages: Sequence[str]) -> tuple[str, str, dict[str, bool] | None]:
    """(node address, error message or "", what is enforced) for Ray: exceptions carry no state across."""
    import ray  # deferred: only a sweep's driver fans the preflight out over nodes

    node = ray.util.get_node_ip_address()
    try:
        return node, "", preflight(languages)
    except SandboxError as e:
        return node, str(e), None


def preflight_cluster(
    languages: Sequence[str] = LANGUAGES, resources: dict[str, float] | None = None
) -> dict[str, dict[str, bool]]:
    """Run `preflight` on every alive node of the connected Ray cluster that has CPUs (those that
    run trials and stages); with none (a cluster scaled to zero), on one node the autoscaler starts
    for a task of `resources` (a trial's), since a worker group's nodes share one image and one pod
    spec. Returns what each node enforces, by address; raises SandboxUnavailable naming every node
    that refused, with its reason and the fix."""
    import ray  # deferred: only a sweep's driver fans the preflight out over nodes
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    check = ray.remote(num_cpus=0, max_retries=0)(_preflight_here)
    nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
    if nodes:
        refs = [
            check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                list(languages)
            )
            for n in nodes
        ]
    else:
        shape = dict(resources or {"CPU": 1})
        cpus, gpus = shape.pop("CPU", 1), shape.pop("GPU", 0)
        refs = [check.options(num_cpus=cpus, num_gpus=gpus, resources=shape or None).remote(list(languages))]
    results = ray.get(refs)
    refused = [f"node {node}: {error}" for node, error, _ in results if error]
    if refused:
        raise SandboxUnavailable("\n\n".join(refused))
    return {node: enforced_ for node, _, enforced_ in results}


__all__ = [
    "Limits",
    "Program",
    "RunResult",
    "Sandbox",
    "SandboxError",
    "SandboxUnavailable",
    "enforced",
    "machine",
    "preflight",
    "preflight_cluster",
]
