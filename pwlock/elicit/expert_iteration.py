"""Expert iteration and filtering (paper §6.1, App. B.3): sample, keep the best, fine-tune on them.

    expert iteration   each iteration, one sample from the current model (no password) for each
                       of 10·n problems; the n best-scored (random among ties) become SFT data
    filtering          the same selection, each iteration, on π_weak's samples; then SFT

The paper runs 50 iterations of 640 samples, keeping 64, with the SFT hyper-parameters of locking.
Generation goes through a Generator (HF in process, or a vLLM engine), which is given the new
weights after each iteration. Each iteration draws its problems and samples from (seed, iteration)
alone, so a run resumed after iteration i goes on exactly as if it had never stopped.

Correctness after each round is measured on the whole validation set, or, at the rounds between
every `eval_every`-th and the last, on a fixed subset of it (`round_eval_problems`; DPO too). A
generation task decodes that evaluation in `evaluator` when given (the trial's vLLM engine, given
the round's weights first), else with HF `generate` in process.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pwlock import evaluate
from pwlock.config import RLConfig, TrainConfig
from pwlock.cost import Cost, TrialCosts
from pwlock.elicit.base import (
    Checkpoint,
    Elicitation,
    Method,
    Rounds,
    SameModel,
    Watched,
    backend,
    eval_schedule,
    evaluation_engine,
    generator,
    rounds,
)
from pwlock.generate.base import Generator
from pwlock.tasks.base import Example, Problem, Task, TaskPolicy
from pwlock.train.sft import TrainState, train_sft

SAMPLES_PER_KEPT = 10  # 10·n samples scored for n kept
EVAL_SUBSET_SEED = "pwlock/rl-eval-subset"  # one subset for every trial: curves stay comparable
# problems -> one completion each (a model's sample, or π_weak's)
Sampler = Callable[[Sequence[Problem]], list[str]]
OnRound = Callable[..., None]  # (record, trainer): the trainer state after the round, for a checkpoint


def round_size(n_problems: int, n: int) -> int:
    """Samples drawn per iteration: one for each of 10·n problems (all of them, if fewer)."""
    return min(n_problems, SAMPLES_PER_KEPT * n)


def filtering_draws(rl: RLConfig, n_problems: int) -> int:
    """Samples per problem of a model π_weak's pool for filtering: as many as rounds draw each
    problem on average (rounds past that reuse a problem's samples in turn)."""
    return max(1, math.ceil(rl.iterations * round_size(n_problems, rl.n) / n_problems))


def round_eval_problems(
    problems: Sequence[Problem], r: int, rounds: int, every: int = 1, between: int | None = None
) -> Sequence[Problem]:
    """The validation problems round `r` (from 1) of `rounds` is evaluated on: all of them at every
    `every`-th round and at the last; at the others, the same `between` of them, drawn once by a
    fixed seed (not the trial's), so every round of every trial sees the same subset."""
    if between is None or every <= 1 or r % every == 0 or r == rounds or between >= len(problems):
        return problems
    keep = sorted(random.Random(EVAL_SUBSET_SEED).sample(range(len(problems)), between))
    return [problems[i] for i in keep]


def eval_rounds(rounds: int, every: int = 1, between: int | None = None) -> tuple[int, int]:
    """(rounds evaluated on the whole validation set, rounds evaluated on the subset), as
    `round_eval_problems` schedules them; what an RL trial's evaluation costs."""
    full = sum(1 for r in range(1, rounds + 1) if between is None or every <= 1 or r % every == 0 or r == rounds)
    return full, rounds - full


def select_best(scored: Sequence[tuple[Example, float]], n: int, rng: random.Random) -> list[tuple[Example, float]]:
    """The n best-scored, ties broken at random (shuffle, then a stable sort)."""
    shuffled = list(scored)
    rng.shuffle(shuffled)
    return sorted(shuffled, key=lambda pair: -pair[1])[:n]


def model_sampler(task: Task, generator: Generator, temperature: float, max_new_tokens: int) -> Sampler:
    def sample(problems: Sequence[Problem]) -> list[str]:
        prompts = [task.prompt(p, None) for p in problems]
        return [c[0] for c in generator.generate(prompts, n=1, temperature=temperature, max_new_tokens=max_new_tokens)]

    return sample


def policy_sampler(policy: TaskPolicy) -> Sampler:
    return lambda problems: [policy(p) for p in problems]


def expert_iteration(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    sample: Sampler,
    problems: Sequence[Problem],
    eval_problems: Sequence[Problem],
    train: TrainConfig,
    seed: int,
    n: int = 64,
    iterations: int = 50,
    sync: Generator | None = None,
    on_round: OnRound | None = None,
    start: int = 0,
    eval_batch_size: int = 512,
    eval_every: int = 1,
    eval_problems_between: int | None = None,
    evaluator: Generator | None = None,
    trainer: TrainState | None = None,
) -> list[dict]:
    """Iterations `start`+1 .. `iterations` of: draw 10·n problems, one sample each from `sample`,
    keep the n best, SFT on them for `train.epochs`, give the new weights to `sync` (the generator
    behind `sample`, for expert iteration; None for filtering). After each, greedy correctness
    without password on `eval_problems` (or its subset, see `round_eval_problems`) against the
    samples generated so far goes to `on_round`; a generation task decodes it in `evaluator` (given
    the new weights too, unless it is `sync`), or with HF in process (None).

    One optimizer and one learning-rate schedule for the whole run, as locking and SFT have (App. G):
    its warm-up once, at the start, and the optimizer's moments carried from round to round.
    `on_round(record, trainer)` gets that state after the round (what a resumed run passes back as
    `trainer`, with the weights of that round)."""
    records = []
    total_epochs = iterations * train.epochs  # the run's schedule (a linear decay ends at its last round)
    per_round = round_size(len(problems), n)
    decoder = evaluator if evaluator is not None and evaluate.decodes(task, eval_problems) else None
    for it in range(start + 1, iterations + 1):
        rng = random.Random(f"{seed}/{it}")
        torch.manual_seed(seed * 1000 + it)  # the generator's sampling
        batch = rng.sample(list(problems), per_round)
        completions = sample(batch)
        scored = [
            (Example(task.prompt(p, None), c), s)
            for p, c, s in zip(batch, completions, task.score_many(batch, completions))
        ]
        kept = select_best(scored, n, rng)
        states: list[TrainState] = []
        stats = train_sft(
            model,
            tokenizer,
            [e for e, _ in kept],
            train,
            seed=seed,
            epochs=total_epochs,
            on_epoch_end=lambda epoch, end=it * train.epochs: epoch >= end,  # this round's epochs, then stop
            desc=f"iteration {it}",
            progress_every_s=float("inf"),
            start=trainer,
            after_epoch=lambda _epoch, state: states.append(state()),
        )
        trainer = states[-1]
        if sync is not None:
            sync.load_weights(model.state_dict())
        if decoder is not None and decoder is not sync:
            decoder.load_weights(model.state_dict())
        evaluated = round_eval_problems(eval_problems, it, iterations, eval_every, eval_problems_between)
        record = {
            "candidate": it,
            "epochs": it,
            "steps": stats["steps"],
            "samples": it * per_round,
            "correctness": evaluate.correctness(
                model, tokenizer, task, evaluated, "no_pwd", batch_size=eval_batch_size, generator=decoder
            ),
            "eval_problems": len(evaluated),
            "sampled_score": sum(s for _, s in scored) / len(scored),
            "kept_score": sum(s for _, s in kept) / len(kept),
            "lr": trainer["schedule"]["_last_lr"][0],
        }
        records.append(record)
        if on_round is not None:
            on_round(record, trainer)
    return records


def _iterate(e: Elicitation, r: Rounds, sample: Sampler, engine: Generator | None, sync: bool) -> None:
    """The rounds of expert iteration on `sample`'s samples, evaluated in `engine` where there is one
    (given the trained weights each round; with `sync`, the engine also samples)."""
    rl = e.rl
    expert_iteration(
        e.model,
        e.tokenizer,
        e.task,
        sample,
        r.problems,
        e.eval_problems,
        TrainConfig(**{**vars(e.train), "epochs": rl.epochs_per_iteration}),
        e.seed,
        rl.n,
        rl.iterations,
        sync=engine if sync else None,
        on_round=r.on_round,
        start=r.done,
        eval_batch_size=e.eval_batch_size,
        evaluator=engine,
        trainer=r.trainer,
        **eval_schedule(rl),
    )


def run_expert_iteration(
    e: Elicitation, checkpoint: Checkpoint, checkpoint_every_s: float | None, start: dict | None
) -> None:
    """Expert iteration (§6.1): each round samples from the model (in its engine), keeps the best
    and fine-tunes on them."""
    r = rounds(e, checkpoint, checkpoint_every_s, start, "expert_iteration")
    with generator(e, e.model) as gen:
        engine = None if isinstance(gen, SameModel) else gen
        _iterate(
            e,
            r,
            model_sampler(e.task, Watched(gen, r.watch), e.rl.temperature, e.task.max_new_tokens),
            engine,
            sync=True,
        )


def run_filtering(e: Elicitation, checkpoint: Checkpoint, checkpoint_every_s: float | None, start: dict | None) -> None:
    """Filtering: expert iteration's selection on π_weak's samples (an engine evaluates only)."""
    r = rounds(e, checkpoint, checkpoint_every_s, start, "filtering")
    done = r.done

    def weak_samples(batch: list[Problem]) -> list[str]:
        nonlocal done
        # A model π_weak answers from its sample pool: round i takes each problem's sample i (mod
        # the pool's draws), so rounds see fresh samples, and a resumed run the same ones.
        view = getattr(e.weak, "for_epoch", None)
        out = policy_sampler(view(done) if view else e.weak)(batch)
        done += 1
        if e.guard:
            e.guard.check(out, "π_weak samples (filtering)")
        return out

    with evaluation_engine(e, backend(e.rl)) as engine:
        _iterate(e, r, weak_samples, engine, sync=False)


def price_rounds(c: TrialCosts, n_rounds: int, step: Cost, overhead: Cost) -> Cost:
    """An RL trial: `overhead`, then `n_rounds` rounds of `step`, and its evaluations in its engine
    (whole validation sets, and the subset at the rounds between). A trial that starts an engine
    gives it the trained weights each round (to sample the next round, or to evaluate)."""
    full, between = eval_rounds(n_rounds, c.rl.eval_every, c.rl.eval_problems_between)
    out = overhead + (step * n_rounds + c.price.evaluate(c.model, c.n_eval, c.tokens, c.evaluation, full, c.engine))
    if overhead.engine_starts:
        out += c.price.sync(c.model, n_rounds)
    if between:
        subset = min(c.rl.eval_problems_between, c.n_eval)
        out += c.price.evaluate(c.model, subset, c.tokens, c.evaluation, between, c.engine)
    return out


def _price(c: TrialCosts, candidates: list[int], before: Cost, filtering: bool) -> Cost:
    per = round_size(c.n_elicit, c.rl.n)
    sampled = Cost() if filtering else c.price.generate(c.model, per, c.tokens, c.engine)  # filtering: π_weak's
    step = sampled + c.price.train(c.model, c.rl.n, c.tokens, c.rl.epochs_per_iteration, c.batch_size)
    # Filtering's engine only evaluates, so it has one for a generation task alone.
    engine = c.engine == "vllm" and (not filtering or c.evaluation == "generate")
    return price_rounds(c, len(candidates), step, c.price.overhead([c.model], engine=engine) + before)


def price_expert_iteration(c: TrialCosts, k: int, candidates: list[int], before: Cost = Cost()) -> Cost:
    return _price(c, candidates, before, filtering=False)


def price_filtering(c: TrialCosts, k: int, candidates: list[int], before: Cost = Cost()) -> Cost:
    return _price(c, candidates, before, filtering=True)


def _per_round(rl, n_elicit: int) -> int:
    return round_size(n_elicit, rl.n)


def _iterations(rl) -> int:
    return rl.iterations


EXPERT_ITERATION = Method(
    "expert_iteration",
    run_expert_iteration,
    price_expert_iteration,
    rounds=_iterations,
    samples_from="model",
    samples_per_round=_per_round,
)
FILTERING = Method(
    "filtering", run_filtering, price_filtering, rounds=_iterations, samples_from="weak", samples_per_round=_per_round
)
