"""Direct preference optimisation (Rafailov et al., 2024) on completion log-probabilities.

Used by the RL elicitation methods (paper §6.1, App. B.3): pairs of the model's own samples for
one prompt with different scores, the higher-scored one chosen; β = 0.1 (App. G). With continuous
rewards each pair's loss is weighted by its reward gap (Eq. 2). The reference model's
log-probabilities are computed once per pass, without gradients.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pwlock.config import TrainConfig
from pwlock.tasks.base import Example
from pwlock.train.optim import lr_schedule, make_optimizer, optimizer_step
from pwlock.train.sft import IGNORE, collate, encode

DEFAULT_BETA = 0.1  # App. G


@dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str
    weight: float = 1.0  # the reward gap, with continuous rewards (Eq. 2); 1 otherwise


def preference_pairs(
    prompt: str, samples: Sequence[str], scores: Sequence[float], weighted: bool = False
) -> list[Pair]:
    """Pairs of consecutive samples (0-1, 2-3, ...) whose scores differ, the better one chosen.
    The paper draws 2 samples per problem, so one pair at most."""
    pairs = []
    for i in range(0, len(samples) - 1, 2):
        (a, sa), (b, sb) = (samples[i], scores[i]), (samples[i + 1], scores[i + 1])
        if sa == sb:
            continue
        chosen, rejected = (a, b) if sa > sb else (b, a)
        pairs.append(Pair(prompt, chosen, rejected, abs(sa - sb) if weighted else 1.0))
    return pairs


def sequence_logprobs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
) -> torch.Tensor:
    """Sum of the completion tokens' log-probabilities (end token included), one per example."""
    batch = collate(encode(tokenizer, examples), tokenizer.pad_token_id).to(model.device)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
    labels = batch.labels[:, 1:]
    mask = labels != IGNORE
    token_lp = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (token_lp * mask).sum(-1)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = DEFAULT_BETA,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over pairs of w · −log σ(β[(log π(y+) − log π_ref(y+)) − (log π(y−) − log π_ref(y−))])."""
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    losses = -torch.nn.functional.logsigmoid(beta * margin)
    if weights is not None:
        losses = losses * weights
    return losses.mean()


def _sides(pairs: Sequence[Pair]) -> tuple[list[Example], list[Example]]:
    return [Example(p.prompt, p.chosen) for p in pairs], [Example(p.prompt, p.rejected) for p in pairs]


@torch.no_grad()
def _all_logprobs(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], size: int
) -> torch.Tensor:
    return torch.cat(
        [sequence_logprobs(model, tokenizer, examples[i : i + size]) for i in range(0, len(examples), size)]
    )


def train_dpo(
    model: PreTrainedModel,
    ref: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[Pair],
    cfg: TrainConfig,
    seed: int,
    beta: float = DEFAULT_BETA,
    epochs: int = 1,
) -> dict[str, float]:
    """`epochs` passes of DPO over `pairs`; `ref` stays frozen. Returns the last pass's mean loss
    and the pairs' mean reward margin (β × log-ratio gap) after training."""
    if not pairs:
        return {"steps": 0, "loss": float("nan"), "margin": float("nan")}
    torch.manual_seed(seed)
    rng = random.Random(seed)
    chosen, rejected = _sides(pairs)
    size = min(cfg.batch_size, len(pairs))
    ref.eval()
    ref_c, ref_r = (_all_logprobs(ref, tokenizer, side, size) for side in (chosen, rejected))  # once for all epochs
    weights = torch.tensor([p.weight for p in pairs], device=ref_c.device)
    optimizer = make_optimizer(model.parameters(), cfg.optimizer, cfg.lr, tuple(cfg.betas), cfg.weight_decay)
    schedule = lr_schedule(optimizer, cfg.warmup_steps, cfg.schedule, epochs * -(-len(pairs) // size))
    model.train()
    step, loss_sum, loss_n = 0, 0.0, 0
    for _ in range(epochs):
        order = list(range(len(pairs)))
        rng.shuffle(order)
        loss_sum, loss_n = 0.0, 0
        for start in range(0, len(order), size):
            idx = order[start : start + size]
            loss = dpo_loss(
                sequence_logprobs(model, tokenizer, [chosen[i] for i in idx]),
                sequence_logprobs(model, tokenizer, [rejected[i] for i in idx]),
                ref_c[idx],
                ref_r[idx],
                beta,
                weights[idx],
            )
            optimizer_step(loss, optimizer, schedule)
            step += 1
            loss_sum, loss_n = loss_sum + loss.item(), loss_n + 1
    model.eval()
    pol_c, pol_r = (_all_logprobs(model, tokenizer, side, size) for side in (chosen, rejected))
    margin = beta * ((pol_c - ref_c) - (pol_r - ref_r))
    return {"steps": step, "loss": loss_sum / max(1, loss_n), "margin": margin.mean().item()}
