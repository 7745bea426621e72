"""Every elicitation method, one registry entry each (pwlock.elicit.base.Method), as the plan, the
price, the trial and the analysis read it:

    sft                     SFT on k demonstrations, epoch candidates of App. G.3 (§5)
    expert_iteration        sample from the model, keep the best, SFT; repeat (§6.1)
    filtering               the same selection on π_weak's samples
    dpo / iterated_dpo      DPO on pairs of the model's samples (reference fixed / reset each round)
    sft+expert_iteration    SFT on k demonstrations of an intermediate policy, then RL (App. B.3.3)
    sft+iterated_dpo

A new method is a module with its run and price functions and one entry here.
"""

from __future__ import annotations

from functools import partial

from pwlock.config import RLConfig
from pwlock.cost import Cost, TrialCosts
from pwlock.elicit.base import Checkpoint, Elicitation, Method, backend
from pwlock.elicit.dpo import DPO, ITERATED_DPO
from pwlock.elicit.expert_iteration import EXPERT_ITERATION, FILTERING
from pwlock.elicit.sft import SFT, epoch_candidates, guarded_demonstrations
from pwlock.train.sft import train_sft


def _run_after_sft(
    base: Method, e: Elicitation, checkpoint: Checkpoint, checkpoint_every_s: float | None, start: dict | None
) -> None:
    if start is None:  # a resumed run is past its SFT: it resumes at an RL round
        demos = guarded_demonstrations(e, e.rl.sft_demonstrator)
        train_sft(
            e.model,
            e.tokenizer,
            demos,
            e.train,
            seed=e.seed,
            epochs=epoch_candidates(e.k, e.budgets)[0],
            desc=f"sft on {e.k} {e.rl.sft_demonstrator} demonstrations",
        )
    base.run(e, checkpoint, checkpoint_every_s, start)


def _price_after_sft(base: Method, c: TrialCosts, k: int, candidates: list[int], before: Cost = Cost()) -> Cost:
    sft = c.price.train(c.model, k, c.tokens, epoch_candidates(k, c.budgets)[0], c.batch_size)
    return base.price(c, k, candidates, before + sft)


def after_sft(base: Method) -> Method:
    """`sft+<base>`: SFT on k demonstrations of elicit.rl.sft_demonstrator for the first epoch
    candidate of k, then `base`'s rounds (App. B.3.3)."""
    return Method(
        f"sft+{base.name}",
        partial(_run_after_sft, base),
        partial(_price_after_sft, base),
        demonstrations="rl",
        rounds=base.rounds,
        samples_from=base.samples_from,
        samples_per_round=base.samples_per_round,
        lrs=base.lrs,
        pairs=base.pairs,
    )


METHODS: dict[str, Method] = {
    m.name: m
    for m in (SFT, EXPERT_ITERATION, FILTERING, DPO, ITERATED_DPO, after_sft(EXPERT_ITERATION), after_sft(ITERATED_DPO))
}


def candidates(method: Method, k: int, budgets: list[int], rl: RLConfig) -> list[int]:
    """The records a trial reports: App. G.3's epoch candidates, or an RL method's rounds 1..n."""
    return epoch_candidates(k, budgets) if method.rounds is None else list(range(1, method.rounds(rl) + 1))


def unknown(names: list[str], where: str = "elicit.methods") -> list[str]:
    """Errors for method names the registry lacks."""
    return [
        f"{where}[{i}]: unknown method {m!r}; expected one of {list(METHODS)}"
        for i, m in enumerate(names)
        if m not in METHODS
    ]


def run(
    e: Elicitation,
    checkpoint: Checkpoint,
    checkpoint_every_s: float | None,
    start: dict | None,
    methods: dict[str, Method] | None = None,
) -> None:
    """Run `e` by its method's entry (in `methods`, else the registry), from the start or from
    `start` (a state it passed to `checkpoint`, with the weights of that moment in `e.model`)."""
    entry = (METHODS if methods is None else methods).get(e.method)
    if entry is None:
        raise ValueError(f"unknown elicitation method {e.method!r}")
    entry.run(e, checkpoint, checkpoint_every_s, start)


__all__ = ["METHODS", "Elicitation", "Method", "after_sft", "backend", "candidates", "run", "unknown"]
