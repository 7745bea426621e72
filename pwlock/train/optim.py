"""Optimizers and the learning-rate schedule shared by every training loop.

Lion moves every weight by exactly ±lr. In bf16 a weight of size 0.02 has a spacing of 1.2e-4, so at
the paper's lr of 1.5e-6 round-to-nearest throws away the step of all but the ~2% of weights that are
close to zero. Two ways keep the steps, chosen by `TrainConfig.bf16_update`:

- "stochastic" (default): the new weight (and momentum) is rounded up or down at random with
  probabilities that make it exact in expectation. No memory beyond plain bf16 Lion.
- "master": an fp32 copy of every weight takes the update and the bf16 weight is its rounding;
  4 more bytes per parameter (26 GiB at 7B).

Either way lion-pytorch's `Lion` runs the step (parameter groups, state, decoupled weight decay); only
its per-tensor `update_fn`, which lion-pytorch itself makes swappable, is replaced. fp32 weights keep
lion-pytorch's own update unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from lion_pytorch import Lion
from lion_pytorch.lion_pytorch import update_fn as lion_update_fn

from pwlock.config import BF16_UPDATES, OPTIMIZERS, SCHEDULES


def stochastic_round(x: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Round fp32 `x` to bf16, up or down with probability proportional to the distance: adding 16
    random bits below bf16's last bit and truncating them is exact in expectation (the bit pattern is
    monotonic in the magnitude, so this works for either sign)."""
    if dtype != torch.bfloat16:
        raise ValueError(f"stochastic rounding is implemented for bfloat16, not {dtype}")
    bits = x.float().view(torch.int32)
    noise = torch.randint(0, 1 << 16, bits.shape, dtype=torch.int32, device=bits.device)
    return ((bits + noise) & -65536).view(torch.float32).to(torch.bfloat16)


def _lion_fp32(w, grad, exp_avg, lr, wd, beta1, beta2):
    """lion-pytorch's update (stepweight decay, sign of the interpolated momentum, momentum decay)
    in fp32; returns the new weight and momentum."""
    g, m = grad.float(), exp_avg.float()
    w = w.float() * (1.0 - lr * wd) - lr * torch.sign(m * beta1 + g * (1.0 - beta1))
    return w, m * beta2 + g * (1.0 - beta2)


def _stochastic_update(p, grad, exp_avg, lr, wd, beta1, beta2):
    w, m = _lion_fp32(p, grad, exp_avg, lr, wd, beta1, beta2)
    p.copy_(stochastic_round(w))
    exp_avg.copy_(stochastic_round(m))


def _master_update(p, master, grad, exp_avg, lr, wd, beta1, beta2):
    w, m = _lion_fp32(master, grad, exp_avg, lr, wd, beta1, beta2)
    master.copy_(w)
    p.copy_(w)  # round to nearest
    exp_avg.copy_(stochastic_round(m))


# One fused pass per tensor on the GPU (reads weight, grad and momentum once, random bits drawn
# in-kernel); eager everywhere else. Tensors are passed flat so one compiled kernel serves all shapes.
_compiled: dict[str, Callable] = {}


def _kernel(name: str, fn: Callable, device: torch.device) -> Callable:
    if device.type != "cuda":
        return fn
    if name not in _compiled:
        _compiled[name] = torch.compile(fn, dynamic=True)
    return _compiled[name]


class BF16Lion(Lion):
    """lion-pytorch's Lion with an update that survives bf16 rounding (see the module docstring)."""

    def __init__(
        self,
        params,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        bf16_update: str = "stochastic",
    ):
        if bf16_update not in BF16_UPDATES:
            raise ValueError(f"unknown bf16_update {bf16_update!r}; expected one of {BF16_UPDATES}")
        super().__init__(params, lr=lr, betas=betas, weight_decay=weight_decay)
        self.bf16_update = bf16_update
        self.update_fn = self._update

    def _update(self, p, grad, exp_avg, lr, wd, beta1, beta2) -> None:
        if p.dtype != torch.bfloat16:
            lion_update_fn(p, grad, exp_avg, lr, wd, beta1, beta2)
            return
        flat = (p.view(-1), grad.reshape(-1), exp_avg.view(-1))
        if self.bf16_update == "stochastic":
            _kernel("stochastic", _stochastic_update, p.device)(*flat, lr, wd, beta1, beta2)
            return
        state = self.state[p]
        if "master" not in state:
            state["master"] = p.detach().float()
        _kernel("master", _master_update, p.device)(flat[0], state["master"].view(-1), *flat[1:], lr, wd, beta1, beta2)

    def load_state_dict(self, state_dict: dict) -> None:
        # torch casts floating-point state to the parameter's dtype on load: keep the masters fp32.
        saved = [i for group in state_dict["param_groups"] for i in group["params"]]
        masters = {i: state_dict["state"][i]["master"] for i in saved if "master" in state_dict["state"].get(i, {})}
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        for i, p in zip(saved, params):
            if i in masters:
                self.state[p]["master"] = masters[i].to(device=p.device, dtype=torch.float32)


def make_optimizer(
    params, name: str, lr: float, betas: tuple[float, float], weight_decay: float, bf16_update: str = "stochastic"
) -> torch.optim.Optimizer:
    if name == "lion":
        return BF16Lion(params, lr=lr, betas=betas, weight_decay=weight_decay, bf16_update=bf16_update)
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


def optimizer_step(
    loss: torch.Tensor, optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler
) -> None:
    """Back-propagate `loss` and take one step of the optimizer and of its learning-rate schedule."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    schedule.step()
