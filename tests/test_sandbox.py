"""The sandbox that runs generated programs: hostile programs score 0 and leave the host as it was.

Each hostile program would score 1 outside a sandbox: it prints the right answer to the fixture's
`sum` problem (a + b), and only after its attack worked, where the attack is not a time or output
limit itself. Every test checks what the host would show if the attack had worked."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pwlock import sandbox
from pwlock.sandbox import Limits, Program, Sandbox
from pwlock.tasks import make_task

FIXTURES = Path(__file__).parent / "fixtures" / "code"


# C++ binaries compile into a cache of this module's own, not the user's.
pytestmark = pytest.mark.usefixtures("compile_cache")
SLOT_UIDS = range(
    sandbox.UID_BASE + (os.getpid() % 100_000) * 1_000, sandbox.UID_BASE + (os.getpid() % 100_000 + 1) * 1_000
)


def code_task(language: str, **extra):
    return make_task(
        {"name": "code", "data": [{"path": str(FIXTURES / "stdio.jsonl")}], "language": language, "workers": 2, **extra}
    )


@pytest.fixture(scope="module")
def py_task():
    return code_task("python")


@pytest.fixture(scope="module")
def cpp_task():
    return code_task("cpp")


def the_problem(task):
    return next(p for s in ("weak", "lock", "elicit", "val") for p in task.problems(s) if p.id == "sum")


def outcome(task, source: str):
    """Every test of `sum`, and the score (which stops at the first failing test)."""
    problem = the_problem(task)
    completion = f"```{task.cfg.language}\n{source}\n```"
    full = task.evaluate([problem], [completion])[0]
    return full, task.score(problem, completion)


def leftovers() -> list[str]:
    """Processes that runs left behind: any with a sandbox uid of this test process (when started
    as root), any fork of a sandbox server (the servers themselves are this process's children) and
    any program the tests made to outlive them, unless it runs below another pytest process: a test
    run beside this one, with uids and processes of its own."""
    procs = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            status = (entry / "status").read_text()
            uid = int(status.split("\nUid:")[1].split()[1])
            ppid = int(status.split("\nPPid:")[1].split()[0])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        procs[int(entry.name)] = (uid, ppid, cmdline)

    def another_run(pid: int) -> bool:
        """Below another pytest process than this one (a test run beside this one)."""
        seen = set()
        while pid in procs and pid not in seen:
            seen.add(pid)
            pid = procs[pid][1]
            if pid in procs and "pytest" in procs[pid][2]:
                return True
        return False

    found = []
    for pid, (uid, ppid, cmdline) in procs.items():
        fork = "sandbox_launch.py serve" in cmdline and ppid != os.getpid()
        if uid in SLOT_UIDS or ((fork or "4242.5" in cmdline) and not another_run(pid)):
            found.append(f"{pid}: uid {uid} ppid {ppid} {cmdline[:100]}")
    return found


def assert_clean(task):
    assert leftovers() == []
    ok, score = outcome(task, GOOD[task.cfg.language])  # the sandbox still works
    assert score == 1.0 and ok.correct


GOOD = {
    "python": "a, b = map(int, input().split())\nprint(a + b)",
    "cpp": "#include <iostream>\nint main() { long long a, b; std::cin >> a >> b; std::cout << a + b << std::endl; }",
}
PY_ANSWER = "a, b = map(int, input().split())\n"  # then `print(a + b)` once the attack worked


# -- the machine ---------------------------------------------------------------------------------
def test_every_protection_is_enforced_on_this_machine(py_task):
    cgroups = sandbox.machine().root  # cgroups for runs: as root, here
    assert py_task.sandbox.enforced == {k: True for k in sandbox.enforced(cgroups=cgroups)} | {"memory_total": cgroups}


def test_a_good_program_scores_1_in_both_languages(py_task, cpp_task):
    for task in (py_task, cpp_task):
        full, score = outcome(task, GOOD[task.cfg.language])
        assert score == 1.0 and full.passed == full.total == 3


# -- hostile programs ------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["cwd", "host"])
def test_writing_a_file_scores_0_and_nothing_reaches_the_host(py_task, tmp_path, where):
    target = "out.txt" if where == "cwd" else str(tmp_path / "pwned.txt")
    full, score = outcome(py_task, f"{PY_ANSWER}open({target!r}, 'w').write('x')\nprint(a + b)")
    assert score == 0.0 and full.passed == 0
    if where == "cwd":  # the paper's rule: a correct solution writes no file at all
        assert all(r.files_written == ("out.txt",) for r in full.runs) and "wrote files" in full.failure
    else:
        assert not (tmp_path / "pwned.txt").exists()
        assert "No such file or directory" in full.runs[0].stderr  # /tmp is an empty tmpfs inside
    assert_clean(py_task)


def test_writing_anywhere_outside_its_directory_is_refused(py_task, tmp_path):
    repo_file = Path(__file__).parent / f".pwned-{secrets.token_hex(4)}"
    attempts = [str(repo_file), "/tmp/x", "/var/tmp/x", "/dev/shm/x", "/etc/pwned", "/usr/pwned"]
    source = (
        PY_ANSWER
        + "import sys\nok = 0\n"
        + "".join(
            f"try:\n    open({p!r}, 'w').write('x')\n    ok += 1\nexcept OSError as e:\n    print(e, file=sys.stderr)\n"
            for p in attempts
        )
        + "if ok:\n    print(a + b)\n"
    )
    full, score = outcome(py_task, source)
    assert score == 0.0 and full.passed == 0
    assert not repo_file.exists()
    assert full.runs[0].stderr.count("Errno") == len(attempts)


def test_reading_host_files_and_listing_the_host_fail(py_task, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cr3t")
    here = Path(__file__).resolve()
    source = (
        PY_ANSWER + f"import os\nseen = open({str(here)!r}).read() + open({str(secret)!r}).read()\n"
        "seen += str(os.listdir('/'))\nprint(a + b)\nprint(seen)"
    )
    full, score = outcome(py_task, source)
    assert score == 0.0 and full.passed == 0
    # Denied by Landlock, or not there at all when the file lies under a directory the sandbox
    # hides (a checkout under /tmp or /home): either way the program cannot read it.
    err = full.runs[0].stderr
    assert "s3cr3t" not in full.runs[0].stdout and ("PermissionError" in err or "FileNotFoundError" in err)


@pytest.mark.parametrize("kind", ["tcp", "udp", "unix"])
def test_network_is_unreachable(py_task, tmp_path, kind):
    received: list[bytes] = []
    if kind == "unix":
        family, address = socket.AF_UNIX, str(tmp_path / "host.sock")
    else:
        family, address = socket.AF_INET, ("127.0.0.1", 0)
    server = socket.socket(family, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
    server.bind(address)
    address = server.getsockname()
    if kind != "udp":
        server.listen()
    server.settimeout(0.2)

    def serve():
        while True:
            try:
                if kind == "udp":
                    received.append(server.recv(100))
                else:
                    conn, _ = server.accept()
                    received.append(conn.recv(100))
            except socket.timeout:
                continue
            except OSError:
                return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    connect = {
        "tcp": f"s = socket.create_connection({address!r}, timeout=2)\ns.sendall(b'leak')",
        "udp": f"s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.sendto(b'leak', {address!r})",
        "unix": f"s = socket.socket(socket.AF_UNIX)\ns.connect({address!r})\ns.sendall(b'leak')",
    }[kind]
    try:
        full, score = outcome(py_task, f"{PY_ANSWER}import socket\n{connect}\nprint(a + b)")
    finally:
        server.close()
        thread.join()
    assert score == 0.0 and full.passed == 0
    assert received == []
    assert "Error" in full.runs[0].stderr


def test_a_fork_bomb_is_contained(py_task):
    full, score = outcome(py_task, f"{PY_ANSWER}print(a + b, flush=True)\nimport os\nwhile True:\n    os.fork()")
    assert score == 0.0 and full.passed == 0
    assert all(r.exit_code != 0 for r in full.runs)
    assert_clean(py_task)


def test_allocating_10_gb_fails(py_task):
    full, score = outcome(py_task, f"{PY_ANSWER}x = bytearray(10 * 2**30)\nx[-1] = 1\nprint(a + b)")
    assert score == 0.0 and full.passed == 0
    assert "MemoryError" in full.runs[0].stderr


def test_many_processes_allocating_together_are_capped(py_task):
    if not py_task.sandbox.enforced["memory_total"]:
        pytest.skip("no cgroup for runs on this machine: running this would take 4 GB of the host's memory")
    source = (
        PY_ANSWER + "import os\nkids = []\nfor _ in range(8):\n    pid = os.fork()\n    if pid == 0:\n"
        "        x = bytearray(500 << 20)\n        x[::4096] = b'1' * len(x[::4096])\n        os._exit(0)\n"
        "    kids.append(pid)\nif all(os.waitpid(k, 0)[1] == 0 for k in kids):\n    print(a + b)\n"
    )
    full, score = outcome(py_task, source)  # each child stays under RLIMIT_AS; together they do not
    assert score == 0.0 and full.passed == 0
    assert_clean(py_task)


def test_an_infinite_loop_is_stopped(py_task):
    full, score = outcome(py_task, f"{PY_ANSWER}print(a + b, flush=True)\nwhile True:\n    pass")
    assert score == 0.0 and full.passed == 0
    assert all(r.timed_out for r in full.runs) and full.failure == "time limit"
    assert_clean(py_task)


def test_sleeping_past_the_limit_is_stopped(py_task):
    full, score = outcome(py_task, f"{PY_ANSWER}print(a + b, flush=True)\nimport time\ntime.sleep(60)")
    assert score == 0.0 and full.passed == 0
    assert all(r.timed_out and r.cpu_s < py_task.cfg.time_limit_s for r in full.runs)
    assert_clean(py_task)


def test_the_parents_environment_is_not_visible(monkeypatch):
    token = "pwlock-secret-" + secrets.token_hex(8)
    monkeypatch.setenv("PWLOCK_TEST_SECRET", token)
    task = code_task("python")  # its sandbox starts with the secret in this process's environment
    source = (
        PY_ANSWER + "import os\nseen = str(dict(os.environ))\n"
        "for pid in os.listdir('/proc'):\n"
        "    try:\n        seen += open(f'/proc/{pid}/environ', 'rb').read().decode(errors='replace')\n"
        "    except OSError:\n        pass\n"
        f"print(seen)\nif {token!r} in seen:\n    print(a + b)\n"
    )
    full, score = outcome(task, source)
    assert score == 0.0 and full.passed == 0
    assert full.runs[0].exit_code == 0  # it ran and looked
    assert token not in full.runs[0].stdout + full.runs[0].stderr
    assert "PATH" in full.runs[0].stdout  # what it sees: the sandbox's own small environment
    assert "PWLOCK_TEST_SECRET" not in full.runs[0].stdout


def test_killing_the_parent_or_the_host_fails():
    task = code_task("python")
    sentinel = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        source = (
            PY_ANSWER + "import os, signal\n"
            f"for pid in (os.getppid(), 1, {os.getpid()}, {sentinel.pid}, {task.sandbox._server._proc.pid}):\n"
            "    try:\n        os.kill(pid, signal.SIGKILL)\n        print('killed', pid)\n"
            "    except OSError as e:\n        print('refused', pid, e)\n"
            "os.kill(-1, signal.SIGKILL)\n"
        )
        full, score = outcome(task, source)
        assert score == 0.0 and full.passed == 0
        assert sentinel.poll() is None  # the host's processes live on
        assert "killed" not in full.runs[0].stdout
        assert_clean(task)  # and the sandbox's server too
    finally:
        sentinel.kill()
        sentinel.wait()


def test_a_daemon_does_not_outlive_the_run(py_task):
    # The program returns at once; its double-forked, setsid daemon would print the answer a
    # moment later and then live on as `sleep 4242.5`.
    source = (
        PY_ANSWER + "import os, sys, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        time.sleep(0.3)\n        print(a + b, flush=True)\n"
        "        os.execv('/bin/sleep', ['sleep', '4242.5'])\n"
        "    os._exit(0)\nos.wait()\n"
    )
    full, score = outcome(py_task, source)
    assert score == 0.0 and full.passed == 0
    assert [r.stdout for r in full.runs] == ["", "", ""]
    assert_clean(py_task)


def test_huge_output_is_cut_off(py_task):
    full, score = outcome(
        py_task, f"{PY_ANSWER}print(a + b)\nimport sys\nwhile True:\n    sys.stdout.write('x' * 65536)"
    )
    assert score == 0.0 and full.passed == 0
    assert all(r.output_exceeded and len(r.stdout) <= Limits().stdout_bytes for r in full.runs)
    assert full.failure == "output limit"
    assert_clean(py_task)


CPP_ANSWER = "long long a, b; std::cin >> a >> b;"


@pytest.mark.parametrize(
    "name, body",
    [
        ("fork bomb", f"{CPP_ANSWER} std::cout << a + b << std::endl; while (true) fork();"),
        ("infinite loop", f"{CPP_ANSWER} std::cout << a + b << std::endl; volatile long x = 0; while (true) x++;"),
        ("10 GB", f"{CPP_ANSWER} std::vector<char> v(10ull << 30); v[12345] = 1; std::cout << a + b << std::endl;"),
        (
            "write a file",
            f'{CPP_ANSWER} FILE *f = fopen("out.txt", "w"); fputs("x", f); fclose(f); std::cout << a + b << std::endl;',
        ),
        (
            "write /tmp",
            f'{CPP_ANSWER} FILE *f = fopen("/tmp/pwned", "w"); if (!f) return 1; std::cout << a + b << std::endl;',
        ),
        (
            "socket",
            f"{CPP_ANSWER} int s = socket(AF_INET, SOCK_STREAM, 0); sockaddr_in sa{{}}; sa.sin_family = AF_INET; "
            "sa.sin_port = htons(22); sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK); "
            "if (connect(s, (sockaddr *)&sa, sizeof sa) != 0) return 1; std::cout << a + b << std::endl;",
        ),
        ("kill parent", f"{CPP_ANSWER} if (kill(getppid(), SIGKILL) != 0) return 1; std::cout << a + b << std::endl;"),
    ],
)
def test_hostile_cpp_programs_score_0(cpp_task, name, body):
    source = (
        "#include <iostream>\n#include <vector>\n#include <cstdio>\n#include <csignal>\n#include <unistd.h>\n"
        "#include <sys/socket.h>\n#include <netinet/in.h>\n#include <arpa/inet.h>\n"
        f"int main() {{ {body} }}\n"
    )
    full, score = outcome(cpp_task, source)
    assert score == 0.0 and full.passed == 0, (name, full)
    assert not Path("/tmp/pwned").exists()
    assert_clean(cpp_task)


# -- mechanics ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def box():
    with Sandbox(workers=2) as sb:
        yield sb


def test_runs_see_a_clean_environment_and_their_own_directory(box):
    r = box.run(Program("python", "import os, sys\nprint(sorted(os.environ), os.getcwd(), sys.stdin.read())"), "in")
    assert r.ok and r.stdout == "['HOME', 'LANG', 'LC_ALL', 'PATH', 'TMPDIR'] /tmp/sandbox/work in\n"


def test_limits_are_set(box):
    source = (
        "import resource as r\nprint([r.getrlimit(getattr(r, 'RLIMIT_' + k))[0] for k in "
        "('CPU', 'AS', 'NPROC', 'FSIZE', 'NOFILE', 'CORE')])"
    )
    limits = Limits(cpu_s=2.5, memory_mb=512, nproc=7, fsize_mb=2, nofile=64)
    r = box.run(Program("python", source), limits=limits)
    assert r.stdout.strip() == str([3, 512 << 20, 7, 2 << 20, 64, 0])


def test_exit_codes_signals_and_stderr_come_back(box):
    results = box.map(
        [
            (Program("python", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"), "", Limits()),
            (Program("python", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"), "", Limits()),
            (Program("python", "exit(0)"), "", Limits()),  # `exit` works without `site`
            (Program("python", "raise ValueError('boom')"), "", Limits()),
        ]
    )
    assert [r.exit_code for r in results] == [3, -signal.SIGSEGV, 0, 1]
    assert results[0].stdout == "out\n" and results[0].stderr == "err\n"
    assert results[3].stderr.startswith("Traceback") and "ValueError: boom" in results[3].stderr
    assert "sandbox_launch" not in results[3].stderr  # the program's own frames only


def test_files_written_are_reported(box):
    r = box.run(Program("python", "import os\nos.mkdir('d')\nopen('d/f', 'w').write('x')\nopen('e', 'w')"))
    assert r.ok and r.files_written == ("d", "d/f", "e")


def test_file_size_limit(box):
    limits = Limits(fsize_mb=1)
    python = box.run(Program("python", "open('big', 'wb').write(b'x' * (3 << 20))"), limits=limits)
    assert python.exit_code == 1 and "OSError: [Errno 27] File too large" in python.stderr  # Python ignores SIGXFSZ
    cpp = box.run(
        Program(
            "cpp",
            '#include <cstdio>\nint main() { FILE *f = fopen("big", "w"); '
            "for (int i = 0; i < (3 << 20); i++) fputc(1, f); }",
        ),
        limits=limits,
    )
    assert cpp.exit_code == -signal.SIGXFSZ


def test_cpp_compiles_once_per_source_and_reports_errors(tmp_path):
    with Sandbox(workers=2, cache_dir=tmp_path / "cache") as sb:
        hello = Program("cpp", '#include <cstdio>\nint main() { puts("hi"); }')
        first = sb.compile_cpp(hello.source)
        assert first[0] is not None and first[0].is_file()
        assert sb.map([(hello, "", Limits())] * 4)[0].stdout == "hi\n"
        assert sb.compile_cpp(hello.source) == first
    with Sandbox(workers=1, cache_dir=tmp_path / "cache") as sb:  # a new process reads the cache on disk
        assert sb.compile_cpp(hello.source) == first
        bad = sb.run(Program("cpp", "int main() { return x; }"))
        assert bad.compile_error and "was not declared in this scope" in bad.compile_error and not bad.ok
        assert len(list((tmp_path / "cache").rglob("*.err"))) == 1


def test_without_namespaces_the_runs_cgroup_still_takes_its_daemons_down(monkeypatch):
    """Machines without user namespaces (some containers) fall back on Landlock, rlimits and the
    run's cgroup; a daemon that left the session dies with the run all the same."""
    m = sandbox.machine()
    if not m.root:
        pytest.skip("cgroups for runs need root here")
    monkeypatch.setattr(sandbox, "machine", lambda: sandbox._Machine(m.root, m.landlock_abi, False, False))
    with Sandbox(workers=1, require=("processes_contained", "writes_confined")) as sb:
        assert not sb.enforced["unprivileged"] and sb.enforced["processes_contained"]
        source = (
            "import os, time\nif os.fork() == 0:\n    os.setsid()\n    os.execv('/bin/sleep', ['sleep', '4242.5'])\n"
            "time.sleep(0.2)\nprint('done')"
        )
        r = sb.run(Program("python", source))
        assert r.ok and r.stdout == "done\n"
        assert leftovers() == []


def test_a_collected_sandbox_never_waits_for_threads_where_the_collector_runs():
    """A sandbox's finalizer runs where the garbage collector does, which can be inside threading's
    own bookkeeping (a thread starting, holding threading's lock for its shutdown locks): it must
    return there rather than join the pool's threads, which needs that lock (a whole test session
    once hung so). CPython's private lock is taken here as the collector held it."""
    box = Sandbox(workers=2)
    assert list(box._pool.map(abs, [-1, -2, -3])) == [1, 2, 3]  # the pool has threads to join
    done = threading.Event()

    def collect() -> None:
        with threading._shutdown_locks_lock:
            box._finalizer()
        done.set()

    threading.Thread(target=collect, daemon=True).start()
    assert done.wait(30), "the finalizer waited for the pool's threads"
