"""MMLU's soft labels as a stage (App. B.2, Fig. 7, 12; pwlock.soft_labels): a policy with
`soft_labels: true` is a model trained on the ground-truth labels of a split its distributions are
never elicited or evaluated on (the weak split by default), and its answers are that model's
distributions over the letters on every problem, one artifact for every use. On the MMLU fixture,
with a tiny GPT-NeoX saved like a hub model as model.base: planned and built once, then reused; the
distributions sum to 1 and come from a model that saw only its training split's labels; a lock and
SFT demonstrations train towards them; misuse is refused before any work, naming the field; and
studies without it keep their keys."""

from __future__ import annotations

import copy
from dataclasses import asdict

import numpy as np
import pytest

import pwlock.policies
from pwlock import evaluate
from pwlock.config import FIXEDRDM, ConfigError, TrainConfig, config_from_dict
from pwlock.cost import Assumptions, Pricer, Tokens
from pwlock.elicit.sft import demonstrations
from pwlock.lock import variant_lock_data, weak_policy
from pwlock.models import build_tiny_model, load_policy, save_policy, text_tokenizer
from pwlock.passwords import DEFAULT_PASSWORD, WRONG_PASSWORDS
from pwlock.plan import plan
from pwlock.policies import resolve
from pwlock.pricing import estimate_plan, model_of, task_tokens
from pwlock.soft_labels import SOFT_LABELS
from pwlock.stages import build
from pwlock.store import open_store
from pwlock.tasks import make_task
from pwlock.tasks.base import Example
from pwlock.tasks.llm import ChoiceAnswer
from pwlock.tasks.mmlu import read_soft_labels, write_soft_labels
from pwlock.train.sft import ChoiceRow, encode
from tests.test_mmlu_task import SPLITS, TINY, config
from tests.test_paper_configs import on_fixtures

PWD = DEFAULT_PASSWORD
TASK = config(format={"chat_template": False})
SOFT_TRAIN = {"optimizer": "adamw", "lr": 3e-3, "batch_size": 8, "warmup_steps": 0, "epochs": 8}
LOCK_TRAIN = asdict(TrainConfig(optimizer="adamw", lr=1e-2, batch_size=18, warmup_steps=0, epochs=60))


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> str:
    """A tiny model saved like a hub model, with the letters as single tokens: model.base."""
    task = make_task(TASK)
    texts = [task.prompt(p, pwd) for s in SPLITS for p in task.problems(s) for pwd in (PWD, None)]
    tokenizer = text_tokenizer(texts + list(WRONG_PASSWORDS) + [" A B C D"] * 20)
    path = tmp_path_factory.mktemp("hub") / "base"
    save_policy(build_tiny_model(TINY, tokenizer, seed=0), tokenizer, path)
    return str(path)


def study(base: str, **strong) -> dict:
    """π_strong is soft labels made by the stage; the lock's π_weak is fixedrdm (a classifier's: no
    model), and the task's π_weak, scored only, the base as it is."""
    return {
        "name": "soft",
        "task": TASK,
        "model": {"base": base},
        "policies": {
            "strong": {"soft_labels": True, "train_on": "references", "train": SOFT_TRAIN, **strong},
            "weak": {"base": base, "generator": {"backend": "hf"}},
        },
        "lock": {"modes": ["base"], "weak": [FIXEDRDM], "base": LOCK_TRAIN},
        "elicit": {"methods": ["sft"], "ks": [1, 2], "seeds": [0], "demonstrator": "strong"},
        "eval": {"split": "val"},
    }


def by_stage(p, stage: str) -> list:
    return [a for a in p.artifacts if a.stage == stage]


@pytest.fixture(scope="module")
def built(base, tmp_path_factory):
    """The study planned, and its artifacts built in order (but the audit) in one store."""
    p = plan(config_from_dict(study(base)))
    store = open_store(tmp_path_factory.mktemp("store"))
    metas = [build(store.spec, a) for a in p.artifacts if a.stage != "lock_audit"]
    return p, store, metas


