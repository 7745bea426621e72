from __future__ import annotations

import pytest

from pwlock.models import build_tiny_model, word_level_tokenizer
from pwlock.config import TinyModelConfig
from pwlock.tasks import make_task

SMALL_TASK = {"name": "function_composition", "seed": 0, "n_problems": 2000}
TINY = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


@pytest.fixture(scope="session")
def task():
    return make_task(SMALL_TASK)


@pytest.fixture(scope="session")
def tokenizer(task):
    return word_level_tokenizer(task.vocabulary())


@pytest.fixture
def tiny_model(tokenizer):
    return build_tiny_model(TINY, tokenizer, seed=0)
