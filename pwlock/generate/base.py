"""The Generator contract: sample completions, and take new weights in place."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase


class Generator(Protocol):
    def generate(
        self, prompts: Sequence[str], n: int = 1, temperature: float = 0.0, max_new_tokens: int = 256
    ) -> list[list[str]]:
        """`n` completions per prompt; temperature 0 is greedy decoding."""
        ...

    def load_weights(self, state: Mapping[str, torch.Tensor]) -> None:
        """Replace the weights of the model being sampled from."""
        ...


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, generation: GenerationConfig | None = None) -> list[int]:
    """The tokens that end a completion, the same in every backend: the tokenizer's end token and
    every end token of the model's generation config (chat models often have several)."""
    extra = getattr(generation, "eos_token_id", None)
    ids = [tokenizer.eos_token_id, *(extra if isinstance(extra, list) else [extra])]
    return list(dict.fromkeys(i for i in ids if i is not None))