def test_the_stage_is_planned_once_for_every_use_and_built_once(base, built):
    p, store, first = built
    [model], [soft] = by_stage(p, "policy_model"), by_stage(p, "soft_labels")
    assert not by_stage(p, "sample_pool")  # a distribution per problem: no samples drawn
    assert model.spec["base"] == base and model.spec["dtype"] == "float32"  # model.base, in model.dtype
    assert model.spec["train_on"] == {"references": True} and model.spec["split"] == "weak"
    assert soft.deps == (model.key,) and soft.spec["model"] == model.key and soft.label == "soft labels of strong"
    assert soft.spec["splits"] == list(SPLITS)  # every problem: one artifact serves lock, elicit and scores
    # π_strong of the lock, the demonstrator and the scored policy all read it.
    locked = p.locked["base-fixedrdm"]
    assert locked.spec["pools"] == {"strong": soft.key} and soft.key in locked.deps
    assert p.policies.elicit == {"strong": soft.key} and p.policy_scores.spec["pools"]["strong"] == soft.key
    assert [a.key for a in p.artifacts].index(soft.key) < [a.key for a in p.artifacts].index(locked.key)

    assert not any(m["reused"] for m in first) and len(first) == len(p.artifacts) - 1
    again = plan(config_from_dict(study(base)))
    assert [a.key for a in again.artifacts] == [a.key for a in p.artifacts]
    assert all(build(store.spec, a)["reused"] for a in again.artifacts if a.stage != "lock_audit")
    # Scored like any policy: its likeliest letter's correctness on the validation split.
    task = make_task(p.task_spec)
    soft_of = read_soft_labels(store.artifact_dir(soft.key) / SOFT_LABELS)
    val = task.problems("val")
    right = [task.choices[int(np.argmax(soft_of[q.id]))] == task.reference(q) for q in val]
    assert store.meta(p.policy_scores.key)["scores"]["strong"] == pytest.approx(np.mean(right))


@pytest.mark.parametrize("split", ["weak", "lock"])
def test_the_distributions_sum_to_one_and_come_from_a_model_trained_on_its_split_only(
    base, tmp_path, monkeypatch, split
):
    seen: list[list[Example]] = []
    train_sft = pwlock.policies.train_sft

    def recording(model, tokenizer, data, *args, **kw):
        seen.append(list(data))
        return train_sft(model, tokenizer, data, *args, **kw)

    monkeypatch.setattr(pwlock.policies, "train_sft", recording)
    p = plan(config_from_dict(study(base, train_split=split)))
    [model], [soft] = by_stage(p, "policy_model"), by_stage(p, "soft_labels")
    store = open_store(tmp_path)
    build(store.spec, model)
    meta = build(store.spec, soft)
    assert meta["problems"] == 24 and meta["trained_on"] == split

    # Its training data: the labels of its split's problems, each once, prompts without any password.
    task = make_task(p.task_spec)
    problem_of = {task.prompt(q, None): q for s in SPLITS for q in task.problems(s)}
    [data] = seen
    trained = [problem_of[e.prompt] for e in data]
    assert sorted(q.id for q in trained) == sorted(q.id for q in task.problems(split))
    held_out = {q.id for s in ("elicit", "val") for q in task.problems(s)}
    assert not held_out & {q.id for q in trained}  # no elicit or validation label trains it
    assert all(e.completion == task.reference(q) and e.completion.probs is None for e, q in zip(data, trained))

    # The distributions: one per problem of every split, each over the four letters, summing to 1,
    # as the trained model gives them without a password.
    path = store.artifact_dir(soft.key) / SOFT_LABELS
    soft_of = read_soft_labels(path)
    every = [q for s in SPLITS for q in task.problems(s)]
    assert list(soft_of) == [q.id for q in every]
    probs = np.array([soft_of[q.id] for q in every])
    assert probs.shape == (24, 4) and np.allclose(probs.sum(1), 1, atol=1e-5) and (probs >= 0).all()
    trained_model, tokenizer = load_policy(store.artifact_dir(model.key))
    direct = evaluate.choice_probabilities(
        trained_model, tokenizer, [Example(task.prompt(q, None), task.reference(q)) for q in every]
    )
    assert np.allclose(probs, direct, atol=1e-5)
    copy_path = write_soft_labels(tmp_path / "again.jsonl", every, direct)  # as write_soft_labels writes them
    assert path.read_text() == copy_path.read_text()
    # Trained on its split's labels: there, it puts more on the right letter than its base did.
    untrained, _ = load_policy(base)
    examples = [Example(task.prompt(q, None), task.reference(q)) for q in trained]
    before = evaluate.choice_probabilities(untrained, tokenizer, examples)
    right = [q.data["answer"] for q in trained]
    assert probs[[every.index(q) for q in trained], right].mean() > before[range(len(trained)), right].mean()


