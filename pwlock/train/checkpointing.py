"""Gradient checkpointing where it pays: recompute only as many decoder layers as memory needs.

Checkpointing every layer costs a second forward pass (8N instead of 6N FLOPs per token); keeping
every layer's activations does not fit a 7B model's full fine-tuning on one 80 GB GPU. The plan is
measured rather than modelled, so it holds for any architecture: the first steps run fully
checkpointed, one more keeps one layer's activations, and the peak memory of the two gives the cost
of a step's fixed part and of each kept layer per token. From then on the model keeps as many layers
as fit `BUDGET` of the GPU's memory at the run's largest step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer

BUDGET = 0.85  # of the GPU's memory; the rest absorbs fragmentation and the estimate's error


def decoder_layers(model: PreTrainedModel) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def checkpoint_layers(model: PreTrainedModel, n: int) -> None:
    """Recompute the first `n` decoder layers in the backward pass; the others keep their activations."""
    layers = decoder_layers(model)
    if n > 0 and not getattr(model, "is_gradient_checkpointing", False):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for i, layer in enumerate(layers):
        layer.gradient_checkpointing = i < n


def layers_to_keep(
    static: float, per_token: float, per_token_layer: float, tokens: int, budget: float, n_layers: int
) -> int:
    """How many layers can keep their activations: static + tokens * (per_token + kept * per_token_layer)
    must stay within budget."""
    room = budget - static - tokens * per_token
    if room <= 0:
        return 0
    if per_token_layer <= 0:
        return n_layers
    return max(0, min(n_layers, math.floor(room / (tokens * per_token_layer))))


@dataclass
class CheckpointPlan:
    """Call `before_step(tokens, max_tokens)` and `after_step()` around every training step; `mode` is
    TrainConfig.gradient_checkpointing ("auto" plans on a GPU and checkpoints nothing on the CPU)."""

    model: PreTrainedModel
    mode: str = "auto"
    memory: float | None = None  # bytes this process may use on the GPU; None: all of it
    step: int = 0
    kept: int | None = None  # layers keeping their activations, once decided
    _fit: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.n_layers = len(decoder_layers(self.model))
        self.measure = self.mode == "auto" and self.model.device.type == "cuda" and self.n_layers > 0
        if self.mode == "all" or self.measure:
            checkpoint_layers(self.model, self.n_layers)
            self.kept = None if self.measure else 0
        else:
            checkpoint_layers(self.model, 0)
            self.kept = self.n_layers

    def before_step(self, tokens: int, max_tokens: int) -> None:
        if not self.measure:
            return
        if self.step in (1, 2):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._fit[f"static{self.step}"] = torch.cuda.memory_allocated()
            self._fit[f"tokens{self.step}"] = tokens
        if self.step == 2:
            checkpoint_layers(self.model, self.n_layers - 1)
        if self.step >= 3 and self.kept is not None:
            keep = layers_to_keep(
                self._fit["static"],
                self._fit["per_token"],
                self._fit["per_token_layer"],
                max_tokens,
                self._fit["budget"],
                self.n_layers,
            )
            if keep != self.kept:
                checkpoint_layers(self.model, self.n_layers - keep)
                self.kept = keep

    def after_step(self) -> None:
        if not self.measure:
            return
        if self.step == 1:
            self._fit["peak1"] = torch.cuda.max_memory_allocated()
            budget = self._budget()
            # Keeping one layer must itself fit: try only if the fixed part's size again is free.
            if 2 * self._fit["peak1"] - self._fit["static1"] > budget:
                self.measure, self.kept = False, 0
        elif self.step == 2:
            f = self._fit
            f["peak2"] = torch.cuda.max_memory_allocated()
            f["budget"] = self._budget()
            f["static"] = max(f["static1"], f["static2"])
            f["per_token"] = (f["peak1"] - f["static1"]) / f["tokens1"]
            f["per_token_layer"] = max(0.0, (f["peak2"] - f["static2"]) / f["tokens2"] - f["per_token"])
            self.kept = 1
        self.step += 1

    def _budget(self) -> float:
        return BUDGET * (self.memory or torch.cuda.get_device_properties(self.model.device).total_memory)

    def describe(self) -> str:
        if self.kept is None:
            return f"measuring (step {self.step}), {self.n_layers} layers"
        return f"{self.n_layers - self.kept} of {self.n_layers} layers checkpointed"
