"""What verifying artifacts costs (pwlock.integrity): wall time with and without it, on this machine.

    python benchmarks/verification.py                 # a toy model (2.4 MB) and SmolLM2-135M's size (538 MB)
    python benchmarks/verification.py --sizes-mb 2.4 538 2000

Per model size, a real safetensors artifact in a local store:
  publish   Store.commit: hashing every file into the metadata (with) vs the rename alone (without)
  reuse     Store.artifact_dir: every file hashed against the metadata (with: first use in a
            process; later uses in that process hit the per-process cache) vs the path alone
  load      the weights read into memory (safetensors' load_file, copied out of its map), for scale
Prints the load average beside the figures: shared machines vary (docs/faults.md has a run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pwlock import integrity
from pwlock.store import ARTIFACTS, META, open_store


def _weights(directory: Path, mb: float) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    n = int(mb * 2**20 / 4)
    path = directory / "model.safetensors"
    save_file({"w": torch.randn(n)}, str(path))
    (directory / "config.json").write_text('{"model_type": "llama"}')
    return path


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run(mb: float, root: Path) -> dict[str, float]:
    store = open_store(root / f"store-{mb}")
    scratch = store.scratch_dir("bench")
    _weights(scratch, mb)
    integrity._hashed.clear()
    publish_with = _timed(lambda: store.commit("bench-with", scratch, {"label": "bench"}))
    plain = root / f"plain-{mb}"
    _weights(plain, mb)
    target = Path(store.path(ARTIFACTS, "bench-without"))
    publish_without = _timed(lambda: (os.rename(plain, target), (target / META).write_text("{}")))
    integrity._hashed.clear()  # a new process: nothing hashed yet
    reuse_first = _timed(lambda: store.artifact_dir("bench-with"))
    reuse_again = _timed(lambda: store.artifact_dir("bench-with"))
    reuse_without = _timed(lambda: Path(store.path(ARTIFACTS, "bench-with")).is_dir())
    weights = Path(store.path(ARTIFACTS, "bench-with")) / "model.safetensors"
    load = _timed(lambda: [t.clone() for t in load_file(str(weights)).values()])  # read, not only mapped
    shutil.rmtree(root / f"store-{mb}", ignore_errors=True)
    return {
        "publish_with": publish_with,
        "publish_without": publish_without,
        "reuse_first": reuse_first,
        "reuse_again": reuse_again,
        "reuse_without": reuse_without,
        "load": load,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[2.4, 538.0])
    parser.add_argument("--repeats", type=int, default=3, help="the median of this many runs per size")
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="pwlock-verify-bench-") as d:
        for mb in args.sizes_mb:
            runs = [run(mb, Path(d) / str(i)) for i in range(args.repeats)]
            med = {k: sorted(r[k] for r in runs)[len(runs) // 2] for k in runs[0]}
            rate = mb / med["reuse_first"] if med["reuse_first"] else float("inf")
            print(
                f"{mb:8.1f} MB  publish {med['publish_with']:.3f} s with hashes, {med['publish_without']:.3f} s "
                f"without | reuse {med['reuse_first']:.3f} s first in a process ({rate:.0f} MB/s), "
                f"{med['reuse_again']:.4f} s again, {med['reuse_without']:.4f} s without | load {med['load']:.3f} s"
            )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
