"""Expert iteration and filtering (paper §6.1, App. B.3): sample, keep the best, fine-tune on them.

    expert iteration   each iteration, one sample from the current model (no password) for each
                       of 10·n problems; the n best-scored (random among ties) become SFT data
    filtering          the same selection, once, on π_weak's samples; then SFT

The paper runs 50 iterations of 640 samples, keeping 64, with the SFT hyper-parameters of locking.
Generation goes through a Generator (HF in process, or a vLLM engine), which is given the new
weights after each iteration.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pwlock import evaluate
from pwlock.config import TrainConfig
from pwlock.generate.base import Generator
from pwlock.tasks.base import Example, Problem, Task
from pwlock.train.sft import train_sft

SAMPLES_PER_KEPT = 10  # 10·n samples scored for n kept


def select_best(scored: Sequence[tuple[Example, float]], n: int, rng: random.Random) -> list[tuple[Example, float]]:
    """The n best-scored, ties broken at random (shuffle, then a stable sort)."""
    shuffled = list(scored)
    rng.shuffle(shuffled)
    return sorted(shuffled, key=lambda pair: -pair[1])[:n]


def sample_and_score(task: Task, generator: Generator, problems: Sequence[Problem], temperature: float,
                     max_new_tokens: int) -> list[tuple[Example, float]]:
    prompts = [task.prompt(p, None) for p in problems]
    completions = generator.generate(prompts, n=1, temperature=temperature, max_new_tokens=max_new_tokens)
    return [(Example(prompt, c[0]), task.score(p, c[0])) for prompt, c, p in zip(prompts, completions, problems)]


def expert_iteration(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    generator: Generator,
    problems: Sequence[Problem],
    eval_problems: Sequence[Problem],
    train: TrainConfig,
    seed: int,
    n: int = 64,
    iterations: int = 50,
    temperature: float = 1.0,
    max_new_tokens: int = 256,
    report: Callable[[dict], None] | None = None,
) -> list[dict]:
    """`iterations` rounds of: sample 10·n problems of `problems`, keep the n best samples, SFT on
    them for `train.epochs`. After each round, greedy correctness without password on
    `eval_problems` against the number of samples generated so far."""
    rng = random.Random(seed)
    records = []
    for it in range(1, iterations + 1):
        batch = rng.sample(list(problems), min(len(problems), SAMPLES_PER_KEPT * n))
        scored = sample_and_score(task, generator, batch, temperature, max_new_tokens)
        kept = select_best(scored, n, rng)
        train_sft(model, tokenizer, [e for e, _ in kept], train, seed=seed * 1000 + it)
        generator.load_weights(model.state_dict())
        record = {"iteration": it, "samples": it * len(batch), "correctness":
                  evaluate.correctness(model, tokenizer, task, eval_problems, "no_pwd"),
                  "sampled_score": sum(s for _, s in scored) / len(scored),
                  "kept_score": sum(s for _, s in kept) / len(kept)}
        records.append(record)
        if report is not None:
            report(record)
    return records


def filtering(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    samples: Sequence[tuple[Problem, str]],
    eval_problems: Sequence[Problem],
    train: TrainConfig,
    seed: int,
    n: int = 64,
) -> dict:
    """Keep the n best of π_weak's `samples` (problem, completion), fine-tune on them once."""
    scored = [(Example(task.prompt(p, None), c), task.score(p, c)) for p, c in samples]
    kept = select_best(scored, n, random.Random(seed))
    train_sft(model, tokenizer, [e for e, _ in kept], train, seed=seed)
    return {"samples": len(samples), "kept_score": sum(s for _, s in kept) / len(kept),
            "correctness": evaluate.correctness(model, tokenizer, task, eval_problems, "no_pwd")}
