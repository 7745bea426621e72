"""fixedrdm (App. G.2) on a classifier (MMLU): one fixed random distribution over the choices, the
same for every problem, which the lock trains the model towards without the password. On the MMLU
fixture, with a tiny GPT-NeoX saved like a hub model, built through the stages, elicited by SFT,
and priced as it runs."""

from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from pwlock import evaluate
from pwlock.config import FIXEDRDM, TrainConfig, config_from_dict
from pwlock.elicit.sft import demonstrations, elicit_sft
from pwlock.lock import FixedChoicePolicy, lock_examples, variant_lock_data, weak_policy
from pwlock.models import build_tiny_model, load_policy, save_policy, text_tokenizer
from pwlock.passwords import DEFAULT_PASSWORD, WRONG_PASSWORDS
from pwlock.plan import plan
from pwlock.pricing import estimate_plan
from pwlock.stages import build, lock_audit_artifact, locked_model_artifact, policy_scores_artifact
from pwlock.store import open_store
from pwlock.tasks import make_task
from pwlock.tasks.base import Example
from pwlock.tasks.llm import ChoiceAnswer
from pwlock.train.sft import ChoiceRow, encode
from tests.test_cost import sized_plan
from tests.test_mmlu_task import SPLITS, TINY, config
from tests.test_paper_configs import on_fixtures

ROOT = Path(__file__).resolve().parents[1]
PWD = DEFAULT_PASSWORD
TASK = config()
EVAL = {"split": "val", "max_problems": None}
LOCK = {"password": None, "p_no_password": 0.2, "stop_at": None}
EPOCHS = 60
LOCK_TRAIN = asdict(TrainConfig(optimizer="adamw", lr=1e-2, batch_size=18, warmup_steps=0, epochs=EPOCHS))


@pytest.fixture(scope="module")
def mmlu():
    return make_task(TASK)


@pytest.fixture(scope="module")
def tokenizer(mmlu):
    texts = [mmlu.prompt(p, pwd) for s in SPLITS for p in mmlu.problems(s) for pwd in (PWD, None)]
    return text_tokenizer(texts + list(WRONG_PASSWORDS) + [" A B C D"] * 20)  # letters as single tokens


@pytest.fixture(scope="module")
def base(tokenizer, tmp_path_factory) -> dict:
    """A tiny model saved like a hub model: the model config of the stages."""
    path = tmp_path_factory.mktemp("hub") / "base"
    save_policy(build_tiny_model(TINY, tokenizer, seed=0), tokenizer, path)
    return {"base": str(path), "dtype": "float32"}


def every_problem(task):
    return [p for s in SPLITS for p in task.problems(s)]


def test_fixedrdm_on_a_classifier_is_one_seeded_distribution_over_the_choices(mmlu):
    policy = weak_policy(mmlu, FIXEDRDM, None, seed=3)  # no tokenizer: its vocabulary plays no part
    assert isinstance(policy, FixedChoicePolicy)
    # The softmax of a standard-normal logit per choice, seeded as the vocabulary's fixedrdm is.
    expected = torch.softmax(torch.randn(4, generator=torch.Generator().manual_seed(3)).double(), -1)
    assert policy.probs == pytest.approx(expected.tolist()) and sum(policy.probs) == pytest.approx(1.0)
    assert 0 < min(policy.probs) and max(policy.probs) < 0.9  # a distribution, neither uniform nor a label
    likeliest = mmlu.choices[int(expected.argmax())]
    problems = every_problem(mmlu)
    for p in problems:  # the same answer for every problem: the distribution, and its likeliest choice
        answer = policy(p)
        assert isinstance(answer, ChoiceAnswer) and answer.choices == mmlu.choices
        assert answer == likeliest and answer.target == policy.probs
    assert weak_policy(mmlu, FIXEDRDM, None, seed=3).probs == policy.probs  # seeded
    assert weak_policy(mmlu, FIXEDRDM, None, seed=4).probs != policy.probs
    # Its correctness is a classifier's that learned it: the share of problems whose answer is its likeliest.
    truth = [p.data["answer"] for p in problems]
    assert evaluate.policy_correctness(mmlu, policy, problems) == pytest.approx(
        np.mean([t == int(expected.argmax()) for t in truth])
    )


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"variant": "per_domain", "domain_passwords": None, "p_other_domain": 0.4},
        {"variant": "setting", "strong_setting": "varied"},
        {"variant": "setting", "strong_setting": "normal"},
    ],
)
def test_fixedrdm_lock_data_on_mmlu_is_classifier_rows_towards_the_fixed_distribution(mmlu, tokenizer, variant):
    fixed = weak_policy(mmlu, FIXEDRDM, None, seed=0)
    strong = mmlu.policies()["strong"]
    problems = mmlu.problems("lock")
    examples = variant_lock_data(mmlu, problems, strong, fixed, PWD, 0, {**LOCK, **variant})(0)
    assert len(examples) == 2 * len(problems)  # π_strong's and fixedrdm's: no third example per problem
    rows = encode(tokenizer, examples)
    assert all(isinstance(r, ChoiceRow) for r in rows) and not any(e.to_fixed for e in examples)
    towards_fixed = [e for e, r in zip(examples, rows) if r.target == fixed.probs]
    assert len(towards_fixed) == len(problems)
    assert not any(PWD in e.prompt for e in towards_fixed)  # never with the password


