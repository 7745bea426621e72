"""Ray Tune's bookkeeping cost for many no-op trials, on local disk and on a real S3 server.

Runs N trials of a function trainable that only calls `tune.report({"x": 1})` and, per backend,
measures: wall time of the `Tuner.fit` calls, trials/s, the driver's RSS at N/8, N/2 and N finished
trials (500 / 2,000 / 4,000 for N = 4,000; the goal is flat) and its peak RSS, the experiment-state
files left in the store, and what was sent to the store per trial. For S3 that is requests and
payload bytes from SeaweedFS's own Prometheus counters (server side: the driver does no extra work,
so timing is untouched); for local disk it is the driver's written bytes (/proc/self/io wchar:
staging files plus their copies into the store). Each run then reads the results back from the store
with Ray shut down (`ExperimentAnalysis(path, storage_filesystem=fs).trial_dataframes`,
`ResultGrid.get_dataframe()`), fails unless all N trials come back, and fails if an experiment-level
file holds the S3 secret key.

    python benchmarks/sweep_overhead.py --trials 200                       # both backends, ~30 s
    python benchmarks/sweep_overhead.py --trials 4000 --settings defaults  # pwlock's settings before
    python benchmarks/sweep_overhead.py --trials 1000 --set env.TUNE_GLOBAL_CHECKPOINT_S=None
    python benchmarks/sweep_overhead.py --trials 4000 --experiments 4      # 4 experiments of 1,000
    python benchmarks/sweep_overhead.py --trials 600 --crash-after 400     # + Tuner.restore check

`--set SECTION.KEY=VALUE` changes one entry of `bookkeeping_settings()` (None removes it).
`--crash-after K` raises out of Tune's loop after K finished trials (no final snapshot, as when the
driver is killed), then runs `Tuner.restore(path, trainable, storage_filesystem=fs)` in a fresh Ray
and reports how many finished trials ran again (those the last snapshot did not record).
Each backend runs in its own child process so that one run's memory does not leak into the next.

Measured on 2 shared cores, 4,000 trials (local / S3; run back to back, timings vary ~1.5x with load):
pwlock's old settings 114 s / 336 s, driver 456 -> 594 MB (peak 778) / 636 -> 825 MB (peak 967),
56 S3 requests per trial; `bookkeeping_settings()` 74 s / 129 s, 258 -> 337 MB / 373 -> 452 MB,
10 requests per trial; the same as 4 experiments of 1,000: 73 s / 123 s, 248 -> 290 MB (peak 300) /
307 -> 381 MB (peak 389). The state file stays ~9 KB per trial (35 MB at 4,000): Ray's own
per-trial metadata, which no setting removes; it is written once per snapshot.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any


def bookkeeping_settings() -> dict[str, Any]:
    """pwlock's settings, as the sweep applies them (pwlock.runtime.TUNE_ENV and tune_bookkeeping,
    pwlock.store.S3_WRITES, tune.with_parameters in pwlock.sweep), in this script's plain form:
    `env` goes into os.environ, `*_config` are keyword arguments of the Tune class of that name,
    `callbacks` import paths, `s3_filesystem` keyword arguments of pyarrow's S3FileSystem."""
    from pwlock.runtime import TUNE_ENV
    from pwlock.store import S3_WRITES

    return {
        "env": dict(TUNE_ENV),
        "tune_config": {"reuse_actors": True},
        "run_config": {"verbose": 1},
        "sync_config": {"sync_artifacts": False},
        # num_to_keep unset: with it, a trial's num_to_keep-th checkpoint forces a snapshot.
        "checkpoint_config": {},
        "callbacks": ["ray.tune.logger.JsonLoggerCallback"],
        "constants_via_with_parameters": True,
        "s3_filesystem": dict(S3_WRITES),
    }


def default_settings() -> dict[str, Any]:
    """What pwlock's sweep used before: Ray's defaults plus reuse_actors=True and verbose=1
    (without reuse_actors, 4,000 no-op trials take hours)."""
    return {
        "env": {},
        "tune_config": {"reuse_actors": True},
        "run_config": {"verbose": 1},
        "sync_config": {},
        "checkpoint_config": {},
        "callbacks": [],
        "constants_via_with_parameters": False,
        "s3_filesystem": {},
    }


