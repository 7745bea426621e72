"""Padding-free batches: a step's examples concatenated into one row, no padding token anywhere.

Right-padding every example to the longest of its batch spends compute on padding in proportion to
the batch's length spread (about 45% on batches of 8 competition-math solutions). A packed row holds
the same examples back to back; `position_ids` restart at each example (so rotary positions are the
padded batch's) and attention stays inside each example:

- on a GPU, through the attention registered here as `varlen`: PyTorch's FlashAttention-2 varlen
  kernel (`torch.nn.attention.varlen`) over the row's example boundaries, no mask, no padding;
- on the CPU (or where that kernel is missing), through transformers' own SDPA path, which turns the
  restarting `position_ids` into a block-diagonal causal mask.

The loss is the padded batch's: the same completion tokens, each conditioned on its own example only.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

IGNORE = -100
VARLEN = "varlen"


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # (1, total tokens)
    labels: torch.Tensor  # IGNORE on prompt tokens and on each example's first token
    position_ids: torch.Tensor  # restart at 0 for each example
    cu_seq_lens: torch.Tensor  # int32 example boundaries: 0, len0, len0 + len1, ..., total
    max_length: int

    def to(self, device: torch.device) -> PackedBatch:
        return PackedBatch(
            self.input_ids.to(device),
            self.labels.to(device),
            self.position_ids.to(device),
            self.cu_seq_lens.to(device),
            self.max_length,
        )

    def model_inputs(self) -> dict:
        # The cu_seq_lens_* / max_length_* names are those transformers forwards to attention functions.
        # use_cache=False: transformers reads packing off position_ids only when no cache is passed.
        return {
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            "use_cache": False,
            "cu_seq_lens_q": self.cu_seq_lens,
            "cu_seq_lens_k": self.cu_seq_lens,
            "max_length_q": self.max_length,
            "max_length_k": self.max_length,
        }


def pack(encoded: Sequence[tuple[list[int], int]]) -> PackedBatch:
    """Examples (token ids, where the completion starts) as one row; labels keep completion tokens."""
    if not encoded:
        raise ValueError("pack: expected at least one example")
    ids, labels, positions, bounds = [], [], [], [0]
    for tokens, start in encoded:
        if not tokens:
            raise ValueError("pack: an example has no tokens")
        ids += tokens
        labels += [IGNORE] * max(start, 1) + tokens[max(start, 1) :]
        positions += range(len(tokens))
        bounds.append(bounds[-1] + len(tokens))
    return PackedBatch(
        torch.tensor([ids]),
        torch.tensor([labels]),
        torch.tensor([positions]),
        torch.tensor(bounds, dtype=torch.int32),
        max(len(t) for t, _ in encoded),
    )


def padding_fraction(lengths: Sequence[int], batch_size: int) -> float:
    """Share of a padded epoch's token slots that are padding, batches taken in the given order."""
    slots = sum(
        max(lengths[i : i + batch_size]) * len(lengths[i : i + batch_size]) for i in range(0, len(lengths), batch_size)
    )
    return 1.0 - sum(lengths) / slots


def _varlen_kernel():
    try:
        from torch.nn.attention.varlen import varlen_attn  # only in torch builds that have it
    except ImportError:
        return None
    return varlen_attn


def varlen_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Causal attention within each example of a packed row. query/key/value: (1, heads, tokens, dim);
    returns (1, tokens, heads, dim) like transformers' other attention functions."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None or query.shape[0] != 1 or attention_mask is not None:
        raise ValueError(
            "varlen attention needs a packed batch (pwlock.train.batching.pack): one row, "
            "cu_seq_lens_q, no attention mask"
        )
    gqa = key.shape[1] != query.shape[1]
    kernel = _varlen_kernel()
    if query.is_cuda and kernel is not None:
        accepts = inspect.signature(kernel).parameters
        if gqa and "enable_gqa" not in accepts:
            groups = query.shape[1] // key.shape[1]
            key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
        q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (tokens, heads, dim)
        # Keywords changed between PyTorch releases: causal is is_causal=True or window_size=(-1, 0).
        options = {"is_causal": True} if "is_causal" in accepts else {"window_size": (-1, 0)}
        if gqa and "enable_gqa" in accepts:
            options["enable_gqa"] = True
        out = kernel(
            q, k, v, cu, cu, int(kwargs["max_length_q"]), int(kwargs["max_length_q"]), scale=scaling, **options
        )
        return out.unsqueeze(0), None
    # Reference path: one causal SDPA call per example (exact; used on the CPU and in tests).
    bounds = cu.tolist()
    parts = [
        torch.nn.functional.scaled_dot_product_attention(
            query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], is_causal=True, scale=scaling, enable_gqa=gqa
        )
        for a, b in zip(bounds[:-1], bounds[1:])
    ]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


AttentionInterface.register(VARLEN, varlen_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(VARLEN, flash_attention_mask)  # no mask: boundaries come as cu_seq_lens


@contextmanager
def packed_attention(model: PreTrainedModel, enabled: bool = True) -> Iterator[None]:
    """While inside, route the model's attention through `varlen` where the kernel exists (CUDA);
    elsewhere SDPA handles packed rows with a block-diagonal mask built from the position ids. The
    previous implementation comes back on exit, for evaluation on padded batches."""
    before = model.config._attn_implementation
    switch = enabled and model.device.type == "cuda" and _varlen_kernel() is not None
    if switch:
        model.set_attn_implementation(VARLEN)
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(before)


def max_step_tokens(lengths: Sequence[int], batch_size: int, packed: bool) -> int:
    """The most tokens (padding included) any step over examples of these lengths can hold."""
    size = min(batch_size, len(lengths))
    if packed:
        return sum(sorted(lengths)[-size:])
    return size * max(lengths)
