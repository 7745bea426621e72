"""Policies as Hugging Face causal LMs: tiny ones built from a config, real ones by hub id or path.

Tiny models are GPT-NeoX (Pythia's architecture) with a word-level tokenizer over a task's
vocabulary, or, for text tasks, a byte-level BPE tokenizer trained on some of the task's text.
They are saved with `save_pretrained` and loaded back with `from_pretrained`, exactly like a hub
model, so everything downstream handles one kind of object.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from pwlock.config import TinyModelConfig
from pwlock.model_source import local_dir

PAD, EOS = "<pad>", "<eos>"


def word_level_tokenizer(vocabulary: list[str]) -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate([PAD, EOS, *vocabulary])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=None))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS)


# A minimal chat template (user / assistant turns between role markers), for tiny text models.
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def text_tokenizer(
    texts: Iterable[str], vocab_size: int = 512, chat_template: str | None = None
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts`: any string encodes (no unknown token) and
    decodes back exactly. With `build_tiny_model`, a stand-in for a hub LM on text tasks."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def build_tiny_model(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> PreTrainedModel:
    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_positions,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": cfg.rotary_pct},
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        use_parallel_residual=cfg.parallel_residual,
    )
    return GPTNeoXForCausalLM(config)


def default_device() -> torch.device:
    """The GPU Ray gave this worker (or any visible one), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def dtype_of(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_policy(
    path: str | os.PathLike, dtype: str = "float32", device: torch.device | str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a hub id, a local directory or a GGUF source
    (pwlock.model_source), onto `device` (default: the GPU if there is one)."""
    path = local_dir(str(path))
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype_of(dtype))
    return model.to(device or default_device()), tokenizer


def random_policy(
    path: str | os.PathLike, dtype: str = "float32", seed: int = 0, device: torch.device | str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A hub id's or a local directory's architecture and tokenizer, with freshly initialized
    weights (seeded): a model trained from scratch (paper §7)."""
    path = local_dir(str(path))
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=dtype_of(dtype))
    return model.to(device or default_device()), tokenizer


def save_policy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: str | os.PathLike) -> Path:
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def n_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
