"""Supervised fine-tuning with the loss on completion tokens only.

One loop for everything: training π_strong from scratch, locking (Eq. 1, data redrawn every
epoch), and elicitation on k demonstrations. It takes any Hugging Face causal LM.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pwlock.config import TrainConfig
from pwlock.tasks.base import Example
from pwlock.tasks.llm import ChoiceAnswer
from pwlock.train.batching import PackedBatch, max_step_tokens, pack, packed_attention
from pwlock.train.checkpointing import CheckpointPlan
from pwlock.train.optim import lr_schedule, make_optimizer, optimizer_step

log = logging.getLogger(__name__)
IGNORE = -100


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor  # IGNORE on prompt and padding positions

    def to(self, device: torch.device) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


class ChoiceRow(tuple):
    """An encoded classifier example (MMLU; its completion is a `ChoiceAnswer`): `(ids, start)` like
    every row, the ids being the prompt's and the answer's one token (no end token), plus the token
    of each choice and the target distribution over them. Its loss and prediction are over the
    choices' tokens only, at the position that predicts the answer (App. G.1's classification)."""

    choices: tuple[int, ...]
    target: tuple[float, ...]

    def __new__(cls, ids: list[int], start: int, choices: tuple[int, ...], target: tuple[float, ...]) -> ChoiceRow:
        row = super().__new__(cls, (ids, start))
        row.choices, row.target = choices, target
        return row


def encode(tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example]) -> list[tuple[list[int], int]]:
    """Token ids of prompt + completion + end token, and where the completion starts; a
    classifier's example is a `ChoiceRow`."""
    prompts = tokenizer([e.prompt for e in examples], add_special_tokens=False)["input_ids"]
    completions = tokenizer([e.completion for e in examples], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    out: list[tuple[list[int], int]] = []
    for e, p, c in zip(examples, prompts, completions):
        if isinstance(e.completion, ChoiceAnswer):
            choices = choice_tokens(tokenizer, e.completion.choices)
            out.append(
                ChoiceRow(p + [choices[e.completion.choices.index(e.completion)]], len(p), choices, e.completion.target)
            )
        else:
            out.append((p + c + [eos], len(p)))
    return out


def choice_tokens(tokenizer: PreTrainedTokenizerBase, choices: Sequence[str]) -> tuple[int, ...]:
    """The one token of each choice (" A" … " D"); an error if a choice is not exactly one token."""
    ids = tokenizer(list(choices), add_special_tokens=False)["input_ids"]
    for choice, tokens in zip(choices, ids):
        if len(tokens) != 1:
            raise ValueError(
                f"choice {choice!r} is {len(tokens)} tokens for this tokenizer; a classifier's choices "
                "must be one token each (try the other prompt format: format.chat_template)"
            )
    if len({t[0] for t in ids}) != len(ids):
        raise ValueError(f"choices {list(choices)} share a token for this tokenizer")
    return tuple(t[0] for t in ids)


def choice_logits(logits: torch.Tensor, labels: torch.Tensor, rows: Sequence[ChoiceRow]) -> torch.Tensor:
    """(rows, choices): the logits of each row's choice tokens where the model predicts the answer,
    from a padded or packed batch (each row has one labelled token: its answer)."""
    at = logits[:, :-1][labels[:, 1:] != IGNORE]  # in row order, packed or padded
    if at.shape[0] != len(rows) or not all(isinstance(r, ChoiceRow) for r in rows):
        raise ValueError("a batch mixes classifier examples (ChoiceAnswer completions) with others")
    return at.gather(1, torch.tensor([r.choices for r in rows], device=at.device))


def collate(encoded: Sequence[tuple[list[int], int]], pad_id: int) -> Batch:
    """Right-pad a batch; labels keep only completion tokens (and the end token)."""
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (ids, start) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, start : len(ids)] = torch.tensor(ids[start:])
        attention[row, : len(ids)] = 1
    return Batch(input_ids, attention, labels)