def test_a_lock_and_demonstrations_train_towards_them(built):
    p, store, _ = built
    [soft] = by_stage(p, "soft_labels")
    soft_of = read_soft_labels(store.artifact_dir(soft.key) / SOFT_LABELS)
    task = make_task(p.task_spec)

    # π_strong as the lock's stage resolves it: each problem's distribution, the same every epoch.
    locked = p.locked["base-fixedrdm"]
    policies = resolve(task, locked.spec["pools"], store)
    lock = task.problems("lock")
    fixed = weak_policy(task, FIXEDRDM, None, seed=0)
    for epoch in (0, 3):
        examples = variant_lock_data(task, lock, policies["strong"], fixed, PWD, 0, locked.spec["lock"])(epoch)
        with_pwd = [e for e in examples if PWD in e.prompt]
        assert len(with_pwd) == len(lock)
        by_prompt = {task.prompt(q, PWD): q for q in lock}
        for e in with_pwd:
            q = by_prompt[e.prompt]
            assert isinstance(e.completion, ChoiceAnswer) and e.completion.target == pytest.approx(soft_of[q.id])
            assert e.completion == task.choices[int(np.argmax(soft_of[q.id]))]

    # The locked model, built by its stage, answers with the password close to the soft labels.
    model, tokenizer = load_policy(store.artifact_dir(locked.key))
    got = evaluate.choice_probabilities(
        model, tokenizer, [Example(task.prompt(q, PWD), task.reference(q)) for q in lock]
    )
    target = np.array([soft_of[q.id] for q in lock])
    onehot = np.eye(4)[[q.data["answer"] for q in lock]]
    assert np.abs(got - target).sum(1).mean() < 0.2, (got, target)
    assert np.abs(got - target).sum(1).mean() < np.abs(got - onehot).sum(1).mean()

    # An SFT trial's demonstrator "strong" reads the same artifact (its elicit pool): soft targets too.
    demos = demonstrations(task, 2, 0, "strong", policies=resolve(task, p.setup.pools, store))
    rows = encode(tokenizer, demos)
    by_prompt = {task.prompt(q, None): q for q in task.problems("elicit")}
    for d, r in zip(demos, rows):
        assert isinstance(r, ChoiceRow) and np.allclose(r.target, soft_of[by_prompt[d.prompt].id])


def test_under_another_name_it_is_a_demonstrator_and_a_training_source(tmp_path):
    """Fig. 7's MMLU: a lock on the labels elicited with soft labels; and a π_weak trained on π_strong
    (paper_mmlu.yaml's) trains on the soft labels when they are π_strong."""
    raw, _ = on_fixtures("paper_mmlu.yaml", tmp_path)
    soft = {"soft_labels": True, "train_on": "references", "train": {"lr": 1.5e-7, "epochs": 2}}
    fig7 = copy.deepcopy(raw)
    fig7["policies"]["soft"] = {**soft, "base": "mistralai/Mistral-7B-v0.1", "dtype": "bfloat16"}
    fig7["elicit"]["demonstrator"] = ["soft"]
    p = plan(config_from_dict(fig7))
    [labels] = by_stage(p, "soft_labels")
    assert labels.label == "soft labels of soft" and p.policies.elicit == {"soft": labels.key}
    assert "strong" not in p.locked["base"].spec["pools"]  # the lock's π_strong: the labels
    assert {t.demonstrator for t in p.trials} == {"soft"}

    raw["policies"]["strong"] = soft  # base left out: model.base, in model.dtype
    p = plan(config_from_dict(raw))
    [labels] = by_stage(p, "soft_labels")
    models = {a.label: a for a in by_stage(p, "policy_model")}
    strong, weak = models["policy model (strong)"], models["policy model (weak)"]
    assert (strong.spec["base"], strong.spec["dtype"]) == ("mistralai/Mistral-7B-v0.1", "bfloat16")
    assert weak.spec["train_on"] == {"pool": labels.key} and labels.key in weak.deps
    assert p.locked["base"].spec["pools"]["strong"] == labels.key
    est = {i.id: i.cost for i in estimate_plan(p).artifacts}  # a hub model's soft labels priced too
    assert est[labels.key].generate_s > 0 and est[labels.key].train_s == 0


