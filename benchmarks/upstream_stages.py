"""Upstream stages and a few elicitation runs of a study in this process, without Ray, on the GPU
when there is one: wall time, training throughput and peak GPU memory of each stage.

    python benchmarks/upstream_stages.py --config sweeps/configs/paper_toy.yaml --ks 32 2048

Used to size GPU configs (e.g. how many trials share one GPU); the study itself runs through Ray.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from pwlock import stages
from pwlock.config import load_config
from pwlock.elicit.sft import demonstrations, elicit_sft
from pwlock.logs import setup_logging
from pwlock.models import default_device, load_policy, n_parameters
from pwlock.tasks import make_task

ROOT = Path(__file__).resolve().parents[1]
TOY_EXAMPLE_TOKENS = 20  # function composition: a 10-token prompt and a 10-token completion


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "sweeps" / "configs" / "local.yaml")
    parser.add_argument("--ks", type=int, nargs="*", default=[32, 2048], help="elicitation runs per lock (seed 0)")
    parser.add_argument("--storage", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    setup_logging()
    from pwlock.plan import plan as plan_of  # plan only: nothing here starts Ray

    cfg = load_config(args.config)
    plan = plan_of(cfg)
    store = str(args.storage or tempfile.mkdtemp(prefix="pwlock-stages-"))
    device = default_device()
    print(f"device: {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'})", flush=True)
    report: dict = {"device": str(device), "stages": {}, "elicitation": []}
    for a in plan.artifacts:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        meta = stages.build(store, a)
        row = {"seconds": round(time.perf_counter() - t0, 1)}
        if "train" in meta:
            tr = meta["train"]
            tokens = tr["steps"] * a.spec["train"]["batch_size"] * TOY_EXAMPLE_TOKENS
            row |= {
                "epochs": tr["epochs"],
                "steps": tr["steps"],
                "steps_per_s": round(tr["steps"] / tr["seconds"], 1),
                "approx_tokens_per_s": round(tokens / tr["seconds"]),
                "parameters": meta.get("parameters"),
            }
        if "report" in meta:
            row["correctness"] = meta["report"]
        if device.type == "cuda":
            row["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        report["stages"][a.label] = row
        print(f"{a.label:<36} {json.dumps(row)}", flush=True)
    task = make_task(cfg.task)
    problems = stages.eval_problems(task, cfg.eval.split, cfg.eval.max_problems)
    for mode, a in plan.locked.items():
        for k in args.ks:
            model, tok = load_policy(Path(store) / "artifacts" / a.key, cfg.model.dtype)
            t0 = time.perf_counter()
            records = elicit_sft(
                model,
                tok,
                task,
                demonstrations(task, k, 0, cfg.elicit.demonstrator),
                problems,
                cfg.elicit.train,
                0,
                cfg.elicit.sample_budgets,
            )
            row = {
                "lock_mode": mode,
                "k": k,
                "seconds": round(time.perf_counter() - t0, 1),
                "candidates": [(r["epochs"], r["steps"], round(r["correctness"], 3)) for r in records],
                "parameters": n_parameters(model),
            }
            report["elicitation"].append(row)
            print(f"elicit {json.dumps(row)}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
