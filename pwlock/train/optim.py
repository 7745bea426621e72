"""Optimizers and the learning-rate schedule shared by every training loop."""

from __future__ import annotations

import torch
from lion_pytorch import Lion

OPTIMIZERS = ("lion", "adamw")


def make_optimizer(
    params, name: str, lr: float, betas: tuple[float, float], weight_decay: float
) -> torch.optim.Optimizer:
    if name == "lion":
        return Lion(params, lr=lr, betas=betas, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}")


def warmup_then_constant(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up (App. G.1), then constant: the model after epoch e is the same whatever the
    total number of epochs, which is what lets one run evaluate several epoch candidates."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(1, warmup_steps)))