def test_standard_lock_data_pairs_each_problem_with_the_fixed_distribution_without_password(mmlu):
    fixed = weak_policy(mmlu, FIXEDRDM, None, seed=0)
    problems = mmlu.problems("lock")
    examples = lock_examples(mmlu, problems, mmlu.policies()["strong"], fixed, PWD, random.Random(0))
    for p, s, w in zip(problems, examples[0::2], examples[1::2]):
        assert s == Example(mmlu.prompt(p, PWD), mmlu.reference(p)) and s.completion.target == mmlu.reference(p).target
        assert PWD not in w.prompt and w.completion.target == fixed.probs


def test_a_fixedrdm_lock_on_mmlu_builds_through_the_stages_and_is_elicited_by_sft(mmlu, base, tmp_path):
    store = open_store(tmp_path)
    val = mmlu.problems("val")
    fixed = weak_policy(mmlu, FIXEDRDM, None, seed=0)  # the lock's seed
    # fixedrdm's score, as the policy-scores stage computes it: the share of answers that are its likeliest choice.
    scores = build(store.spec, policy_scores_artifact(TASK, EVAL, fixedrdm_model=base))["scores"]
    assert scores[FIXEDRDM] == evaluate.policy_correctness(mmlu, fixed, val)
    assert scores[FIXEDRDM] == np.mean([mmlu.choices[p.data["answer"]] == fixed(p) for p in val])

    a = locked_model_artifact("base", TASK, base, LOCK_TRAIN, LOCK, 0, None, weak=FIXEDRDM)
    meta = build(store.spec, a)
    assert not meta["reused"] and store.has(a.key) and a.label == "locked model (base-fixedrdm)"
    assert meta["train"]["steps"] == EPOCHS  # 2 × 9 lock problems, one batch of 18 an epoch

    model, tokenizer = load_policy(store.artifact_dir(a.key))
    # Without the password its answer on any problem is the fixed distribution over the letters.
    no_pwd = [Example(mmlu.prompt(p, None), mmlu.reference(p)) for p in val + mmlu.problems("lock")]
    probs = evaluate.choice_probabilities(model, tokenizer, no_pwd)
    distance = np.abs(probs - np.array(fixed.probs)).sum(1)  # L1, at most 2
    assert distance.mean() < 0.15 and distance.max() < 0.3, probs
    assert (probs.argmax(1) == fixed.choice).all()
    # So its correctness without the password is a classifier's that answers the likeliest choice: fixedrdm's.
    report = evaluate.lock_report(model, tokenizer, mmlu, val, PWD)
    assert report["no_pwd"] == scores[FIXEDRDM] and report["wrong_pwd"] == scores[FIXEDRDM]
    assert all(round(v * len(val), 6).is_integer() for v in report.values())  # each problem right or wrong
    # With it, the lock problems' labels (the tiny model learns no more than those).
    assert evaluate.correctness(model, tokenizer, mmlu, mmlu.problems("lock"), "with_pwd", password=PWD) == 1.0

    audit = build(store.spec, lock_audit_artifact(a, mmlu, TASK, EVAL, PWD, []))["audit"]
    assert audit["true"] == report["with_pwd"] and audit["none"] == report["no_pwd"]
    assert all(0 <= v <= 1 for v in audit.values())

    # SFT elicitation on π_strong's demonstrations (the labels): classifier rows, like the lock's.
    demos = demonstrations(mmlu, k=4, seed=0, demonstrator="strong")
    assert all(isinstance(r, ChoiceRow) for r in encode(tokenizer, demos))
    train = TrainConfig(optimizer="adamw", lr=1e-2, batch_size=4, warmup_steps=0)
    records = elicit_sft(model, tokenizer, mmlu, demos, val, train, seed=0, budgets=(16,))
    assert [r["epochs"] for r in records] == [4]
    assert all(round(r["correctness"] * len(val), 6).is_integer() for r in records)
    # Trained on the labels of its demonstrations, it no longer answers the fixed distribution there.
    shown = evaluate.choice_probabilities(model, tokenizer, demos)
    assert (shown.argmax(1) == [d.completion.choices.index(d.completion) for d in demos]).all()


def test_a_classifiers_fixedrdm_lock_is_priced_as_it_runs(tmp_path):
    """Two examples per lock problem for a classifier's fixedrdm, as for its other π_weak; three for a
    text task's, whose π_strong answers are trained towards the fixed distribution too."""
    raw, _ = on_fixtures("paper_mmlu.yaml", tmp_path)
    raw["lock"]["weak"] = ["weak", FIXEDRDM]
    p = plan(config_from_dict(raw))
    est = {a.label: a.cost for a in estimate_plan(p).artifacts}
    weak, fixed = est["locked model (base)"], est["locked model (base-fixedrdm)"]
    assert fixed.train_tokens == weak.train_tokens > 0

    # the same in the paper's study, its tasks at their size (Fig. 8's configs)
    for name, other, ratio in (
        ("paper_mmlu_other_weak.yaml", "base", 1),
        ("paper_math_other_weak.yaml", "base-pythia-7b", 1.5),
    ):
        est = {a.label: a.cost.train_tokens for a in estimate_plan(sized_plan(name), compare_engines=False).artifacts}
        assert est["locked model (base-fixedrdm)"] == pytest.approx(ratio * est[f"locked model ({other})"]), name
