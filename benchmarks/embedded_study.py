"""Wall time of each stage of the embedded study (the README's first command), on this machine.

    python benchmarks/embedded_study.py            # the default study, fresh store
    python benchmarks/embedded_study.py --quick    # the --quick smoke run
    python benchmarks/embedded_study.py --reuse    # run twice on one store: the second reuses upstream

Prints Ray start-up, each upstream artifact's build, the Tune trials (and per-trial times), writing
results, and the total, plus the study's headline numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import pandas as pd

from pwlock import analysis, sweep
from pwlock.config import load_config
from pwlock.logs import setup_logging
from pwlock.plan import plan
from pwlock.store import open_store

ROOT = Path(__file__).resolve().parents[1]


def report(exp_dir: Path) -> None:
    timings = json.loads((exp_dir / analysis.TIMINGS).read_text())
    print(f"\n== {exp_dir.name}")
    for phase, s in timings["phases_s"].items():
        print(f"  {phase:<28} {s:8.1f} s")
    for label, a in timings["artifacts"].items():
        state = "reused" if a["reused"] else f"built in {a['build_s']:.1f} s"
        print(f"    {label:<26} {state}")
    trials = pd.concat(df.assign(trial=t) for t, df in _trial_frames(exp_dir).items())
    per_trial = trials.groupby("trial")["time_total_s"].max()
    print(
        f"    trials: {len(per_trial)}, per trial median {per_trial.median():.1f} s, max {per_trial.max():.1f} s, "
        f"sum {per_trial.sum():.1f} s"
    )
    summary = analysis.load_summary(exp_dir)
    print(analysis.table(summary))


def _trial_frames(exp_dir: Path):
    from ray.tune import ExperimentAnalysis

    return ExperimentAnalysis(str(exp_dir)).trial_dataframes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "sweeps" / "configs" / "local.yaml")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reuse", action="store_true", help="run a second time on the same store")
    parser.add_argument("--storage", type=Path, default=None, help="default: a fresh temporary directory")
    args = parser.parse_args()
    setup_logging()
    cfg = load_config(args.config, quick=args.quick)
    storage = args.storage or Path(tempfile.mkdtemp(prefix="pwlock-bench-"))
    store = open_store(str(storage))
    runs = [Path(sweep.run(plan(cfg), store, f"{cfg.name}_bench_{i}")) for i in range(2 if args.reuse else 1)]
    for exp_dir in runs:
        report(exp_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
