"""Generation with Hugging Face `generate`, in process: the reference backend and the CPU one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pwlock.generate.base import stop_token_ids


class HFGenerator:
    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int = 64):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    @torch.no_grad()
    def generate(
        self, prompts: Sequence[str], n: int = 1, temperature: float = 0.0, max_new_tokens: int = 256
    ) -> list[list[str]]:
        tok, model = self.tokenizer, self.model
        model.eval()
        out: list[list[str]] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = list(prompts[start : start + self.batch_size])
            ids = tok(chunk, add_special_tokens=False)["input_ids"]
            width = max(map(len, ids))
            # Left padding, so every prompt ends where generation starts.
            input_ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in ids])
            attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids])
            sampled = model.generate(
                input_ids=input_ids.to(model.device),
                attention_mask=attention.to(model.device),
                max_new_tokens=max_new_tokens,
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_k=None,
                top_p=None,
                num_return_sequences=n,
                pad_token_id=tok.pad_token_id,
                eos_token_id=stop_token_ids(tok, model.generation_config),
            )
            texts = tok.batch_decode(sampled[:, width:].cpu(), skip_special_tokens=True)
            out.extend(texts[i : i + n] for i in range(0, len(texts), n))
        return out

    def load_weights(self, state: Mapping[str, torch.Tensor]) -> None:
        self.model.load_state_dict(dict(state))
