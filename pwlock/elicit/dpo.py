"""Elicitation by DPO and iterated DPO (paper §6.1, App. B.3).

    DPO           each round, 2 samples per problem from the locked model without password; pairs
                  whose scores differ; one DPO epoch against the locked model as reference
    iterated DPO  the same, but each round samples from, and takes as reference, the model as it
                  was at the round's start (Yuan et al., 2024; Kim et al., 2024)

With a continuous reward (the task's `reward`), each pair's loss is weighted by its reward gap
(Eq. 2). The paper runs 12 rounds over 1,100 problems with β = 0.1. The sampler is always the
reference: the Generator holds its own copy of the weights (as a vLLM engine does) and is given
the reference's. Each round's sampling is seeded by (seed, round), so a resumed run goes on as if
it had never stopped. A generation task's evaluation can decode in the same engine (`evaluator`):
it is given the trained model's weights to evaluate, and the reference's back before the next
round samples (iterated DPO's next reference is that trained model: nothing to give back).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pwlock import evaluate
from pwlock.config import TrainConfig
from pwlock.elicit.expert_iteration import round_eval_problems
from pwlock.generate.base import Generator
from pwlock.tasks.base import Problem, Task
from pwlock.train.dpo import DEFAULT_BETA, preference_pairs, train_dpo

SAMPLES_PER_PROBLEM = 2  # per round: one pair per problem at most


def dpo_elicitation(
    model: PreTrainedModel,
    ref: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    generator: Generator,
    problems: Sequence[Problem],
    eval_problems: Sequence[Problem],
    train: TrainConfig,
    seed: int,
    rounds: int = 12,
    iterated: bool = False,
    beta: float = DEFAULT_BETA,
    weighted: bool = False,
    temperature: float = 1.0,
    max_new_tokens: int = 256,
    on_round: Callable[[dict], None] | None = None,
    start: int = 0,
    eval_batch_size: int = 512,
    eval_every: int = 1,
    eval_problems_between: int | None = None,
    evaluator: Generator | None = None,
) -> list[dict]:
    """Rounds `start`+1 .. `rounds` of sampling and one DPO epoch. `ref` is the frozen reference:
    the locked model (DPO) or the model at the start of round `start`+1 (iterated DPO); the
    generator must already hold its weights. After each round, greedy correctness without password
    on `eval_problems` (or its subset, see `round_eval_problems`) against the samples generated so
    far goes to `on_round`. A generation task decodes it in `evaluator`, the engine behind
    `generator` (None: HF in process)."""
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    prompts = [task.prompt(p, None) for p in problems]
    reward_many = task.reward_many if weighted else task.score_many
    decoder = evaluator if evaluator is not None and evaluate.decodes(task, eval_problems) else None
    records = []
    for r in range(start + 1, rounds + 1):
        if iterated and r > start + 1:  # the new round's reference and sampler: the model now
            ref.load_state_dict(model.state_dict())
            if decoder is None:  # else the engine was given these weights for the last evaluation
                generator.load_weights(ref.state_dict())
        elif decoder is not None and r > start + 1:  # the fixed reference back, after the last evaluation
            generator.load_weights(ref.state_dict())
        torch.manual_seed(seed * 1000 + r)  # the generator's sampling
        k = SAMPLES_PER_PROBLEM
        samples = generator.generate(prompts, n=k, temperature=temperature, max_new_tokens=max_new_tokens)
        flat = reward_many([p for p in problems for _ in range(k)], [s for drawn in samples for s in drawn])
        pairs = [
            pair
            for i, (prompt, drawn) in enumerate(zip(prompts, samples))
            for pair in preference_pairs(prompt, drawn, list(flat[k * i : k * (i + 1)]), weighted)
        ]
        stats = train_dpo(model, ref, tokenizer, pairs, train, seed=seed * 1000 + r, beta=beta, epochs=1)
        evaluated = round_eval_problems(eval_problems, r, rounds, eval_every, eval_problems_between)
        if decoder is not None:
            decoder.load_weights(model.state_dict())
        record = {
            "candidate": r,
            "epochs": r,
            "steps": stats["steps"],
            "samples": r * k * len(problems),
            "pairs": len(pairs),
            "margin": stats["margin"],
            "correctness": evaluate.correctness(
                model, tokenizer, task, evaluated, "no_pwd", batch_size=eval_batch_size, generator=decoder
            ),
            "eval_problems": len(evaluated),
        }
        records.append(record)
        if on_round is not None:
            on_round(record)
    return records
