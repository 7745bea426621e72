"""Optimizers and the learning-rate schedule shared by every training loop."""

from __future__ import annotations

from collections.abc import Callable

import torch
from lion_pytorch import Lion

from pwlock.config import OPTIMIZERS, SCHEDULES



def make_optimizer(
    params, name: str, lr: float, betas: tuple[float, float], weight_decay: float
) -> torch.optim.Optimizer:
    if name == "lion":
        return Lion(params, lr=lr, betas=betas, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}")


def lr_schedule(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    kind: str = "constant",
    total_steps: int | None = None,
    scale: Callable[[], float] | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up (App. G.1), then either constant — the model after epoch e is then the same
    whatever the total number of epochs, which lets one run evaluate several epoch candidates — or a
    linear decay to zero at `total_steps`. `scale`, when given, multiplies the rate at every step
    (a caller that watches held-out correctness anneals with it)."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; expected one of {SCHEDULES}")
    if kind == "linear" and not total_steps:
        raise ValueError("a linear schedule needs total_steps")

    def factor(step: int) -> float:
        f = min(1.0, (step + 1) / max(1, warmup_steps))
        if kind == "linear" and step >= warmup_steps:
            f *= max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
        return f * (scale() if scale is not None else 1.0)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler) -> None:
    """Back-propagate `loss` and take one step of the optimizer and of its learning-rate schedule."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    schedule.step()
