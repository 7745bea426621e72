"""The paper's text-task sweep configs (sweeps/configs/paper_{math,code,mmlu,critique}.yaml) on the
repository's small fixtures: each needs its data set (from the hub or a local copy) and, for code
and critiques, files of samples the user supplies; here the task points at tests/fixtures and the
sample files are written from the fixture's references, while the hub model ids stay as shipped.
Each loads, plans the model policies, sample pools, lock and trial grid of Table 1, and its
--dry-run prints GPU-hours for every artifact and trial with the hub offline and no model fetched
(plan and cost model read no model: parameter counts come from pwlock.cost.KNOWN_PARAMS)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pwlock.config import config_from_dict, load_config
from pwlock.plan import plan
from pwlock.tasks import make_task
from pwlock.tasks.math import SUBJECTS
from pwlock.tasks.splits import SPLITS
from tests.paper_record import figure, priced_trials, record

ROOT = Path(__file__).parents[1]
CONFIGS = ROOT / "sweeps" / "configs"
PAPER = CONFIGS / "paper.yaml"
FIXTURES = Path(__file__).parent / "fixtures"
CODER = "deepseek-ai/deepseek-coder-6.7b-base"
PYTHIA_1B, LLAMA = "EleutherAI/pythia-1b", "huggyllama/llama-7b"
VLLM = {"gpu_fraction": 0.9, "gpu_memory_utilization": 0.85}


def _math(raw: dict, tmp: Path) -> None:
    source = {"path": str(FIXTURES / "math"), "subsets": list(SUBJECTS)}
    raw["task"].update(train={**source, "splits": ["train"]}, test={**source, "splits": ["test"]})


def _code(raw: dict, tmp: Path) -> None:
    raw["task"].update(
        data=[{"path": str(FIXTURES / "code" / f)} for f in ("stdio.jsonl", "apps.jsonl", "mbpp.jsonl")], workers=2
    )
    task = make_task(raw["task"])
    every = [p for s in ("weak", "lock", "elicit", "val") for p in task.problems(s)]
    # "GPT-4": the reference solutions, T=1 twice per problem (a repeat π_strong's training drops), T=0 once.
    files = {"gpt4-t1": [p for p in every for _ in range(2)], "gpt4": every}
    for name, problems in files.items():
        if name not in raw["policies"]:  # the RL configs see no demonstration: no T=0 file
            continue
        path = tmp / f"{name}.jsonl"
        path.write_text(
            "".join(
                json.dumps({"id": p.id, "completion": p.data["solutions"][task.language_of(p)][0]}) + "\n"
                for p in problems
            )
        )
        raw["policies"][name]["jsonl"] = str(path)


def _mmlu(raw: dict, tmp: Path) -> None:
    source = {"path": str(FIXTURES / "mmlu"), "subsets": ["all"]}
    raw["task"].update(data={**source, "splits": ["test", "validation"]}, shots={**source, "splits": ["dev"]})


def _critique(raw: dict, tmp: Path) -> None:
    raw["task"]["data"] = {"path": str(FIXTURES / "critique" / "critiques.jsonl")}


# What each config is (Table 1): the strong base the lock trains; each policy model's base and what
# it trains on (a pool's label, or the task's own policy); every sample pool; the demonstrators.
EXPECTED = {
    "paper_math.yaml": {
        "base": "deepseek-ai/deepseek-math-7b-base",
        "lr": 1.5e-6,
        "models": {
            "weak": (PYTHIA_1B, "samples of strong (weak, 1/problem)"),
            "llama-7b": (LLAMA, "samples of strong (weak, 1/problem)"),
        },
        "pools": {
            "samples of strong (weak, 1/problem)",
            "samples of strong (lock, 8/problem)",
            "samples of weak (lock, 8/problem)",
            "samples of strong (val, greedy)",
            "samples of weak (val, greedy)",
            "samples of llama-7b (elicit, 1/problem)",
            "samples of llama-7b (val, greedy)",
        },
        "demonstrators": ["references", "llama-7b"],
        "lock_pools": {"strong", "weak"},
    },
    "paper_code.yaml": {
        "base": CODER,
        "lr": 1.5e-6,
        "models": {
            "strong": (CODER, "samples of gpt4-t1 (elicit, from a file)"),
            "weak": (PYTHIA_1B, "samples of strong (weak, 1/problem)"),
            "llama-7b": (LLAMA, "samples of strong (weak, 1/problem)"),
        },
        "pools": {
            "samples of gpt4 (weak, from a file)",  # GPT-4's T=0 answers to every problem: the filter's
            "samples of gpt4 (lock, from a file)",
            "samples of gpt4-t1 (elicit, from a file)",
            "samples of strong (weak, 1/problem)",
            "samples of strong (lock, 8/problem)",
            "samples of weak (lock, 8/problem)",
            "samples of strong (val, greedy)",
            "samples of weak (val, greedy)",
            "samples of gpt4 (elicit, from a file)",
            "samples of gpt4 (val, from a file)",
            "samples of llama-7b (elicit, 1/problem)",
            "samples of llama-7b (val, greedy)",
        },
        "demonstrators": ["gpt4", "llama-7b"],
        "lock_pools": {"strong", "weak"},
    },
    "paper_mmlu.yaml": {
        "base": "mistralai/Mistral-7B-v0.1",
        "lr": 1.5e-7,
        "models": {"weak": ("EleutherAI/pythia-6.9b", "strong"), "llama-7b": (LLAMA, "strong")},
        "pools": {
            "samples of weak (lock, 8/problem)",
            "samples of weak (val, greedy)",
            "samples of llama-7b (elicit, 1/problem)",
            "samples of llama-7b (val, greedy)",
        },
        "demonstrators": ["references", "llama-7b"],
        "lock_pools": {"weak"},  # π_strong: the labels, no pool
    },
    "paper_critique.yaml": {
        "base": CODER,
        "lr": 1.5e-6,
        "models": {
            "strong": (CODER, "references"),
            "weak": (PYTHIA_1B, "samples of strong (weak, 1/problem)"),
            "llama-7b": (LLAMA, "samples of strong (weak, 1/problem)"),
        },
        "pools": {
            "samples of strong (weak, 1/problem)",
            "samples of strong (lock, 8/problem)",
            "samples of weak (lock, 8/problem)",
            "samples of strong (val, greedy)",
            "samples of weak (val, greedy)",
            "samples of llama-7b (elicit, 1/problem)",
            "samples of llama-7b (val, greedy)",
        },
        "demonstrators": ["references", "llama-7b"],
        "lock_pools": {"strong", "weak"},
    },
}
NAMES = list(EXPECTED)
# What puts a config of each text task on its fixture.
LOCAL = {"math": _math, "code": _code, "mmlu": _mmlu, "critique": _critique}
# The paper's RL configs of the same tasks, one per RL figure of paper.yaml and task
# (tests/test_paper_rl_configs.py), on the same fixtures.
RL_NAMES = [
    f"paper_{task}_rl{figure}.yaml"
    for task, figures in (
        ("math", ["", "_sft", "_pythia7b", "_setting"]),
        ("code", ["", "_sft", "_pythia7b", "_continuous"]),
        ("critique", ["", "_sft", "_pythia7b", "_continuous"]),
    )
    for figure in figures
]
# The paper's other SFT figures (Fig. 7, 8, 9a, 12, 15) and its generalization figures (Fig. 4, 17)
# of the same tasks (tests/test_paper_figures.py), on the same fixtures.
FIGURE_NAMES = [
    f"paper_{task}_{figure}.yaml"
    for task, figures in (
        ("math", ["strong", "weak", "other_weak", "setting", "adversarial", "category", "level"]),
        ("math", [f"holdout_{d}" for d in ("algebra", "geometry", "numbers")]),
        ("code", ["strong", "weak", "other_weak", "adversarial"]),
        ("critique", ["strong", "weak", "other_weak", "adversarial"]),
        ("mmlu", ["strong", "weak", "other_weak", "soft", "category"]),
        ("mmlu", [f"holdout_{d}" for d in ("stem", "bio", "law", "misc")]),
    )
    for figure in figures
]
TEXT_CONFIGS = NAMES + RL_NAMES + FIGURE_NAMES  # every shipped config of a text task: planned on the fixtures


def on_fixtures(name: str, tmp: Path) -> tuple[dict, list[int]]:
    """The shipped config with its task on the fixture, its sample files written, and its ks cut to
    the fixture's elicit split, or to its smallest domain the demonstrations come from (1 and 2
    where none fits: Fig. 16's 16 and 64 before RL, Fig. 4's 4; 1 alone in a domain of one
    problem); and the ks kept (none for a config of RL methods alone, which see no demonstration)."""
    raw = yaml.safe_load((CONFIGS / name).read_text())
    LOCAL[raw["task"]["name"]](raw, tmp)
    if "ks" not in raw["elicit"]:
        return raw, []
    elicit = make_task(raw["task"]).problems("elicit")
    domains = raw["elicit"].get("domains", ["all"])
    domains = [domains] if isinstance(domains, str) else domains
    n = min([len(elicit)] + [sum(p.domain == d for p in elicit) for d in domains if d != "all"])
    raw["elicit"]["ks"] = [k for k in raw["elicit"]["ks"] if k <= n] or [1, 2][:n]
    return raw, raw["elicit"]["ks"]


@pytest.mark.parametrize("name", NAMES)
def test_a_paper_config_plans_its_policies_pools_lock_and_grid_on_the_fixture(name, tmp_path):
    want = EXPECTED[name]
    raw, ks = on_fixtures(name, tmp_path)
    assert ks  # at least k = 1
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    assert load_config(path, quick=True).elicit.ks == [16]  # --quick's overrides validate too
    p = plan(cfg)
    assert want["lr"] == make_task(cfg.task).suggested_lr  # App. G.1: 1.5e-7 for MMLU, else 1.5e-6
    by_key = {a.key: a for a in p.artifacts}
    # Policy models: each base as Table 1 names it, trained on what the paper says.
    models = {
        a.label.removeprefix("policy model (").removesuffix(")"): a for a in p.artifacts if a.stage == "policy_model"
    }
    assert set(models) == set(want["models"])
    for policy, (base, source) in want["models"].items():
        a = models[policy]
        assert a.spec["base"] == base and a.spec["dtype"] == "bfloat16", policy
        on = a.spec["train_on"]
        got = by_key[on["pool"]].label if "pool" in on else "references" if "references" in on else on["task_policy"]
        assert got == source, policy
        assert a.spec["train"]["lr"] == want["lr"], policy
    # π_strong trains on the elicit split (App. E.4), on GPT-4's 10 T=1 samples per problem for code (E.1).
    if "strong" in models:
        assert models["strong"].spec["split"] == "elicit"
        assert models["strong"].spec["samples"] == (10 if name == "paper_code.yaml" else 1)
        if "pool" in models["strong"].spec["train_on"]:
            assert by_key[models["strong"].spec["train_on"]["pool"]].spec["n"] == 10
    assert {models[w].spec["split"] for w in models if w != "strong"} == {"weak"}
    # Sample pools: exactly those the study uses; 8 per lock problem (one per lock epoch); generated by
    # vLLM engines that take their own GPU, but for MMLU (a classifier: one forward pass in the stage).
    pools = [a for a in p.artifacts if a.stage == "sample_pool"]
    assert {a.label for a in pools} == want["pools"]
    generated = [a for a in pools if "jsonl" not in a.spec["source"]]
    mmlu = name == "paper_mmlu.yaml"
    assert all(a.spec["generator"]["backend"] == ("hf" if mmlu else "vllm") for a in generated)
    assert all(a.gpus == (None if mmlu else 0.0) for a in generated)
    assert mmlu or all(a.spec["generator"]["vllm"] | VLLM == a.spec["generator"]["vllm"] for a in generated)
    # The lock: mode base, the strong base's own weights, App. G.1's rate and 8 epochs, on π_strong's
    # and π_weak's lock pools (MMLU's π_strong is the labels: no pool).
    assert list(p.locked) == ["base"] and p.strong is None
    lock = p.locked["base"]
    assert lock.spec["mode"] == "base" and lock.spec["model"]["base"] == want["base"]
    assert lock.spec["train"]["lr"] == want["lr"] and lock.spec["train"]["epochs"] == 8
    assert set(lock.spec["pools"]) == want["lock_pools"] and set(lock.spec["pools"].values()) <= set(lock.deps)
    assert all(by_key[k].label == f"samples of {n} (lock, 8/problem)" for n, k in lock.spec["pools"].items())
    # The trial grid: SFT, each demonstrator × k × 3 seeds, on the one lock.
    assert cfg.elicit.train.lr == want["lr"]
    assert set(p.policies.elicit) == set(want["demonstrators"]) - {"strong", "references"}  # the task's own
    grid = {(t.lock_mode, t.method, t.demonstrator, t.k, t.seed) for t in p.trials}
    assert len(p.trials) == len(grid) == len(want["demonstrators"]) * len(ks) * 3
    assert grid == {("base", "sft", d, k, s) for d in want["demonstrators"] for k in ks for s in (0, 1, 2)}
    # Code keeps the problems GPT-4 solves at T=0 (§4.2, App. E.1): its one answer to every problem of
    # every split, run before the rest (provisional here: no store holds the filter).
    if name == "paper_code.yaml":
        keep = p.keep
        assert (keep.cfg.solved_by, keep.cfg.samples, keep.cfg.min_passing, keep.pending) == ("gpt4", 1, 1, True)
        filtered = [by_key[k] for k in keep.artifact.spec["pools"].values()]
        assert sorted(a.spec["split"] for a in filtered) == sorted(SPLITS) and all(a.spec["n"] == 1 for a in filtered)
        assert [a.key for a in p.artifacts[: len(keep.artifacts)]] == [a.key for a in keep.artifacts]
    else:
        assert p.keep is None
    # The full grid: every shipped k (the fixture's elicit split only holds the small ones).
    assert yaml.safe_load((CONFIGS / name).read_text())["elicit"]["ks"] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]


# Table 1's high-quality demonstrations, by the name each config gives them (paper.yaml: high_quality).
HIGH_QUALITY = {"code": "gpt4", "math": "references", "critique": "references", "mmlu": "references"}


@pytest.mark.parametrize("name", NAMES)
def test_a_paper_config_runs_what_paper_yaml_prices_for_fig3(name):
    """The paper's Fig. 3 (tests/fixtures/paper_figures.yaml), for this config's task, and the config:
    SFT at the same ks and seeds on the same demonstrators (the high-quality ones by the config's
    name for them, and a policy on the same hub model); paper.yaml prices the config's trials for
    Fig. 3, as many as the paper's grid."""
    study, fig = record(), figure("fig3")
    task = name.removeprefix("paper_").removesuffix(".yaml")
    cfg = yaml.safe_load((CONFIGS / name).read_text())
    assert fig.methods == cfg["elicit"]["methods"] and fig.ks == cfg["elicit"]["ks"]
    assert (fig.seeds or study.defaults.seeds) == len(cfg["elicit"]["seeds"])
    demonstrators = cfg["elicit"]["demonstrator"]
    assert len(demonstrators) == len(fig.demonstrators)
    for want, got in zip(fig.demonstrators, demonstrators):
        if want == "high_quality":
            assert got == HIGH_QUALITY[task]
        else:
            assert cfg["policies"][got]["base"] == study.models[want].hub
    assert len(priced_trials("fig3", name)) == len(fig.ks) * len(fig.demonstrators) * study.defaults.seeds


