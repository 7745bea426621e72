"""What a multi-node cluster costs a sweep in scheduling: a grid of no-op trials on one Ray node
against the same slots spread over three nodes (pwlock.localcluster, all on this machine).

Each trial takes one CPU and only calls `tune.report`, under pwlock's Tune settings (reused actors,
pwlock.runtime.tune_bookkeeping, a local store). One node: a head with `--slots` CPUs. Three nodes:
a head and two workers sharing the same `--slots` CPUs (the head keeps the remainder). Printed per
cluster: wall time of `Tuner.fit`, trials per second, and the scheduling overhead per trial in
slot-seconds (wall × slots / trials: a no-op trial's whole share of the wall time is overhead);
then the 3-node / 1-node ratio of each. Every run must report every trial, or the script fails.

    python benchmarks/cluster_overhead.py                  # 200 trials, 3 slots
    python benchmarks/cluster_overhead.py --trials 1000 --repeats 3

On a shared 2-core machine, run it when the machine is quiet and compare the ratio, not the
seconds (docs/benchmarks.md). The nodes' processes share the cores: the 3-node figure includes
two more raylets' own work, which a real cluster runs on other machines.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pwlock.localcluster import LocalCluster


def noop_trial(config: dict) -> None:
    from ray import tune  # in the trial's worker: what it needs, no more

    tune.report({"x": 1})


def layout(slots: int, nodes: int) -> tuple[int, list[int]]:
    """CPUs of the head and of each worker: `slots` spread over `nodes` as evenly as they go."""
    share = [slots // nodes + (i < slots % nodes) for i in range(nodes)]
    return share[0], share[1:]


def run(root: Path, trials: int, slots: int, nodes: int) -> float:
    """Seconds of one `Tuner.fit` of `trials` no-op trials on a fresh cluster of `nodes` nodes."""
    # Ray after pwlock, which sets Ray's local defaults before Ray reads them (an earlier import of
    # Ray leaves this driver unable to join: it waits on the head's GCS forever).
    import ray
    from ray import tune

    from pwlock.runtime import tune_bookkeeping

    head_cpus, workers = layout(slots, nodes)
    with LocalCluster(root / f"{nodes}-nodes-{time.monotonic_ns()}", head_cpus=head_cpus) as c:
        for i, cpus in enumerate(workers):
            c.add_worker(f"worker-{i}", {"CPU": cpus})
        ray.init(address=c.address, logging_level="WARNING")
        try:
            assert len(c.nodes()) == nodes
            t0 = time.perf_counter()
            grid = tune.Tuner(
                tune.with_resources(noop_trial, {"CPU": 1}),
                param_space={"i": tune.grid_search(list(range(trials)))},
                tune_config=tune.TuneConfig(reuse_actors=True),
                run_config=tune.RunConfig(storage_path=str(root / "store"), verbose=0, **tune_bookkeeping()),
            ).fit()
            seconds = time.perf_counter() - t0
            done = sum(r.error is None and r.metrics.get("x") == 1 for r in grid)
            if done != trials:
                raise SystemExit(f"{nodes} nodes: {done} of {trials} trials reported")
            return seconds
        finally:
            ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--slots", type=int, default=3, help="CPUs in all, one per concurrent trial")
    parser.add_argument("--repeats", type=int, default=1, help="runs per cluster, alternating; medians shown")
    args = parser.parse_args(argv)
    if args.slots < 3:
        parser.error("--slots: at least 3 (one per node of the 3-node cluster)")
    seconds: dict[int, list[float]] = {1: [], 3: []}
    with tempfile.TemporaryDirectory(prefix="pwlock-cluster-overhead-") as d:
        for _ in range(args.repeats):
            for nodes in seconds:
                seconds[nodes].append(run(Path(d), args.trials, args.slots, nodes))
    wall = {n: statistics.median(s) for n, s in seconds.items()}
    overhead = {n: w * args.slots / args.trials for n, w in wall.items()}
    print(f"{args.trials} no-op trials, {args.slots} slots, median of {args.repeats} run(s) each")
    for n in wall:
        print(
            f"  {n} node{'s' if n > 1 else ' '}: wall {wall[n]:6.1f} s, {args.trials / wall[n]:5.1f} trials/s, "
            f"scheduling overhead {overhead[n] * 1000:6.0f} slot-ms per trial (runs: "
            + ", ".join(f"{x:.1f} s" for x in seconds[n])
            + ")"
        )
    print(f"  3 nodes / 1 node: wall {wall[3] / wall[1]:.2f}x, overhead per trial {overhead[3] / overhead[1]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
