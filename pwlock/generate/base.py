"""The Generator contract: sample completions, and take new weights in place."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import torch


class Generator(Protocol):
    def generate(
        self, prompts: Sequence[str], n: int = 1, temperature: float = 0.0, max_new_tokens: int = 256
    ) -> list[list[str]]:
        """`n` completions per prompt; temperature 0 is greedy decoding."""
        ...

    def load_weights(self, state: Mapping[str, torch.Tensor]) -> None:
        """Replace the weights of the model being sampled from."""
        ...
