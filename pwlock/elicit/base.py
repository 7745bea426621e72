"""What every elicitation method shares: a run's inputs (`Elicitation`), the registry entry that
describes a method (`Method`), and the generators, engines and round bookkeeping methods use.

A method reports records (one per epoch candidate or RL round, numbered `candidate` from 1) through
`checkpoint(record, state)`; `state` is None when only the record is due, else what a resumed run
needs besides the weights. RL methods resume at round granularity: each round is seeded by (seed,
round) alone.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pwlock import evaluate
from pwlock.config import RLConfig, TrainConfig
from pwlock.cost import Cost, TrialCosts
from pwlock.generate import vllm_actor
from pwlock.generate.base import Generator
from pwlock.generate.hf import HFGenerator
from pwlock.guards import LeakGuard, SampleWatch
from pwlock.tasks.base import Problem, Task, TaskPolicy

Checkpoint = Callable[[dict | None, dict[str, Any] | None], None]
log = logging.getLogger("pwlock.elicit.methods")


@dataclass
class Elicitation:
    """One elicitation run's inputs."""

    method: str
    task: Task
    model: PreTrainedModel  # the locked model, or a resumed run's weights
    tokenizer: PreTrainedTokenizerBase
    locked_dir: str  # the locked model as saved: the DPO reference, and what an engine starts from
    k: int
    seed: int
    train: TrainConfig
    budgets: list[int]
    rl: RLConfig
    eval_problems: list[Problem]
    eval_batch_size: int
    demonstrator: str
    weak: TaskPolicy  # the π_weak the model was locked with (filtering samples it)
    # Policies by name, demonstrators among them (pwlock.policies.resolve); None: the task's own.
    policies: Mapping[str, TaskPolicy] | None = None
    engine_bundle: int | None = None  # the trial's placement-group bundle for a vLLM engine
    guard: LeakGuard | None = None  # refuses demonstrations, prompts and π_weak samples carrying the password
    domain: str | None = None  # demonstrations from this domain of the elicit split only (None: all)
    eval_engine: str = "hf"  # where SFT evaluates a generation task: "hf" in process, or "vllm" (eval.engine)
    dpo_samples: str | None = None  # plain DPO: the directory of its samples drawn upstream (pwlock.elicit.dpo)


Run = Callable[[Elicitation, Checkpoint, "float | None", "dict | None"], None]
Price = Callable[[TrialCosts, int, list[int]], Cost]


@dataclass(frozen=True)
class Method:
    """One elicitation method, as the plan, the price, the trial and the analysis read it.

    `demonstrations`: where its k demonstrations come from: "trial" (SFT: elicit.demonstrator and
    elicit.domains are dimensions of the trial grid), "rl" (SFT on elicit.rl.sft_demonstrator before
    RL) or None (none: its trials have k = 0). `rounds`: an RL method's number of rounds; None for
    a method evaluated at App. G.3's epoch candidates (selected by seed mean). `samples_from`:
    whose samples each round draws: "model" (an engine serves the model), "weak" (π_weak's) or
    "locked" (the locked model's, drawn once upstream for a lock and seed: plain DPO's).
    `samples_per_round(rl, n_elicit)`: how many. `lrs(rl)`: the learning rates of a method run once
    per rate, the analysis keeping the rate with the best seed mean (None: one run, its configured
    rate). `pairs`: it trains on pairs of samples with elicit.rl.dpo_train beside a frozen
    reference model (DPO). `run(e, checkpoint, checkpoint_every_s, start)` runs a trial;
    `price(costs, k, candidates)` is its cost in pwlock.cost's terms."""

    name: str
    run: Run
    price: Price
    demonstrations: str | None = None
    rounds: Callable[[RLConfig], int] | None = None
    samples_from: str | None = None
    samples_per_round: Callable[[RLConfig, int], int] | None = None
    lrs: Callable[[RLConfig], list[float]] | None = None
    pairs: bool = False

    @property
    def rl(self) -> bool:
        """Rounds of sampling (reported against samples, the last round selected), not epochs."""
        return self.rounds is not None


def backend(rl: RLConfig) -> str:
    """Where RL samples: elicit.rl.generator.backend, "auto" being vLLM where a GPU and vLLM are."""
    if rl.generator.backend != "auto":
        return rl.generator.backend
    return "vllm" if torch.cuda.is_available() and importlib.util.find_spec("vllm") else "hf"


