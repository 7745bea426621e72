"""Mathematical equivalence of two answers, judged by math-verify in a child process.

math-verify (Hugging Face's parser and grader of LaTeX answers, built on sympy) decides that
`\\frac{1}{2}`, `0.5` and `1/2` are the same answer, with sets, intervals and equations too; it runs
offline. It bounds each step with `signal.alarm`, which works only in a main thread: called from a
Ray Tune trainable's thread it raises, and with its timeouts off a pathological answer could hang
the trial. So the judge runs in a child process, in that process's main thread, with math-verify's
own timeouts, and the parent kills the child if an answer takes longer than that (sympy stuck in C
code ignores the alarm); the answer then counts as wrong and the next one gets a fresh child.
"""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import threading
import weakref
from pathlib import Path

import pwlock

_ROOT = str(Path(pwlock.__file__).resolve().parents[1])
STARTUP_TIMEOUT_S = 120.0  # importing sympy on a loaded machine


class Equivalence:
    """`judge(gold, answer)`: whether the LaTeX `answer` equals the reference `gold`. Safe to call
    from any thread (calls are serialised); at most about 3 × `timeout_s` per answer."""

    def __init__(self, timeout_s: int = 5):
        if timeout_s < 1:
            raise ValueError(
                f"timeout_s: expected at least 1 second (signal.alarm counts whole seconds), got {timeout_s}"
            )
        self.timeout_s = int(timeout_s)
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._buf = b""
        self.restarts = 0  # children killed for taking too long

    def __call__(self, gold: str, answer: str) -> bool:
        with self._lock:
            proc = self._child()
            try:
                proc.stdin.write((json.dumps([gold, answer]) + "\n").encode())
                proc.stdin.flush()
            except BrokenPipeError:
                self._kill()
                return False
            # Parsing the gold, parsing the answer and comparing each get timeout_s inside the child.
            reply = self._readline(proc, 3 * self.timeout_s + 2)
            if reply is None:
                self._kill()
                self.restarts += 1
                return False
            return reply == "1"

    def close(self) -> None:
        with self._lock:
            self._kill()

    def _child(self) -> subprocess.Popen:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")]))}
        self._proc = subprocess.Popen(
            [sys.executable, "-c", f"from pwlock.tasks.equivalence import serve; serve({self.timeout_s})"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            bufsize=0,
        )
        self._buf = b""
        # The child also exits by itself when this process dies: its stdin closes.
        weakref.finalize(self, _kill, self._proc)
        if self._readline(self._proc, STARTUP_TIMEOUT_S) != "ready":
            self._kill()
            raise RuntimeError("the math-verify child process did not start (is math-verify installed?)")
        return self._proc

    def _readline(self, proc: subprocess.Popen, timeout_s: float) -> str | None:
        """One line from the child, or None if none came within `timeout_s` or it died."""
        fd = proc.stdout.fileno()
        while b"\n" not in self._buf:
            ready, _, _ = select.select([fd], [], [], timeout_s)
            if not ready:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def _kill(self) -> None:
        if self._proc is not None:
            _kill(self._proc)
            self._proc = None

    def __getstate__(self) -> dict:
        return {"timeout_s": self.timeout_s}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["timeout_s"])


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


def serve(timeout_s: int) -> None:
    """The child: read `[gold, answer]` lines, write `1` (equivalent) or `0`."""
    from math_verify import parse, verify  # sympy behind it takes seconds: only the scoring child loads it

    logging.disable(logging.WARNING)  # math-verify logs every timeout and unparsable answer
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        gold, answer = json.loads(line)
        try:
            ok = verify(
                parse(f"\\boxed{{{gold}}}", parsing_timeout=timeout_s),
                parse(f"\\boxed{{{answer}}}", parsing_timeout=timeout_s),
                timeout_seconds=timeout_s,
            )
        except Exception:  # an answer math-verify cannot handle is not a correct answer
            ok = False
        out.write("1\n" if ok else "0\n")
        out.flush()