def completion_loss(
    model: PreTrainedModel, batch: Batch | PackedBatch, fixed: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean next-token cross-entropy over completion tokens, of a padded or a packed batch. At
    positions labelled TO_FIXED the target is the distribution `fixed` instead of a token."""
    batch = batch.to(model.device)
    logits = model(**batch.model_inputs()).logits[:, :-1].flatten(0, 1).float()
    labels = batch.labels[:, 1:].flatten()
    if fixed is None:
        return torch.nn.functional.cross_entropy(logits, labels, ignore_index=IGNORE)
    hard, soft = labels >= 0, labels == TO_FIXED
    logp = logits.log_softmax(-1)
    total = -logp[hard].gather(-1, labels[hard].unsqueeze(-1)).sum() - (logp[soft] @ fixed.to(logp)).sum()
    return total / (hard.sum() + soft.sum()).clamp(min=1)


TO_FIXED = -200  # label of a completion position whose target is the fixed distribution


def mark_to_fixed(batch: Batch | PackedBatch, rows: Sequence[tuple[list[int], int]], flags: Sequence[bool]) -> None:
    """Relabel the completion positions of flagged rows TO_FIXED, in a padded or a packed batch."""
    if not any(flags):
        return
    if isinstance(batch, PackedBatch):
        spans = zip(batch.cu_seq_lens[:-1].tolist(), batch.cu_seq_lens[1:].tolist())
        for flag, (a, b) in zip(flags, spans):
            if flag:
                seg = batch.labels[0, a:b]
                seg[seg != IGNORE] = TO_FIXED
        return
    for row, flag in enumerate(flags):
        if flag:
            batch.labels[row][batch.labels[row] != IGNORE] = TO_FIXED


def choice_loss(model: PreTrainedModel, batch: Batch | PackedBatch, rows: Sequence[ChoiceRow]) -> torch.Tensor:
    """Mean cross-entropy of each row's target distribution (one-hot or soft labels, App. B.2) and
    the model's distribution over the row's choices only."""
    batch = batch.to(model.device)
    logits = choice_logits(model(**batch.model_inputs()).logits, batch.labels, rows).float()
    target = torch.tensor([r.target for r in rows], device=logits.device)
    return -(target * logits.log_softmax(-1)).sum(-1).mean()


EpochData = Callable[[int], Sequence[Example]]
# Everything besides the weights that training needs to go on exactly where it stopped.
TrainState = dict[str, Any]


def train_sft(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: EpochData | Sequence[Example],
    cfg: TrainConfig,
    seed: int,
    epochs: int | None = None,
    on_epoch_end: Callable[[int], bool | None] | None = None,
    desc: str = "sft",
    progress_every_s: float = 30.0,
    lr_scale: Callable[[], float] | None = None,
    start: TrainState | None = None,
    after_epoch: Callable[[int, Callable[[], TrainState]], None] | None = None,
    fixed_target: torch.Tensor | None = None,
) -> dict[str, float]:
    """Train for `epochs` (default `cfg.epochs`) passes over `data`, which is either a fixed list of
    examples or a function epoch -> examples (lock data is redrawn every epoch). Calls
    `on_epoch_end(epoch)` after each epoch, epochs counted from 1; training stops early when it
    returns True. Logs progress at most every `progress_every_s` seconds (and after the last
    epoch). `lr_scale()` multiplies the learning rate at every step. `fixed_target`: the distribution
    over the vocabulary that examples flagged `to_fixed` are trained towards (fixedrdm, App. G.2).

    Resuming: `after_epoch(epoch, state)` is called after `on_epoch_end`; `state()` returns the
    optimizer, schedule, step and random states, which, passed back as `start` with the weights of
    that moment loaded in `model`, continue training as if it had never stopped."""
    epochs = cfg.epochs if epochs is None else epochs
    get_epoch: EpochData = data if callable(data) else (lambda _e, d=data: d)
    torch.manual_seed(seed)
    order_rng = random.Random(seed)
    optimizer = make_optimizer(
        model.parameters(), cfg.optimizer, cfg.lr, tuple(cfg.betas), cfg.weight_decay, cfg.bf16_update
    )
    packing = cfg.packing if cfg.packing is not None else model.device.type == "cuda"
    memory = CheckpointPlan(model, cfg.gradient_checkpointing)
    first = get_epoch(0)
    total = epochs * steps_per_epoch(len(first), cfg.batch_size)  # every epoch has the same size
    schedule = lr_schedule(optimizer, cfg.warmup_steps, cfg.schedule, total, lr_scale)
    step, begin = 0, 0
    if start is not None:
        optimizer.load_state_dict(start["optimizer"])
        schedule.load_state_dict(start["schedule"])
        order_rng.setstate(start["order_rng"])
        torch.set_rng_state(start["torch_rng"])
        if start.get("cuda_rng") is not None:  # stochastic rounding draws from it
            torch.cuda.set_rng_state(start["cuda_rng"], model.device)
        step, begin = start["step"], start["epoch"]

    def state(epoch: int) -> TrainState:
        return {
            "epoch": epoch,
            "step": step,
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "order_rng": order_rng.getstate(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(model.device) if model.device.type == "cuda" else None,
        }

    model.train()
    t0 = time.perf_counter()
    last_log = t0
    epoch, loss_sum, loss_n = begin - 1, torch.zeros(()), 0
    for epoch in range(begin, epochs):
        examples = first if epoch == 0 else get_epoch(epoch)
        encoded = encode(tokenizer, examples)
        to_fixed = {id(row): e.to_fixed for row, e in zip(encoded, examples)}  # rows get shuffled
        # Summed on the model's device: reading it every step would stall a GPU.
        loss_sum, loss_n = torch.zeros((), device=model.device), 0
        order_rng.shuffle(encoded)
        size = min(cfg.batch_size, len(encoded))
        most = max_step_tokens([len(ids) for ids, _ in encoded], size, packing)
        with packed_attention(model, packing):
            for first_row in range(0, len(encoded), size):
                rows = encoded[first_row : first_row + size]
                batch = pack(rows) if packing else collate(rows, tokenizer.pad_token_id)
                memory.before_step(batch.input_ids.numel(), most)
                classifier = isinstance(rows[0], ChoiceRow)
                if fixed_target is not None:
                    mark_to_fixed(batch, rows, [to_fixed[id(r)] for r in rows])
                loss = choice_loss(model, batch, rows) if classifier else completion_loss(model, batch, fixed_target)
                optimizer_step(loss, optimizer, schedule)
                memory.after_step()
                step += 1
                loss_sum, loss_n = loss_sum + loss.detach(), loss_n + 1
        if time.perf_counter() - last_log > progress_every_s or epoch + 1 == epochs:
            last_log = time.perf_counter()
            log.info(
                "%s: epoch %d/%d, step %d, loss %.4f, %.0f s",
                desc,
                epoch + 1,
                epochs,
                step,
                loss_sum.item() / max(1, loss_n),
                last_log - t0,
            )
        model.eval()  # callbacks evaluate the model
        stop = on_epoch_end(epoch + 1) if on_epoch_end is not None else False
        if after_epoch is not None:
            after_epoch(epoch + 1, lambda e=epoch + 1: state(e))
        model.train()
        if stop:  # quiet runs (no progress lines) are stopped by design: expert iteration's rounds
            log.log(
                logging.INFO if progress_every_s < math.inf else logging.DEBUG,
                "%s: stopping after epoch %d of %d",
                desc,
                epoch + 1,
                epochs,
            )
            break
    model.eval()
    return {
        "steps": step,
        "epochs": epoch + 1,
        "last_epoch_loss": loss_sum.item() / max(1, loss_n),
        "seconds": time.perf_counter() - t0,
    }


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return math.ceil(n_examples / min(batch_size, n_examples))