def test_the_shipped_paper_configs_say_what_they_need(tmp_path, monkeypatch):
    """Without the user's sample files (paths relative to where the sweep runs), code and critiques
    are refused on load, naming the field and the file."""
    from pwlock.config import ConfigError

    monkeypatch.chdir(tmp_path)  # where none of them is
    for name, policy in (("paper_code.yaml", "gpt4-t1"),):
        raw = yaml.safe_load((CONFIGS / name).read_text())
        missing = raw["policies"][policy]["jsonl"]
        assert not Path(missing).is_absolute()
        with pytest.raises(ConfigError, match=rf"policies\.{policy}\.jsonl: {missing}: file not found"):
            config_from_dict(raw, source=name)


# Runs each `python sweeps/<sweep>.py --dry-run --config C --storage S` in one interpreter (imports
# take most of a run).
DRIVER = """
import runpy, sys
args = sys.argv[1:]
for script, config, store in zip(args[::3], args[1::3], args[2::3]):
    sys.argv = [script, "--dry-run", "--config", config, "--storage", store]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        print(f"=== exit {e.code}", flush=True)
"""


def dry_runs_of(root: Path, runs: list[tuple[str, str]]) -> dict[str, tuple[str, dict, Path]]:
    """Each (sweep, config name)'s `sweeps/<sweep>.py --dry-run` on the fixtures, with the hub offline
    and an empty Hugging Face home (a model it tried to fetch would fail the run, or land there):
    config name -> (its output, the config as run, its directory)."""
    args, raws = [], {}
    for sweep, name in runs:
        tmp = root / name.removesuffix(".yaml")
        tmp.mkdir()
        raws[name], _ = on_fixtures(name, tmp)
        (tmp / name).write_text(yaml.safe_dump(raws[name]))
        args += [str(ROOT / "sweeps" / f"{sweep}.py"), str(tmp / name), str(tmp / "store")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(root / "hf")}
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, *args], capture_output=True, text=True, timeout=600, env=env, cwd=root
    )
    parts = re.split(r"=== exit (\S+)\n", proc.stdout)  # output, exit code, output, exit code, ..., ""
    outs, codes = parts[0:-1:2], parts[1::2]
    assert len(codes) == len(runs), proc.stdout[-2000:] + proc.stderr[-4000:]
    assert codes == ["0"] * len(runs), (codes, proc.stderr[-4000:])
    assert not list((root / "hf").rglob("models--*"))  # no model in the hub cache
    return {name: (out, raws[name], root / name.removesuffix(".yaml")) for (_, name), out in zip(runs, outs)}


