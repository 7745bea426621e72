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

import contextlib
import copy
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from pwlock import evaluate
from pwlock.artifacts import Artifact
from pwlock.config import RLConfig, TrainConfig, VLLMConfig
from pwlock.cost import Cost, Model, Pricer, Tokens, TrialCosts, dpo_pairs
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
    problem_subset,
    rounds,
)
from pwlock.elicit.expert_iteration import price_rounds, round_eval_problems
from pwlock.generate.base import Generator
from pwlock.generate.hf import HFGenerator
from pwlock.generate.vllm_actor import vllm_generator
from pwlock.models import load_policy
from pwlock.store import Store
from pwlock.tasks import make_task
from pwlock.tasks.base import Problem, Task
from pwlock.train.dpo import DEFAULT_BETA, preference_pairs, train_dpo

SAMPLES_PER_PROBLEM = 2  # per round: one pair per problem at most
log = logging.getLogger(__name__)


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
    stored: Callable[[int], list[list[str]]] | None = None,
) -> list[dict]:
    """Rounds `start`+1 .. `rounds` of sampling and one DPO epoch. With `stored`, round r's samples
    are `stored(r)` (plain DPO's, drawn once upstream: `dpo_samples_artifact`), and `generator` is
    not used. `ref` is the frozen reference:
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
        elif decoder is not None and r > start + 1 and stored is None:  # the fixed reference back
            generator.load_weights(ref.state_dict())
        k = SAMPLES_PER_PROBLEM
        if stored is not None:
            samples = stored(r)
        else:
            torch.manual_seed(seed * 1000 + r)  # the generator's sampling
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
            # None where nothing is evaluated (a policy's DPO stage: it trains, the pools measure it)
            "correctness": evaluate.correctness(
                model, tokenizer, task, evaluated, "no_pwd", batch_size=eval_batch_size, generator=decoder
            )
            if evaluated
            else None,
            "eval_problems": len(evaluated),
        }
        records.append(record)
        if on_round is not None:
            on_round(record)
    return records


def _run(
    e: Elicitation, checkpoint: Checkpoint, checkpoint_every_s: float | None, start: dict | None, iterated: bool
) -> None:
    r = rounds(e, checkpoint, checkpoint_every_s, start, "iterated_dpo" if iterated else "dpo")
    rl = e.rl
    # The reference (and sampler): the locked model for DPO; for iterated DPO the model at the
    # start of the round, which is the model now.
    if iterated:
        ref = copy.deepcopy(e.model)
    else:
        ref, _ = load_policy(e.locked_dir, str(next(e.model.parameters()).dtype).removeprefix("torch."), e.model.device)
    problems = problem_subset(r.problems, rl.dpo_problems, e.seed)
    with _sampling(e, r, ref, problems, iterated) as (gen, evaluator, stored):
        dpo_elicitation(
            e.model,
            ref,
            e.tokenizer,
            e.task,
            gen,
            problems,
            e.eval_problems,
            rl.dpo_train,
            e.seed,
            rl.dpo_rounds,
            iterated,
            rl.beta,
            rl.continuous_reward,
            rl.temperature,
            e.task.max_new_tokens,
            on_round=r.on_round,
            start=r.done,
            eval_batch_size=e.eval_batch_size,
            evaluator=evaluator,
            stored=stored,
            **eval_schedule(rl),
        )


@contextlib.contextmanager
def _sampling(
    e: Elicitation, r: Rounds, ref: PreTrainedModel, problems: Sequence[Problem], iterated: bool
) -> Iterator[tuple[Generator | None, Generator | None, Callable[[int], list[list[str]]] | None]]:
    """(the sampler, the engine that evaluates, the stored rounds) of a DPO trial: plain DPO reads
    its samples drawn upstream where it has them, and an engine evaluates, if anything; otherwise
    the generator serving the reference samples (and evaluates, an engine)."""
    if not iterated and e.dpo_samples is not None:
        rounds_of = stored_rounds(e.dpo_samples, [p.id for p in problems])

        def stored(n: int) -> list[list[str]]:
            samples = rounds_of(n)
            r.watch([c for drawn in samples for c in drawn])
            return samples

        with evaluation_engine(e, backend(e.rl)) as engine:
            yield None, engine, stored
        return
    with generator(e, ref) as gen:
        yield Watched(gen, r.watch), None if isinstance(gen, SameModel) else gen, None


ROUNDS_FILE = "rounds.jsonl"  # a DPO samples artifact: {"round", "ids", "samples"} per line


def dpo_samples_artifact(
    locked: Artifact, task_spec: dict[str, Any], rl: RLConfig, seed: int, generator: dict[str, Any]
) -> Artifact:
    """Plain DPO's samples for the trials of one lock and seed: each round's 2 samples per problem of
    the seed's problem subset, from the locked model (the fixed reference and sampler). They are the
    same at every learning rate, so they are drawn once, here, and shared by the rates' trials."""
    spec = {
        "model": locked.key,
        "task": task_spec,
        "problems": rl.dpo_problems,
        "rounds": rl.dpo_rounds,
        "temperature": rl.temperature,
        "seed": seed,
        "generator": generator,
    }
    gpus = 0.0 if generator["backend"] == "vllm" else None  # a vLLM engine takes its GPU share itself
    return Artifact("dpo_samples", f"{locked.label}: DPO samples, seed {seed}", spec, (locked.key,), gpus=gpus)


