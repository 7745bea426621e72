"""A model policy improved by iterated DPO after its fine-tuning (`policies.<name>.dpo`): the critique
task's π_strong is SFT on the reference critiques, then iterated DPO on the embedding-similarity
reward (Table 1, App. E.2). On the critique fixture with a tiny base: the stage follows the SFT model,
is built once and reused, changes the weights, and every pool of the policy (and π_weak's training
data) samples from it; a policy without `dpo` keeps its keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pwlock.config import ConfigError, TinyModelConfig, config_from_dict
from pwlock.models import build_tiny_model, load_policy, save_policy
from pwlock.plan import plan
from pwlock.pricing import estimate_plan
from pwlock.stages import build
from pwlock.store import open_store
from pwlock.tasks import make_task
from tests.test_llm_tasks_e2e import tokenizer_for
from tests.test_paper_configs import on_fixtures

FIXTURE = Path(__file__).parent / "fixtures" / "critique" / "critiques.jsonl"
TASK = {"name": "critique", "data": {"path": str(FIXTURE)}, "max_new_tokens": 8}
TRAIN = {"optimizer": "adamw", "lr": 1e-3, "batch_size": 4, "warmup_steps": 0, "epochs": 1}
DPO = {"rounds": 2, "problems": 3, "train": {**TRAIN, "lr": 1e-3}}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> str:
    task = make_task(TASK)
    tokenizer = tokenizer_for(task, chat=False)
    cfg = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=1, intermediate_size=64, max_positions=1024)
    path = tmp_path_factory.mktemp("hub") / "base"
    save_policy(build_tiny_model(cfg, tokenizer, seed=0), tokenizer, path)
    return str(path)


def study(base: str, dpo: dict | None = DPO) -> dict:
    strong = {"base": base, "train_on": "references", "train_split": "elicit", "train": TRAIN}
    strong["generator"] = {"backend": "hf"}
    if dpo is not None:
        strong["dpo"] = dpo
    weak = {"base": base, "train_on": "strong", "train_split": "weak", "train": TRAIN, "generator": {"backend": "hf"}}
    return {
        "name": "policy-dpo",
        "task": TASK,
        "model": {"base": base},
        "policies": {"strong": strong, "weak": weak},
        "lock": {"modes": ["base"], "base": {**TRAIN, "epochs": 2}},
        "elicit": {"methods": ["sft"], "ks": [1], "seeds": [0], "sample_budgets": [2], "train": TRAIN},
        "eval": {"max_problems": 2},
        "guards": {"lock_gate": False},
    }


def test_the_dpo_stage_follows_the_fine_tuning_and_every_pool_samples_from_it(base, tmp_path):
    p = plan(config_from_dict(study(base)))
    without = plan(config_from_dict(study(base, dpo=None)))
    by_stage = {a.label: a for a in p.artifacts}
    sft, dpo = by_stage["policy model (strong)"], by_stage["policy model (strong, iterated DPO)"]
    assert dpo.stage == "policy_dpo" and dpo.deps == (sft.key,) and dpo.spec["dpo"]["rounds"] == 2
    # The fine-tuning is the same artifact with or without DPO after it; π_strong's pools are not.
    assert sft.key in {a.key for a in without.artifacts}
    pools = [a for a in p.artifacts if a.stage == "sample_pool" and a.label.startswith("samples of strong")]
    assert pools and all(a.spec["source"]["model"] == dpo.key and dpo.key in a.deps for a in pools)
    assert {a.key for a in p.artifacts} & {a.key for a in without.artifacts if a.stage == "sample_pool"} == set()
    # Priced: its rounds' sampling and DPO beside the fine-tuning.
    longer = plan(config_from_dict(study(base, {**DPO, "rounds": 4})))
    cost = {i.id: i.cost for e in (estimate_plan(p), estimate_plan(longer)) for i in e.artifacts}
    longer_dpo = next(a for a in longer.artifacts if a.stage == "policy_dpo")
    assert cost[dpo.key].generated_tokens > 0 and cost[sft.key].generated_tokens == 0
    assert cost[longer_dpo.key].generated_tokens == 2 * cost[dpo.key].generated_tokens
    assert cost[longer_dpo.key].train_tokens == 2 * cost[dpo.key].train_tokens > 0

    store = open_store(str(tmp_path / "store"))
    build(store.spec, sft)
    meta = build(store.spec, dpo)
    rounds = meta["rounds"]
    assert [r["candidate"] for r in rounds] == [1, 2] and all(r["pairs"] > 0 for r in rounds)  # rewards differ
    before, _ = load_policy(store.artifact_dir(sft.key))
    after, _ = load_policy(store.artifact_dir(dpo.key))
    changed = [not torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values())]
    assert any(changed)
    assert build(store.spec, dpo)["reused"]


@pytest.mark.parametrize(
    ("dpo", "train_on", "message"),
    [
        ({"rounds": 0}, "references", r"policies\.strong\.dpo\.rounds: expected >= 1, got 0"),
        ({"temperature": 0}, "references", r"policies\.strong\.dpo\.temperature: expected > 0"),
        ({}, None, r"policies\.strong\.dpo: DPO follows the fine-tuning on train_on, and train_on is null"),
    ],
)
def test_a_bad_dpo_entry_is_refused_naming_the_field(base, dpo, train_on, message):
    raw = study(base, dpo)
    raw["policies"]["strong"]["train_on"] = train_on
    with pytest.raises(ConfigError, match=message):
        plan(config_from_dict(raw))


def test_the_paper_critique_config_trains_pi_strong_by_sft_then_iterated_dpo(tmp_path):
    raw, _ = on_fixtures("paper_critique.yaml", tmp_path)
    p = plan(config_from_dict(raw))
    (dpo,) = [a for a in p.artifacts if a.stage == "policy_dpo"]
    sft = next(a for a in p.artifacts if a.label == "policy model (strong)")
    assert dpo.deps == (sft.key,) and sft.spec["train_on"] == {"references": True}
    assert dpo.spec["dpo"]["continuous_reward"] and dpo.spec["dpo"]["rounds"] == 12  # App. E.2, §6.1
    weak = next(a for a in p.artifacts if a.label == "policy model (weak)")
    (data,) = [a for a in p.artifacts if a.key == weak.spec["train_on"]["pool"]]
    assert data.spec["source"]["model"] == dpo.key  # π_weak imitates the DPO'd π_strong