def assert_priced(out: str, raw: dict, path: Path, p) -> list[str]:
    """A --dry-run's output (of the config `raw` at `path`, planned as `p`): its header, every artifact
    priced and none in the (empty) store, every trial priced, the estimate on an H100. Its lines."""
    assert out.startswith(f"study {raw['name']!r} from {path}: task {raw['task']['name']}")
    lines = out.splitlines()
    for a in p.artifacts:
        line = next(x for x in lines if a.key in x)
        assert line.endswith("GPU-h  [to build]") and a.label in line, line
    for t in p.trials:
        assert any(x.strip().startswith(t.name + " ") and x.endswith("GPU-h") for x in lines), t.name
    assert "cost estimate unavailable" not in out and "cost estimate on one H100 80GB" in out
    return lines


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory) -> dict[str, tuple[str, dict, Path]]:
    return dry_runs_of(tmp_path_factory.mktemp("dry_runs"), [("sample_efficiency", name) for name in NAMES])


@pytest.mark.parametrize("name", NAMES)
def test_a_paper_config_dry_run_prints_gpu_hours_without_fetching_a_model(name, dry_runs):
    out, raw, tmp = dry_runs[name]
    p = plan(config_from_dict(raw, source=str(tmp / name)))
    assert_priced(out, raw, tmp / name, p)
    assert "total: " in out and f"for {len(p.trials)} trials and {len(p.artifacts)} artifacts" in out
    assert not (tmp / "store").exists() or not any((tmp / "store").iterdir())  # nothing built
