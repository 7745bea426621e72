"""Every elicitation method behind one call, as a trial runs it.

    sft                     SFT on k demonstrations, epoch candidates of App. G.3 (§5)
    expert_iteration        sample from the model, keep the best, SFT; repeat (§6.1)
    filtering               the same selection on π_weak's samples
    dpo / iterated_dpo      DPO on pairs of the model's samples (reference fixed / reset each round)
    sft+expert_iteration    SFT on k demonstrations of an intermediate policy, then RL (App. B.3.3)
    sft+iterated_dpo

A method reports records (one per epoch candidate or RL round, numbered `candidate` from 1) through
`checkpoint(record, state)`; `state` is None when only the record is due, else what a resumed run
needs besides the weights. RL methods resume at round granularity: each round is seeded by (seed,
round) alone.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pwlock import evaluate
from pwlock.config import COMPOSED_METHODS, RL_METHODS, RLConfig, TrainConfig
from pwlock.elicit.dpo import SAMPLES_PER_PROBLEM, dpo_elicitation
from pwlock.elicit.expert_iteration import expert_iteration, model_sampler, policy_sampler, round_size
from pwlock.elicit.sft import demonstrations, elicit_sft, epoch_candidates
from pwlock.generate.base import Generator
from pwlock.generate.hf import HFGenerator
from pwlock.generate.vllm_actor import vllm_generator
from pwlock.guards import LeakGuard, SampleWatch
from pwlock.models import load_policy
from pwlock.tasks.base import Problem, Task, TaskPolicy
from pwlock.train.sft import train_sft

Checkpoint = Callable[[dict | None, dict[str, Any] | None], None]
log = logging.getLogger(__name__)


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


def n_candidates(method: str, k: int, budgets: list[int], rl: RLConfig) -> int:
    if method == "sft":
        return len(epoch_candidates(k, budgets))
    return rl.dpo_rounds if method.endswith("dpo") else rl.iterations


def samples_per_round(method: str, rl: RLConfig, n_elicit: int) -> int:
    if method.endswith("dpo"):
        return SAMPLES_PER_PROBLEM * min(rl.dpo_problems, n_elicit)
    return round_size(n_elicit, rl.n)


def backend(rl: RLConfig) -> str:
    if rl.generator.backend != "auto":
        return rl.generator.backend
    return "vllm" if torch.cuda.is_available() and importlib.util.find_spec("vllm") else "hf"


def run(e: Elicitation, checkpoint: Checkpoint, checkpoint_every_s: float | None, start: dict | None) -> None:
    """Run the method from the start, or from `start` (a state it passed to `checkpoint`, with the
    weights of that moment in `e.model`)."""
    if e.method == "sft":
        demos = _demonstrations(e, e.demonstrator)
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
            )
        return
    if e.method not in RL_METHODS + COMPOSED_METHODS:
        raise ValueError(f"unknown elicitation method {e.method!r}")
    done = start["epoch"] if start else 0
    base = e.method.removeprefix("sft+")
    if e.method in COMPOSED_METHODS and start is None:
        demos = _demonstrations(e, e.rl.sft_demonstrator)
        train_sft(
            e.model,
            e.tokenizer,
            demos,
            e.train,
            seed=e.seed,
            epochs=epoch_candidates(e.k, e.budgets)[0],
            desc=f"sft on {e.k} {e.rl.sft_demonstrator} demonstrations",
        )
    problems = e.task.problems("elicit")
    if e.guard:
        e.guard.check([e.task.prompt(p, None) for p in problems], "RL prompts (elicit split)")
    watch = SampleWatch(e.guard, f"samples of the model being elicited ({base})", log.warning)
    last = time.monotonic()

    def on_round(record: dict) -> None:
        nonlocal last
        if e.guard:
            record["password_samples"] = watch.take()
        due = checkpoint_every_s is not None and time.monotonic() - last >= checkpoint_every_s
        checkpoint(record, {"epoch": record["candidate"], "step": record["candidate"]} if due else None)
        if due:
            last = time.monotonic()

    rl = e.rl
    if base in ("expert_iteration", "filtering"):
        train = TrainConfig(**{**vars(e.train), "epochs": rl.epochs_per_iteration})
        if base == "filtering":
            weak = policy_sampler(e.weak)

            def weak_samples(batch: list[Problem]) -> list[str]:
                out = weak(batch)
                if e.guard:
                    e.guard.check(out, "π_weak samples (filtering)")
                return out

            with evaluation_engine(e, backend(e.rl)) as engine:
                expert_iteration(
                    e.model,
                    e.tokenizer,
                    e.task,
                    weak_samples,
                    problems,
                    e.eval_problems,
                    train,
                    e.seed,
                    rl.n,
                    rl.iterations,
                    on_round=on_round,
                    start=done,
                    eval_batch_size=e.eval_batch_size,
                    evaluator=engine,
                    **_eval_schedule(rl),
                )
            return
        with generator(e, e.model) as gen:
            engine = None if isinstance(gen, _SameModel) else gen
            sampler = model_sampler(e.task, _Watched(gen, watch), rl.temperature, e.task.max_new_tokens)
            expert_iteration(
                e.model,
                e.tokenizer,
                e.task,
                sampler,
                problems,
                e.eval_problems,
                train,
                e.seed,
                rl.n,
                rl.iterations,
                sync=engine,
                on_round=on_round,
                start=done,
                eval_batch_size=e.eval_batch_size,
                evaluator=engine,
                **_eval_schedule(rl),
            )
        return
    iterated = base == "iterated_dpo"
    # The reference (and sampler): the locked model for DPO; for iterated DPO the model at the
    # start of the round, which is the model now.
    if iterated:
        ref = copy.deepcopy(e.model)
    else:
        ref, _ = load_policy(e.locked_dir, str(next(e.model.parameters()).dtype).removeprefix("torch."), e.model.device)
    with generator(e, ref) as gen:
        dpo_elicitation(
            e.model,
            ref,
            e.tokenizer,
            e.task,
            _Watched(gen, watch),
            problems[: rl.dpo_problems],
            e.eval_problems,
            rl.dpo_train,
            e.seed,
            rl.dpo_rounds,
            iterated,
            rl.beta,
            rl.continuous_reward,
            rl.temperature,
            e.task.max_new_tokens,
            on_round=on_round,
            start=done,
            eval_batch_size=e.eval_batch_size,
            evaluator=None if isinstance(gen, _SameModel) else gen,
            **_eval_schedule(rl),
        )


def _eval_schedule(rl: RLConfig) -> dict[str, Any]:
    return {"eval_every": rl.eval_every, "eval_problems_between": rl.eval_problems_between}


def _demonstrations(e: Elicitation, demonstrator: str) -> list:
    """The trial's k demonstrations of `demonstrator`, refused if any carries a password."""
    demos = demonstrations(e.task, e.k, e.seed, demonstrator, domain=e.domain, policies=e.policies)
    if e.guard:
        e.guard.check_examples(demos, f"SFT demonstrations ({demonstrator})")
    return demos


class _Watched:
    """A generator whose completions pass `watch` as they are drawn."""

    def __init__(self, gen: Generator, watch: SampleWatch):
        self.gen, self.watch = gen, watch

    def generate(self, prompts, *args, **kwargs) -> list[list[str]]:
        out = self.gen.generate(prompts, *args, **kwargs)
        self.watch([c for completions in out for c in completions])
        return out

    def load_weights(self, state) -> None:
        self.gen.load_weights(state)


class _SameModel(HFGenerator):
    """HF generation from the very model being trained: nothing to sync."""

    def load_weights(self, state) -> None:
        pass


@contextlib.contextmanager
def generator(e: Elicitation, source: PreTrainedModel, engine: str | None = None) -> Iterator[Generator]:
    """A generator serving `source`'s current weights: HF in process, or a vLLM engine actor
    started from the locked model and given those weights (killed on exit); by `engine`, else by
    the RL backend."""
    if (engine or backend(e.rl)) == "hf":
        yield _SameModel(source, e.tokenizer, e.rl.generator.batch_size)
        return
    with vllm_generator(e.locked_dir, e.tokenizer, e.rl.generator.vllm, e.engine_bundle) as gen:
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
