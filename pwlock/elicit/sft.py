"""Elicitation by supervised fine-tuning on k demonstrations, without the password (paper §5).

App. G.3: the number of epochs is a hyper-parameter chosen among {256/k, 512/k, 1024/k} (k < 256)
or {1, 2, 4}. The learning rate is constant after warm-up, so the model after e epochs is the same
in a run of e epochs as in a longer one: one run trains to the largest candidate and evaluates at
each, which costs a third of running the three candidates apart.

A study may set other budgets (`elicit.sample_budgets`). Its trials then also evaluate App. G.3's
own candidates, where the run reaches them, as further records of the same run: `paper_candidate`
numbers them (1..3), and `candidate` goes on past the configured ones. `configured` tells the two
apart (a record can be both). A trial whose run stops before the paper's largest candidate reports
none of them, so that no selection is made over a part of them.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pwlock import evaluate
from pwlock.config import TrainConfig
from pwlock.cost import Cost, TrialCosts
from pwlock.elicit.base import Checkpoint as TrialCheckpoint
from pwlock.elicit.base import Elicitation, Method, evaluation_engine
from pwlock.generate.base import Generator
from pwlock.tasks.base import Example, Problem, Task, TaskPolicy
from pwlock.train.sft import TrainState, steps_per_epoch, train_sft

DEFAULT_BUDGETS = (256, 512, 1024)


def epoch_candidates(k: int, budgets: Sequence[int] = DEFAULT_BUDGETS) -> list[int]:
    """Epoch counts to evaluate for k demonstrations: each budget of samples seen divided by k, or,
    once k reaches the smallest budget, the budgets relative to it ({1, 2, 4} by default)."""
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    base = min(budgets)
    raw = [b / k for b in budgets] if k < base else [b / base for b in budgets]
    return sorted({max(1, round(e)) for e in raw})


def paper_candidates(k: int, budgets: Sequence[int]) -> list[int]:
    """App. G.3's epoch candidates for k demonstrations, if a run to the configured budgets' largest
    candidate reaches them all; else none."""
    paper = epoch_candidates(k, DEFAULT_BUDGETS)
    return paper if max(paper) <= max(epoch_candidates(k, budgets)) else []


def demonstrations(
    task: Task,
    k: int,
    seed: int,
    demonstrator: str,
    split: str = "elicit",
    domain: str | None = None,
    policies: Mapping[str, TaskPolicy] | None = None,
) -> list[Example]:
    """k demonstrations on problems of the elicit split (of its `domain` only, if given), prompts
    without password. For one seed, the k demonstrations are the first k of one shuffle, so a
    smaller k is a subset of a larger one."""
    problems = task.problems(split)
    if domain is not None:
        problems = [p for p in problems if p.domain == domain]
    if k > len(problems):
        where = f"the {split} split" if domain is None else f"domain {domain!r} of the {split} split"
        raise ValueError(f"k={k} exceeds the {len(problems)} problems of {where}")
    policy = (task.policies() if policies is None else policies)[demonstrator]  # policies: pwlock.policies.resolve
    chosen = nested_sample(len(problems), k, seed)
    return [Example(task.prompt(problems[i], None), policy(problems[i])) for i in chosen]


def _evaluation(
    model, tokenizer, task: Task, problems: Sequence[Problem], batch_size: int, evaluator: Generator | None
) -> dict:
    if evaluator is not None and evaluate.decodes(task, problems):
        evaluator.load_weights(model.state_dict())  # the weights of this epoch candidate
    return evaluate.elicited(model, tokenizer, task, problems, batch_size, generator=evaluator)


def nested_sample(n: int, k: int, seed: int) -> list[int]:
    """k distinct indices below n, drawn one by one, redrawing repeats: the first k of one stream, so
    a smaller k is always a prefix of a larger one. (`random.sample` switches algorithm with k, which
    breaks that; for the k where it draws this way, it gives these very indices.)"""
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < k:
        j = rng.randrange(n)
        if j not in seen:
            seen.add(j)
            out.append(j)
    return out


Checkpoint = Callable[[dict | None, TrainState], None]


def elicit_sft(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    demos: Sequence[Example],
    eval_problems: Sequence[Problem],
    train: TrainConfig,
    seed: int,
    budgets: Sequence[int] = DEFAULT_BUDGETS,
    report: Callable[[dict], None] | None = None,
    eval_batch_size: int = 512,
    checkpoint: Checkpoint | None = None,
    checkpoint_every_s: float | None = None,
    start: TrainState | None = None,
    evaluator: Generator | None = None,
    tags: Mapping[str, Any] | None = None,
) -> list[dict]:
    """Fine-tune on `demos`; at each epoch candidate, measure greedy correctness without password
    on `eval_problems` and pass it to `report`. Returns one record per candidate. A generation task
    decodes in `evaluator` (a vLLM engine, given the weights at each candidate) where one is given.

    With `checkpoint`, the run can be resumed: at each candidate, and after any epoch ending
    `checkpoint_every_s` after the last checkpoint, `checkpoint(record or None, state)` is called
    instead of `report`, with the trainer's state; the caller saves it with the model's weights and
    reports the record. `start` (such a state, weights loaded in `model`) resumes after its epoch.
    `tags` go into every record."""
    candidates = epoch_candidates(len(demos), budgets)
    paper = paper_candidates(len(demos), budgets)
    # Record numbers: the configured candidates 1..n, then the paper's that are not among them.
    numbers = {e: i + 1 for i, e in enumerate(candidates)}
    numbers.update({e: len(candidates) + i + 1 for i, e in enumerate(e for e in paper if e not in candidates)})
    records: list[dict] = []
    per_epoch = steps_per_epoch(len(demos), train.batch_size)
    last_checkpoint = time.monotonic()

    def after_epoch(epoch: int, state: Callable[[], TrainState]) -> None:
        nonlocal last_checkpoint
        record = None
        if epoch in numbers:
            record = {
                "candidate": numbers[epoch],
                "epochs": epoch,
                "steps": epoch * per_epoch,
                "configured": epoch in candidates,
                "paper_candidate": paper.index(epoch) + 1 if epoch in paper else None,
                **(tags or {}),
                **_evaluation(model, tokenizer, task, eval_problems, eval_batch_size, evaluator),
            }
            records.append(record)
        due = checkpoint_every_s is not None and time.monotonic() - last_checkpoint >= checkpoint_every_s
        if checkpoint is not None and (record is not None or due):
            checkpoint(record, state())
            last_checkpoint = time.monotonic()
        elif record is not None and report is not None:
            report(record)

    train_sft(
        model, tokenizer, list(demos), train, seed=seed, epochs=max(candidates), after_epoch=after_epoch, start=start
    )
    return records


def digest(demos: Sequence[Example]) -> str:
    """A short content hash of demonstrations: trials that trained on the same ones report the same."""
    text = json.dumps([[d.prompt, d.completion] for d in demos], ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]  # never read back as a number


def guarded_demonstrations(e: Elicitation, demonstrator: str) -> list[Example]:
    """The trial's k demonstrations of `demonstrator`, refused if any carries a password."""
    demos = demonstrations(e.task, e.k, e.seed, demonstrator, domain=e.domain, policies=e.policies)
    if e.guard:
        e.guard.check_examples(demos, f"SFT demonstrations ({demonstrator})")
    return demos