def build_dpo_samples(store: Store, a: Artifact, scratch: Path) -> dict[str, Any]:
    task = make_task(a.spec["task"])
    seed, rounds = a.spec["seed"], a.spec["rounds"]
    problems = problem_subset(task.problems("elicit"), a.spec["problems"], seed)
    prompts = [task.prompt(p, None) for p in problems]
    model_dir = str(store.artifact_dir(a.spec["model"]))
    generator = a.spec["generator"]
    with contextlib.ExitStack() as stack:
        if generator["backend"] == "vllm":
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            gen = stack.enter_context(vllm_generator(model_dir, tokenizer, VLLMConfig(**generator["vllm"])))
        else:
            model, tokenizer = load_policy(model_dir)
            gen = HFGenerator(model, tokenizer, generator["batch_size"])
        with open(scratch / ROUNDS_FILE, "w", encoding="utf-8") as f:
            for r in range(1, rounds + 1):
                torch.manual_seed(seed * 1000 + r)  # as a trial that samples itself seeds round r
                temperature, n = a.spec["temperature"], SAMPLES_PER_PROBLEM
                samples = gen.generate(prompts, n=n, temperature=temperature, max_new_tokens=task.max_new_tokens)
                f.write(json.dumps({"round": r, "ids": [p.id for p in problems], "samples": samples}) + "\n")
                log.info("%s: round %d of %d", a.label, r, rounds)
    return {"rounds": rounds, "problems": len(problems)}


def stored_rounds(path: str, ids: Sequence[str]) -> Callable[[int], list[list[str]]]:
    """Round r's samples from a DPO samples artifact's directory, checked to be for `ids`."""
    rows = [json.loads(line) for line in (Path(path) / ROUNDS_FILE).read_text().splitlines()]
    by_round = {row["round"]: row for row in rows}

    def get(r: int) -> list[list[str]]:
        row = by_round.get(r)
        if row is None or row["ids"] != list(ids):
            raise ValueError(f"{path}: no samples of round {r} for this trial's problems; the artifact is not its own")
        return row["samples"]

    return get


def run_dpo(e: Elicitation, checkpoint: Checkpoint, checkpoint_every_s: float | None, start: dict | None) -> None:
    """DPO on pairs of the model's samples, the locked model as reference throughout."""
    _run(e, checkpoint, checkpoint_every_s, start, iterated=False)


def run_iterated_dpo(
    e: Elicitation, checkpoint: Checkpoint, checkpoint_every_s: float | None, start: dict | None
) -> None:
    """Iterated DPO: the reference (and sampler) reset to the model at the start of each round."""
    _run(e, checkpoint, checkpoint_every_s, start, iterated=True)


def _price(c: TrialCosts, candidates: list[int], before: Cost, iterated: bool) -> Cost:
    """A trial's rounds; plain DPO's samples are the upstream stage's (`price_dpo_samples`), so its
    engine evaluates only, and only a generation task."""
    per = _per_round(c.rl, c.n_elicit)
    pairs = dpo_pairs(per // 2, c.rl.continuous_reward)
    sampled = c.price.generate(c.model, per, c.tokens, c.engine) if iterated else Cost()
    step = sampled + c.price.dpo(c.model, pairs, c.tokens, c.rl.dpo_train.batch_size)
    engine = c.engine == "vllm" and (iterated or c.evaluation == "generate")
    overhead = c.price.overhead([c.model], engine=engine) + before
    if not iterated:  # its reference is the locked model, loaded again
        overhead += Cost(overhead_s=c.model.gb / c.price.a.load_gb_s)
    return price_rounds(c, len(candidates), step, overhead)


def price_dpo_samples(price: Pricer, model: Model, tokens: Tokens, a: Artifact, n_elicit: int) -> Cost:
    """A DPO samples artifact: every round's samples from the locked model, in the stage's engine."""
    engine = "hf" if a.spec["generator"]["backend"] == "hf" else "vllm"
    per = SAMPLES_PER_PROBLEM * min(a.spec["problems"], n_elicit)
    sampled = price.generate(model, per, tokens, engine) * a.spec["rounds"]
    return sampled + price.overhead([model], engine=engine == "vllm")


def price_dpo(c: TrialCosts, k: int, candidates: list[int], before: Cost = Cost()) -> Cost:
    return _price(c, candidates, before, iterated=False)


def price_iterated_dpo(c: TrialCosts, k: int, candidates: list[int], before: Cost = Cost()) -> Cost:
    return _price(c, candidates, before, iterated=True)


def _per_round(rl, n_elicit: int) -> int:
    return SAMPLES_PER_PROBLEM * min(rl.dpo_problems, n_elicit)


def _dpo_rounds(rl) -> int:
    return rl.dpo_rounds


def dpo_lrs(rl) -> list[float]:
    """App. G.3: DPO's learning rate is picked per setting by the best seed mean; a trial per rate."""
    return [rl.dpo_train.lr * scale for scale in rl.dpo_lr_scales]


DPO = Method(
    "dpo",
    run_dpo,
    price_dpo,
    rounds=_dpo_rounds,
    samples_from="locked",
    samples_per_round=_per_round,
    lrs=dpo_lrs,
    pairs=True,
)
ITERATED_DPO = Method(
    "iterated_dpo",
    run_iterated_dpo,
    price_iterated_dpo,
    rounds=_dpo_rounds,
    samples_from="model",
    samples_per_round=_per_round,
    lrs=dpo_lrs,
    pairs=True,
)