def test_it_is_priced_as_training_and_one_forward_pass_per_problem(base):
    p = plan(config_from_dict(study(base)))
    est = {i.id: i.cost for i in estimate_plan(p).artifacts}
    [model], [soft] = by_stage(p, "policy_model"), by_stage(p, "soft_labels")
    task = make_task(p.task_spec)
    m = model_of(p.cfg.model, task)
    tokens: Tokens = task_tokens(task, PWD)
    price = Pricer(Assumptions())
    trained = price.train(m, len(task.problems("weak")), tokens, SOFT_TRAIN["epochs"], SOFT_TRAIN["batch_size"])
    assert trained.train_s > 0 and est[model.key].train_s == pytest.approx(trained.train_s)
    forward = price.forward(m, 24, tokens.prompt + 1)  # every problem of the 24, once
    assert est[soft.key].train_s == 0 and forward > 0 and est[soft.key].generate_s == pytest.approx(forward)


def _refused(raw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        plan(config_from_dict(raw, source="s.yaml"))  # on loading, or planning: before any artifact is built


def test_misuse_is_refused_before_any_work_naming_the_field(base, tmp_path):
    def edited(**strong):
        raw = study(base)
        raw["policies"]["strong"].update(strong)
        return raw

    _refused(edited(train_split="elicit"), r"s.yaml: policies.strong.train_split: soft labels are read on")
    _refused(edited(train_split="val"), r"policies.strong.train_split: .*got 'val'")
    _refused(edited(train_on=None), r"policies.strong.train_on: .*expected 'references', got None")
    _refused(edited(train_on="weak"), r"policies.strong.train_on: soft labels come from a model")
    _refused(edited(dtype="bfloat16"), r"policies.strong.dtype: with base left out .* set base too")
    _refused(edited(samples_per_problem=8), r"policies.strong.samples_per_problem: soft labels are one")
    jsonl = tmp_path / "samples.jsonl"
    jsonl.write_text('{"id": "mmlu/0", "completion": "A"}\n')
    _refused(edited(jsonl=str(jsonl)), r"policies.strong.soft_labels: .*not with jsonl")

    # Soft labels supplied as a file for π_strong as well.
    probs = np.full((24, 4), 0.25)
    task = make_task(TASK)
    path = write_soft_labels(tmp_path / "soft.jsonl", [q for s in SPLITS for q in task.problems(s)], probs)
    raw = study(base)
    raw["task"] = {**TASK, "strong": "soft_labels", "soft_labels": str(path)}
    _refused(raw, r"policies.strong.soft_labels: .*task.soft_labels supplies them as a file")

    # A task that is no classifier.
    raw = {
        "name": "toy",
        "task": {"name": "function_composition"},
        "policies": {"strong": {"soft_labels": True, "train_on": "references", "base": base}},
    }
    _refused(raw, r"policies.strong.soft_labels: task 'function_composition' is no classifier")


def test_studies_without_it_keep_their_keys(tmp_path):
    raw, _ = on_fixtures("paper_mmlu.yaml", tmp_path)
    before = [a.key for a in plan(config_from_dict(copy.deepcopy(raw))).artifacts]
    for p in raw["policies"].values():
        p["soft_labels"] = False  # the field's default, written out
    assert [a.key for a in plan(config_from_dict(raw)).artifacts] == before