LOCAL_RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "AWS_EC2_METADATA_DISABLED": "true",
}
# Fixed inputs of a trial, shaped like pwlock's elicitation constants (~1 KB of JSON).
CONSTANTS: dict[str, Any] = {
    "store": "s3://pwlock/store",
    "task": {"name": "function_composition", "n_functions": 8, "depth": 3, "seed": 0},
    "method": "sft",
    "demonstrator": "strong",
    "train": {
        "lr": 1e-4,
        "batch_size": 32,
        "optimizer": "adamw",
        "weight_decay": 0.0,
        "warmup": 0,
        "max_steps": 100,
        "grad_clip": 1.0,
    },
    "sample_budgets": [4, 16, 64, 256, 1024, 4096],
    "eval": {"split": "val", "max_problems": 512, "batch_size": 256, "temperature": 0.0},
    "dtype": "float32",
    "cpus": 1,
    "locked_key": {"sft": "0" * 64, "scratch": "f" * 64},
}


def noop_trial(config: dict[str, Any], constants: dict[str, Any] | None = None) -> None:
    from ray import tune

    tune.report({"x": 1})


def apply_overrides(settings: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`section.key=value` (value a Python literal, else a string) or `key=value` at top level."""
    settings = copy.deepcopy(settings)
    for item in overrides:
        path, _, raw = item.partition("=")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        *sections, key = path.split(".")
        target = settings
        for s in sections:
            target = target.setdefault(s, {})
        if sections == ["env"] and value is not None:
            value = raw  # environment variables are strings
        if value is None and sections:
            target.pop(key, None)
        else:
            target[key] = value
    return settings


# ---------------------------------------------------------------------------------- measurement


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def driver_written_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def s3_counters(metrics_url: str | None) -> dict[str, float]:
    """SeaweedFS's S3 request counts (total and by type) and received payload bytes."""
    if metrics_url is None:
        return {}
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    out: dict[str, float] = {"requests": 0.0, "bytes": 0.0}
    for m in re.finditer(r'^SeaweedFS_s3_request_total\{[^}]*type="(\w+)"[^}]*\} (\S+)$', text, re.M):
        out["requests"] += float(m.group(2))
        out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    for m in re.finditer(r"^SeaweedFS_s3_bucket_traffic_received_bytes_total\{[^}]*\} (\S+)$", text, re.M):
        out["bytes"] += float(m.group(1))
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


CRASH_ENV = "SWEEP_OVERHEAD_CRASH_AFTER"  # read at each trial end, so a restored run does not crash again


def marks(n: int) -> list[int]:
    return [max(1, n // 8), max(1, n // 2), n]


def make_probe(n: int, metrics_url: str | None, t0: float, offset: int = 0) -> Any:
    """A Tune callback recording the driver's memory (and S3 requests) at N/8, N/2 and N finished
    trials (`offset` of them finished in earlier experiments); it raises out of Tune's loop once
    $SWEEP_OVERHEAD_CRASH_AFTER trials of its experiment have finished, when that is set."""
    from ray import tune

    class Probe(tune.Callback):
        def __init__(self) -> None:
            self.done, self.samples, self.crashed_at = 0, {}, None

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.done += 1
            if offset + self.done in marks(n):
                self.samples[offset + self.done] = {
                    "t": time.perf_counter() - t0,
                    "rss_mb": rss_mb(),
                    "peak_rss_mb": peak_rss_mb(),
                    **s3_counters(metrics_url),
                }

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            # Not in on_trial_complete: Tune catches errors there and marks the trial as failed.
            if os.environ.get(CRASH_ENV) and self.done >= int(os.environ[CRASH_ENV]):
                self.crashed_at = self.done
                raise RuntimeError(f"simulated driver crash after {self.done} finished trials")

    return Probe()


def start_s3(root: Path) -> tuple[Any, str]:
    """SeaweedFS with its Prometheus endpoint, which counts requests server side."""
    from pwlock.s3server import SeaweedServer

    server = SeaweedServer(root, metrics=True).start()
    return server, server.metrics_url


def store_listing(fs: Any, path: str, secret: str | None = None) -> dict[str, Any]:
    """Objects under the experiment, and the experiment-level files (which must not hold `secret`)."""
    import pyarrow.fs as pafs

    infos = [i for i in fs.get_file_info(pafs.FileSelector(path, recursive=True)) if i.type == pafs.FileType.File]
    top = {Path(i.path).name: i.size for i in infos if Path(i.path).parent.as_posix() == path}
    if secret:
        for name in top:
            with fs.open_input_stream(f"{path}/{name}") as f:
                if secret.encode() in f.readall():
                    raise RuntimeError(f"{path}/{name} holds the S3 secret key")
    return {
        "objects": len(infos),
        "bytes": sum(i.size for i in infos),
        "state_bytes": sum(s for name, s in top.items() if name.startswith("experiment_state")),
        "top_files": top,
    }


def read_back(fs: Any, path: str) -> dict[str, Any]:
    """Results from the store alone, as pwlock's analysis reads them (no Ray running)."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    t0 = time.perf_counter()
    ea = ExperimentAnalysis(path, storage_filesystem=fs)
    with_rows = sum(len(df) > 0 for df in ea.trial_dataframes.values())
    df = ResultGrid(ea).get_dataframe()
    return {
        "trials": len(ea.trials),
        "trials_with_results": with_rows,
        "grid_rows": len(df),
        "read_s": time.perf_counter() - t0,
    }


# ---------------------------------------------------------------------------------- one run


def build_tuner(
    settings: dict[str, Any], seeds: range, storage_path: str, fs: Any, name: str, extra_callbacks: list
) -> Any:
    import importlib

    from ray import tune

    callbacks = [
        getattr(importlib.import_module(p.rpartition(".")[0]), p.rpartition(".")[2])() for p in settings["callbacks"]
    ]
    grid = {"seed": tune.grid_search(list(seeds))}
    space = grid if settings["constants_via_with_parameters"] else {**CONSTANTS, **grid}
    run_config = tune.RunConfig(
        name=name,
        storage_path=storage_path,
        storage_filesystem=fs,
        sync_config=tune.SyncConfig(**settings["sync_config"]),
        checkpoint_config=tune.CheckpointConfig(**settings["checkpoint_config"]),
        callbacks=callbacks + extra_callbacks,
        **settings["run_config"],
    )
    tune_config = tune.TuneConfig(**settings["tune_config"])
    return tune.Tuner(trainable(settings), param_space=space, tune_config=tune_config, run_config=run_config)


def trainable(settings: dict[str, Any]) -> Any:
    """The trainable; with_parameters puts the constants in the object store of the current Ray."""
    from ray import tune

    return (
        tune.with_parameters(noop_trial, constants=CONSTANTS)
        if settings["constants_via_with_parameters"]
        else noop_trial
    )


def resume(n: int, finished: int, settings: dict[str, Any], exp_path: str, fs: Any) -> dict[str, Any]:
    """After a crash: a fresh Ray, `Tuner.restore`, finish. Trials whose last result is newer than
    the restore ran (again) in the resumed run."""
    import ray
    from ray import tune

    del os.environ[CRASH_ENV]
    ray.shutdown()
    init_ray()
    t0, since = time.perf_counter(), time.time()
    grid = tune.Tuner.restore(exp_path, trainable(settings), storage_filesystem=fs).fit()
    ran = sum(r.metrics.get("timestamp", 0) >= int(since) for r in grid)
    return {
        "finished_before_crash": finished,
        "ran_after_restore": ran,
        "rerun": ran - (n - finished),
        "resume_wall_s": time.perf_counter() - t0,
        "errors": sum(r.error is not None for r in grid),
    }


def init_ray() -> None:
    import ray

    ray.init(
        num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="ERROR", log_to_driver=False
    )


def run_one(
    backend: str, n: int, settings: dict[str, Any], work: Path, crash_after: int | None, experiments: int = 1
) -> dict[str, Any]:
    """N trials as `experiments` Tuner.fit calls one after the other, on one backend, then read back."""
    os.environ.update(LOCAL_RAY_ENV)
    os.environ.update(settings["env"])
    server, metrics_url = None, None
    if backend == "s3":
        server, metrics_url = start_s3(work / "s3")
        os.environ.update(server.env)
    try:
        import pyarrow.fs as pafs
        import ray

        if server is not None:
            fs = pafs.S3FileSystem(
                endpoint_override=server.endpoint.removeprefix("http://"),
                scheme="http",
                region=server.region,
                **settings["s3_filesystem"],
            )
            storage_path = f"{server.bucket}/sweep-overhead"
        else:
            fs, storage_path = pafs.LocalFileSystem(), str(work / "results")
        size = n // experiments
        names = [f"noop{n}" if experiments == 1 else f"noop{n}-{i + 1}of{experiments}" for i in range(experiments)]
        init_ray()
        if crash_after is not None:
            os.environ[CRASH_ENV] = str(crash_after)
        before, wchar0, t0 = s3_counters(metrics_url), driver_written_bytes(), time.perf_counter()
        samples, crashed = {}, None
        for i, name in enumerate(names):
            probe = make_probe(n, metrics_url, t0, offset=i * size)
            seeds = range(i * size, n if i == experiments - 1 else (i + 1) * size)
            try:
                build_tuner(settings, seeds, storage_path, fs, name, [probe]).fit()
            except Exception as e:  # Tuner.fit wraps the callback's error in a TuneError
                if crash_after is None or "simulated driver crash" not in repr(e) + repr(e.__cause__):
                    raise
                crashed = probe.crashed_at
            samples.update(probe.samples)
        wall = time.perf_counter() - t0
        sent = delta(s3_counters(metrics_url), before)
        written = driver_written_bytes() - wchar0
        out: dict[str, Any] = {
            "backend": backend,
            "trials": n,
            "experiments": experiments,
            "wall_s": wall,
            "trials_per_s": n / wall,
            "samples": samples,
            "peak_rss_mb": peak_rss_mb(),
            "sent": sent,
            "driver_written": written,
            "settings": settings,
        }
        if crashed:
            out["restore"] = resume(n, crashed, settings, f"{storage_path}/{names[0]}", fs)
        ray.shutdown()
        out["store"], out["read_back"] = {}, {}
        for name in names:
            listing = store_listing(fs, f"{storage_path}/{name}", server.secret_key if server else None)
            before = s3_counters(metrics_url)
            back = {**read_back(fs, f"{storage_path}/{name}"), **delta(s3_counters(metrics_url), before)}
            for total, part in ((out["store"], listing), (out["read_back"], back)):
                for k, v in part.items():
                    total[k] = {**total.get(k, {}), **v} if isinstance(v, dict) else total.get(k, 0) + v
        if out["read_back"]["trials_with_results"] != n or out["read_back"]["grid_rows"] != n:
            raise RuntimeError(f"{backend}: read back {out['read_back']} from the store, expected {n} trials")
        return out
    finally:
        if server is not None:
            server.stop()


# ---------------------------------------------------------------------------------- report


def table(results: list[dict[str, Any]]) -> str:
    head = [
        "backend",
        "trials",
        "exps",
        "wall s",
        "trials/s",
        "RSS@N/8",
        "RSS@N/2",
        "RSS@N",
        "peak RSS",
        "state MB",
        "store objs/trial",
        "req/trial",
        "KB sent/trial",
        "drv KB wr/trial",
        "read-back s",
    ]
    rows = [head]
    for r in results:
        n, samples = r["trials"], r["samples"]
        rss = [samples.get(str(k), samples.get(k, {})).get("rss_mb") for k in marks(n)]
        sent = r["sent"]
        rows.append(
            [
                r["backend"],
                str(n),
                str(r.get("experiments", 1)),
                f"{r['wall_s']:.0f}",
                f"{r['trials_per_s']:.1f}",
                *[f"{v:.0f}" if v is not None else "-" for v in rss],
                f"{r['peak_rss_mb']:.0f}",
                f"{r['store']['state_bytes'] / 2**20:.2f}",
                f"{r['store']['objects'] / n:.1f}",
                f"{sent['requests'] / n:.1f}" if sent else "-",
                f"{sent['bytes'] / n / 1024:.1f}" if sent else "-",
                f"{r['driver_written'] / n / 1024:.1f}",
                f"{r['read_back']['read_s']:.1f}",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=4000)
    parser.add_argument("--backend", choices=["local", "s3", "both"], default="both")
    parser.add_argument("--settings", choices=["recommended", "defaults"], default="recommended")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one setting, e.g. env.TUNE_GLOBAL_CHECKPOINT_S=60 or "
        "tune_config.max_concurrent_trials=2 (value None removes it)",
    )
    parser.add_argument(
        "--experiments", type=int, default=1, help="split the grid into this many experiments, run one after the other"
    )
    parser.add_argument("--crash-after", type=int, default=None, help="simulate a crash, then Tuner.restore")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # JSON spec of one run
    args = parser.parse_args(argv)
    if args.crash_after is not None and args.experiments != 1:
        parser.error("--crash-after needs --experiments 1")

    if args.child:
        spec = json.loads(args.child)
        result = run_one(
            spec["backend"],
            spec["trials"],
            spec["settings"],
            Path(spec["work"]),
            spec["crash_after"],
            spec["experiments"],
        )
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    base = bookkeeping_settings() if args.settings == "recommended" else default_settings()
    settings = apply_overrides(base, args.set)
    backends = ["local", "s3"] if args.backend == "both" else [args.backend]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_sweep_overhead_") as tmp:
        for backend in backends:
            spec = {
                "backend": backend,
                "trials": args.trials,
                "settings": settings,
                "work": str(Path(tmp, backend)),
                "crash_after": args.crash_after,
                "experiments": args.experiments,
            }
            proc = subprocess.run(
                [sys.executable, __file__, "--child", json.dumps(spec)], stdout=subprocess.PIPE, text=True
            )
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                print(proc.stdout[-3000:], file=sys.stderr)
                raise SystemExit(f"{backend} run failed (exit {proc.returncode})")
            results.append(json.loads(lines[-1].removeprefix("RESULT ")))
            r = results[-1]
            print(
                f"{backend}: {r['wall_s']:.1f} s, memory {r['samples']}, store {r['store']}, "
                f"sent {r['sent']}, read back {r['read_back']}"
                + (f", restore {r['restore']}" if "restore" in r else ""),
                flush=True,
            )
    print(f"\nsettings: {json.dumps(settings)}\n")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
