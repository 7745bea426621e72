"""The paper's RL configs on the text tasks (sweeps/configs/paper_{math,code,critique}_rl*.yaml): one
per RL figure of sweeps/configs/paper.yaml and task, on the repository's fixtures as
tests/test_paper_configs.py plans their SFT siblings (task pointed at tests/fixtures, supplied sample
files written from the fixture's references, hub model ids as shipped). Each plans the figure's grid
(locks × methods × seeds × DPO learning rates, × k for RL after SFT) with the paper's RL settings, on
the task, policies and lock of its SFT sibling (a store the sibling built serves it); its trials run
a vLLM engine beside the trainer on one 80 GB GPU; and its --dry-run prints GPU-hours for every
artifact and trial with the hub offline and no model fetched. The paper's figure as recorded in
tests/fixtures/paper_figures.yaml and the config agree, dimension by dimension; paper.yaml names the
config for its figure and prices as many trials as the config plans."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pwlock import description
from pwlock.config import FIXEDRDM, TrainConfig, config_from_dict, load_config
from pwlock.cost import KNOWN_PARAMS
from pwlock.plan import plan, trial_name
from tests.paper_record import LockSpec, Record, figure, priced_trials, record
from tests.test_paper_configs import CONFIGS, RL_NAMES, assert_priced, dry_runs_of, on_fixtures

PAPER = CONFIGS / "paper.yaml"
EI, FILTERING, DPO, IDPO = "expert_iteration", "filtering", "dpo", "iterated_dpo"
FIG5 = [EI, FILTERING, DPO, IDPO]
# DPO's rates (App. G.3: {1.5, 0.75, 0.375}e-6): the configured one (elicit.rl.dpo_train.lr) keeps
# the trial's old name (None), the others name theirs.
DPO_LRS = [1.5e-6, None, 3.75e-7]

# Each config: the paper.yaml figure it runs for its task, its locks (label -> π_weak), its methods,
# ks (RL after SFT only) and the demonstrator before RL, and its reward.
RL = {
    **{
        f"paper_{task}_rl.yaml": dict(
            figure="fig5", locks={"base": "weak", "base-pythia-410m": "pythia-410m", "base-fixedrdm": FIXEDRDM}
        )
        for task in ("math", "code", "critique")
    },
    **{
        f"paper_{task}_rl_sft.yaml": dict(
            figure="fig16",
            locks={"base": "weak"},
            methods=["sft+expert_iteration", "sft+iterated_dpo"],
            ks=[16, 64],
            sft_demonstrator="pythia-7b",
        )
        for task in ("math", "code", "critique")
    },
    **{
        f"paper_{task}_rl_pythia7b.yaml": dict(
            figure="fig16-lock", locks={"base-pythia-7b": "pythia-7b"}, methods=[EI, IDPO]
        )
        for task in ("math", "code", "critique")
    },
    **{
        f"paper_{task}_rl_continuous.yaml": dict(
            figure="fig14", locks={"base": "weak"}, methods=[DPO, IDPO], continuous=True
        )
        for task in ("code", "critique")
    },
    "paper_math_rl_setting.yaml": dict(figure="fig9b", locks={"base-setting": "weak"}, setting=True),
}


def want(name: str) -> dict:
    return {"methods": FIG5, "ks": [], "sft_demonstrator": None, "continuous": False, "setting": False, **RL[name]}


def task_of(name: str) -> str:
    return name.split("_")[1]


def shipped(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())


def test_every_rl_figure_of_the_paper_has_a_config_per_task():
    figures = {(f.id, t) for f in record().figures if f.sweep == "rl" for t in f.tasks}
    assert figures == {(w["figure"], task_of(name)) for name, w in RL.items()}
    # paper.yaml runs each RL figure by those configs, through sweeps/rl.py
    named = {(f.id, c) for f in description.load(PAPER).figures if f.sweep == "rl" for c in f.configs}
    assert named == {(w["figure"], name) for name, w in RL.items()}
    assert sorted(RL) == sorted(RL_NAMES)  # and each is planned on the fixtures (test_plan_keys.py, test_config.py)


def _expected_trials(name: str, ks: list[int]) -> set[str]:
    w = want(name)
    return {
        trial_name(lock, method, k, seed, w["sft_demonstrator"] if w["ks"] else "none", lr=lr)
        for lock in w["locks"]
        for method in w["methods"]
        for k in (ks if method.startswith("sft+") else [0])
        for lr in (DPO_LRS if method.endswith("dpo") else [None])
        for seed in (0, 1, 2)
    }


@pytest.mark.parametrize("name", RL_NAMES)
def test_a_paper_rl_config_plans_its_figure_on_the_fixture(name, tmp_path):
    w = want(name)
    raw, ks = on_fixtures(name, tmp_path)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    quick = load_config(path, quick=True)  # --quick's overrides validate too
    assert quick.elicit.seeds == [0] and quick.elicit.rl.dpo_rounds == 2
    p = plan(cfg)
    # The locks: one per π_weak of the figure (a setting variation for Fig. 9b, its trials in the
    # varied setting, where the lock is weak).
    assert p.weak == w["locks"]
    assert p.setup.weak_setting == ({"base-setting": "varied"} if w["setting"] else {})
    # The grid: each lock × method × seed, DPO's at each of its 3 rates, RL after SFT at each k.
    assert cfg.elicit.methods == w["methods"] and cfg.elicit.seeds == [0, 1, 2]
    assert shipped(name)["elicit"].get("ks", []) == w["ks"]  # the fixture's elicit split holds smaller ones
    names = [t.name for t in p.trials]
    assert len(names) == len(set(names)) and set(names) == _expected_trials(name, ks)
    lock = next(iter(w["locks"]))
    for method in (m for m in w["methods"] if m.endswith("dpo")):
        k = ks[0] if method.startswith("sft+") else 0
        demonstrator = f"-{w['sft_demonstrator']}" if w["ks"] else ""
        assert f"{lock}lock-{method}{demonstrator}-lr1.5e-06-k{k}-seed0" in names
        assert f"{lock}lock-{method}{demonstrator}-lr3.75e-07-k{k}-seed2" in names
        assert f"{lock}lock-{method}{demonstrator}-k{k}-seed1" in names  # the configured rate: no rate in its name
    # The paper's RL settings (§6.1, App. G.3).
    rl = cfg.elicit.rl
    assert (rl.n, rl.iterations, rl.epochs_per_iteration) == (64, 50, 1)
    assert (rl.dpo_rounds, rl.dpo_problems, rl.beta, rl.temperature) == (12, 1100, 0.1, 1.0)
    assert rl.dpo_train.lr == 7.5e-7 and rl.dpo_train.epochs == 1
    assert sorted(rl.dpo_train.lr * s for s in rl.dpo_lr_scales) == pytest.approx([0.375e-6, 0.75e-6, 1.5e-6])
    assert rl.continuous_reward is w["continuous"]
    assert (rl.eval_every, rl.eval_problems_between) == (10, 250)
    if w["ks"]:
        assert rl.sft_demonstrator == w["sft_demonstrator"] and set(p.policies.elicit) == {w["sft_demonstrator"]}
    # Expert iteration and filtering (and the SFT before RL) train with the SFT sibling's settings.
    if set(w["methods"]) - {DPO, IDPO}:
        assert shipped(name)["elicit"]["train"] == shipped(f"paper_{task_of(name)}.yaml")["elicit"]["train"]
    # Each trial: one GPU, a vLLM engine beside the trainer (its bundle of the trial's placement group).
    assert cfg.ray.gpus_per_trial == 1 and cfg.ray.gpus_per_stage == 1
    assert p.setup.rl.generator.backend == "vllm" and p.engine == rl.generator.vllm and p.setup.engine_bundle == 1


@pytest.mark.parametrize("name", RL_NAMES)
def test_a_paper_rl_config_engine_fits_beside_its_trainer_on_an_80gb_gpu(name):
    """What the header says: the engine's share holds the 7B weights and a KV cache of at least one
    sequence of its max_model_len (else vLLM refuses to start), and the trainer's share holds a DPO
    trial's four model-sized tensors (weights, gradients, Lion's state, frozen reference) with room
    for activations."""
    cfg = shipped(name)
    v = cfg["elicit"]["rl"]["generator"]["vllm"]
    assert v["gpu_memory_utilization"] <= v["gpu_fraction"] < 1
    gpu, overhead = 80e9, 2e9  # one H100's memory; vLLM's own beside weights and KV cache (assumed)
    weights = KNOWN_PARAMS[cfg["model"]["base"]] * 2  # bf16
    assert cfg["model"]["dtype"] == "bfloat16"
    # Deepseek's 7B models: at most 32 layers of width 4096, keys and values for every head, in bf16.
    # Deepseek-Math's own context is 4,096 tokens; Deepseek-Coder's 16,384 would not fit: capped.
    kv_room = v["gpu_memory_utilization"] * gpu - weights - overhead
    kv_per_token = 2 * 32 * 4096 * 2
    if "math" in cfg["model"]["base"]:
        assert "max_model_len" not in v and kv_room >= 4096 * kv_per_token
    else:
        assert kv_room < 16384 * kv_per_token and kv_room >= v["max_model_len"] * kv_per_token
    # The trainer's share: weights, gradients, Lion's one moment (the default optimizer) and DPO's reference.
    assert "optimizer" not in cfg["elicit"]["rl"]["dpo_train"] and TrainConfig().optimizer == "lion"
    assert (1 - v["gpu_memory_utilization"]) * gpu - 4 * weights >= 4e9


def _paper_lock(study: Record, lk: LockSpec, policies: dict) -> tuple[str, bool]:
    """A paper.yaml lock as the config names its π_weak (the task's, fixedrdm, or a policy whose base
    is that model's hub id), and whether it is a setting variation."""
    if lk.weak in ("default", FIXEDRDM):
        weak = "weak" if lk.weak == "default" else FIXEDRDM
    else:
        hub = study.models[lk.weak].hub
        weak = next(n for n, pc in policies.items() if pc.get("base") == hub and n != "strong")
    return weak, lk.trigger == "setting_variation"


@pytest.mark.parametrize("name", RL_NAMES)
def test_a_paper_rl_config_runs_what_paper_yaml_prices_for_its_figure(name, tmp_path):
    """The paper's figure (tests/fixtures/paper_figures.yaml), for this config's task, and the config:
    the same locks, methods, seeds, DPO rates, reward, demonstrator and ks, RL settings; paper.yaml
    prices the config's trials for that figure, as many as the config plans on the fixtures."""
    study = record()
    w = want(name)
    fig = figure(w["figure"])
    cfg = shipped(name)
    rl, lock = cfg["elicit"]["rl"], cfg["lock"]
    setting = lock.get("variant") == "setting" and lock.get("strong_setting") == "normal"
    assert {_paper_lock(study, lk, cfg["policies"]) for lk in fig.locks} == {(x, setting) for x in lock["weak"]}
    assert fig.methods == cfg["elicit"]["methods"]
    assert (fig.seeds or study.defaults.seeds) == len(cfg["elicit"]["seeds"])
    assert fig.dpo_lrs == len(rl["dpo_lr_scales"])
    assert fig.continuous_reward is rl["continuous_reward"]
    if w["ks"]:
        assert fig.ks == cfg["elicit"]["ks"]
        hubs = [study.models[d].hub for d in fig.demonstrators]
        assert hubs == [cfg["policies"][rl["sft_demonstrator"]]["base"]]
    d = study.defaults.rl
    for field in ("n", "iterations", "epochs_per_iteration", "dpo_rounds", "dpo_problems"):
        if field in rl:  # a config of DPO alone leaves out expert iteration's
            assert getattr(d, field) == rl[field], field
    assert (d.eval_every, d.eval_problems_between) == (rl["eval_every"], rl["eval_problems_between"])
    # The trials paper.yaml prices for this figure and task, and the config's (on the fixtures: the
    # same grid, Fig. 16's ks cut to two that fit).
    priced = priced_trials(w["figure"], name)
    raw, _ = on_fixtures(name, tmp_path)
    assert len(priced) == len(plan(config_from_dict(raw, source=name)).trials)


@pytest.mark.parametrize("name", RL_NAMES)
def test_a_paper_rl_config_shares_its_sft_siblings_task_policies_and_lock(name, tmp_path):
    """The same task, strong base, lock settings and policies as paper_<task>.yaml (the policies it
    adds are trained as π_weak is, from another base), and so the same artifact keys: the sibling's
    models, pools and Pythia-1B lock serve it from the store."""
    task = task_of(name)
    cfg, sibling = shipped(name), shipped(f"paper_{task}.yaml")
    assert cfg["task"] == sibling["task"] and cfg["model"] == sibling["model"]
    assert cfg["lock"]["modes"] == sibling["lock"]["modes"] and cfg["lock"]["base"] == sibling["lock"]["base"]
    for policy, pc in cfg["policies"].items():
        if policy in sibling["policies"]:
            assert pc == sibling["policies"][policy], policy
        else:  # Pythia-410M or Pythia-7B: trained as π_weak, on π_strong's samples of the weak split
            assert policy in ("pythia-410m", "pythia-7b")
            assert pc | {"base": None} == sibling["policies"]["weak"] | {"base": None}, policy
    # What the config needs of the sibling's policies: no demonstrator of its SFT (GPT-4's T=0
    # solutions, the reference critiques, Llama-7B), but for the problem filter's policy (code's: GPT-4).
    assert cfg["task"].get("keep") == sibling["task"].get("keep")
    assert not {"gpt4", "reference-critiques", "llama-7b"} & set(cfg["policies"]) - {
        cfg["task"].get("keep", {}).get("solved_by")
    }
    raw, _ = on_fixtures(name, tmp_path)
    mine = plan(config_from_dict(raw, source=name))
    raw, _ = on_fixtures(f"paper_{task}.yaml", tmp_path)  # the same sample files: the same keys
    sibling_plan = plan(config_from_dict(raw, source="sibling"))
    # The same problem filter (code: the problems GPT-4 solves), and what follows it by label.
    filters = [[a.key for a in p.keep.artifacts] if p.keep else None for p in (mine, sibling_plan)]
    assert filters[0] == filters[1]
    ours, theirs = (
        {a.label: a.key for a in p.artifacts if not p.keep or a.key not in p.keep.keys} for p in (mine, sibling_plan)
    )
    shared = (set(ours) & set(theirs)) - {"policy scores"}  # scores every policy of the config
    assert {label: ours[label] for label in shared} == {label: theirs[label] for label in shared}
    assert "samples of strong (lock, 8/problem)" in shared and "samples of strong (weak, 1/problem)" in shared
    if "base" in want(name)["locks"]:
        assert {"locked model (base)", "locked model (base): evaluation"} <= shared


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory) -> dict[str, tuple[str, dict, Path]]:
    return dry_runs_of(tmp_path_factory.mktemp("rl_dry_runs"), [("rl", name) for name in RL_NAMES])


@pytest.mark.parametrize("name", RL_NAMES)
def test_a_paper_rl_config_dry_run_prints_gpu_hours_without_fetching_a_model(name, dry_runs):
    out, raw, tmp = dry_runs[name]
    p = plan(config_from_dict(raw, source=str(tmp / name)))
    lines = assert_priced(out, raw, tmp / name, p)
    for t in p.trials:  # every trial, with its rounds and its price
        line = next(x for x in lines if x.strip().startswith(t.name + " "))
        assert " rounds × " in line and line.endswith("GPU-h"), line
    total = re.search(r"total: ([\d.,]+) GPU-h for (\d+) trials and (\d+) artifacts", out)
    assert total and float(total[1].replace(",", "")) > 0
    assert (int(total[2]), int(total[3])) == (len(p.trials), len(p.artifacts))
    assert not (tmp / "store").exists() or not any((tmp / "store").iterdir())  # nothing built