class Watched:
    """A generator whose completions pass `watch` as they are drawn."""

    def __init__(self, gen: Generator, watch: SampleWatch):
        self.gen, self.watch = gen, watch

    def generate(self, prompts, *args, **kwargs) -> list[list[str]]:
        out = self.gen.generate(prompts, *args, **kwargs)
        self.watch([c for completions in out for c in completions])
        return out

    def load_weights(self, state) -> None:
        self.gen.load_weights(state)


class SameModel(HFGenerator):
    """HF generation from the very model being trained: nothing to sync."""

    def load_weights(self, state) -> None:
        pass


@contextlib.contextmanager
def generator(e: Elicitation, source: PreTrainedModel, engine: str | None = None) -> Iterator[Generator]:
    """A generator serving `source`'s current weights: HF in process, or a vLLM engine actor
    started from the locked model and given those weights (killed on exit); by `engine`, else by
    the RL backend."""
    if (engine or backend(e.rl)) == "hf":
        yield SameModel(source, e.tokenizer, e.rl.generator.batch_size)
        return
    with vllm_actor.vllm_generator(e.locked_dir, e.tokenizer, e.rl.generator.vllm, e.engine_bundle) as gen:
        gen.load_weights(source.state_dict())  # a resumed run's weights (a no-op change otherwise)
        yield gen


@contextlib.contextmanager
def evaluation_engine(e: Elicitation, engine: str) -> Iterator[Generator | None]:
    """An engine that serves evaluation alone (filtering samples π_weak, SFT samples nothing), where
    `engine` is "vllm" and the task decodes; else None (HF in process). It starts with the model's
    current weights; the caller gives it new ones before each evaluation."""
    if engine == "hf" or not evaluate.decodes(e.task, e.eval_problems):
        yield None
        return
    with generator(e, e.model, engine) as gen:
        yield gen


@dataclass
class Rounds:
    """An RL run's rounds as a trial sees them: the elicit split's prompts (checked by the leak
    guard), the watch over the model's samples, and `on_round`, which reports a round's record and
    checkpoints when `checkpoint_every_s` has passed."""

    problems: list[Problem]
    watch: SampleWatch
    on_round: Callable[..., None]  # (record, trainer=None): a trainer state goes into the checkpoint
    done: int  # rounds finished before this run (a resumed run's)
    trainer: dict | None = None  # the trainer state a resumed run goes on from (expert iteration's)


def rounds(
    e: Elicitation, checkpoint: Checkpoint, checkpoint_every_s: float | None, start: dict | None, label: str
) -> Rounds:
    """An RL run's `Rounds`, the elicit split's prompts checked by the leak guard first."""
    problems = e.task.problems("elicit")
    if e.guard:
        e.guard.check([e.task.prompt(p, None) for p in problems], "RL prompts (elicit split)")
    watch = SampleWatch(e.guard, f"samples of the model being elicited ({label})", log.warning)
    last = time.monotonic()

    def on_round(record: dict, trainer: dict | None = None) -> None:
        nonlocal last
        if e.guard:
            record["password_samples"] = watch.take()
        due = checkpoint_every_s is not None and time.monotonic() - last >= checkpoint_every_s
        state = {"epoch": record["candidate"], "step": record["candidate"], **({"trainer": trainer} if trainer else {})}
        checkpoint(record, state if due else None)
        if due:
            last = time.monotonic()

    return Rounds(problems, watch, on_round, start["epoch"] if start else 0, start.get("trainer") if start else None)


def problem_subset(problems: Sequence[Problem], n: int, seed: int) -> list[Problem]:
    """`n` problems drawn at random (seeded) from the whole split, not its first `n`: a split is
    ordered by index, and MATH's index runs subject by subject."""
    if n >= len(problems):
        return list(problems)
    return random.Random(f"{seed}/problem-subset").sample(list(problems), n)


def eval_schedule(rl: RLConfig) -> dict[str, Any]:
    """The RL loops' evaluation schedule (elicit.rl.eval_every, eval_problems_between)."""
    return {"eval_every": rl.eval_every, "eval_problems_between": rl.eval_problems_between}