def run(e: Elicitation, checkpoint: TrialCheckpoint, checkpoint_every_s: float | None, start: dict | None) -> None:
    """An SFT trial: its demonstrations, trained on to the largest epoch candidate, evaluated at each
    (a generation task in the trial's own engine where eval.engine is vllm)."""
    demos = guarded_demonstrations(e, e.demonstrator)
    with evaluation_engine(e, e.eval_engine) as engine:
        elicit_sft(
            e.model,
            e.tokenizer,
            e.task,
            demos,
            e.eval_problems,
            e.train,
            e.seed,
            e.budgets,
            eval_batch_size=e.eval_batch_size,
            checkpoint=checkpoint,
            checkpoint_every_s=checkpoint_every_s,
            start=start,
            evaluator=engine,
            tags={"demonstrations": digest(demos)},
        )


def price(c: TrialCosts, k: int, candidates: list[int], before: Cost = Cost()) -> Cost:
    """Training to the largest candidate and an evaluation at each (and at App. G.3's own candidates
    that the run reaches), where the trial evaluates: in its own engine, given the weights at each."""
    engine = c.eval_engine == "vllm" and c.evaluation == "generate"
    out = c.price.overhead([c.model], engine=engine) + before
    out += c.price.train(c.model, k, c.tokens, max(candidates), c.batch_size)
    points = len(set(candidates) | set(paper_candidates(k, c.budgets)))
    out += c.price.sync(c.model, points) if engine else Cost()
    return out + c.price.evaluate(c.model, c.n_eval, c.tokens, c.evaluation, points, c.eval_engine)


SFT = Method("sft", run, price, demonstrations="trial")
