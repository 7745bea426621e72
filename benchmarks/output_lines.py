"""Lines a sweep prints: N no-op trials (sweep_overhead's grid) with Tune's output as pwlock had it
(`verbose=1`) and as pwlock sets it now (pwlock.progress.quiet_tune and SweepProgress's lines), with
`--fail K` of them raising, to show that errors still print in full.

    python benchmarks/output_lines.py --trials 400
    python benchmarks/output_lines.py --trials 400 --fail 1

Each setting runs in a child process (a fresh local Ray); the count is of its stdout and stderr lines.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

SETTINGS = ("tune verbose=1", "pwlock")


def trial(config: dict[str, Any]) -> None:
    from ray import tune  # in the trial's worker

    if config["seed"] < config["fail"]:
        raise RuntimeError(f"trial {config['seed']} fails on purpose")
    tune.report({"x": 1, "best": 0.5})


def child(setting: str, trials: int, fail: int, storage: str) -> None:
    import ray
    from ray import tune

    from pwlock.logs import setup_logging
    from pwlock.progress import SweepProgress, quiet_tune

    setup_logging()
    pwlock = setting == "pwlock"
    output = quiet_tune() if pwlock else {"verbose": 1}
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="ERROR")
    tune.Tuner(
        trial,
        param_space={"seed": tune.grid_search(list(range(trials))), "fail": fail},
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(
            name="lines", storage_path=storage, callbacks=[SweepProgress("lines")] if pwlock else [], **output
        ),
    ).fit()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--fail", type=int, default=0, help="this many trials raise")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(**json.loads(args.child))
        return 0
    for setting in SETTINGS:
        with tempfile.TemporaryDirectory(prefix="bench_output_lines_") as tmp:
            spec = {"setting": setting, "trials": args.trials, "fail": args.fail, "storage": str(Path(tmp))}
            out = subprocess.run(
                [sys.executable, __file__, "--child", json.dumps(spec)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        lines = out.stdout.splitlines()
        shown = sum("fails on purpose" in line for line in lines)
        print(f"{setting}: {len(lines)} lines for {args.trials} trials, {args.fail} failing (its error: {shown} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
