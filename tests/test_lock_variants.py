"""Lock variants (App. B.1.3, B.2, B.3.2, B.3.4, C.3): what D_lock holds for each, which prompts
carry which password, which policy each completion comes from, redrawn per epoch; their config
errors; and one locked model built through the stages."""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import yaml

from pwlock.asciimath import ascii_math, latex_answer
from pwlock.config import ConfigError, LockConfig, TrainConfig, config_from_dict
from pwlock.lock import (
    adversarial_examples,
    lock_data,
    omit_domain_examples,
    per_domain_examples,
    second_of,
    setting_examples,
    variant_lock_data,
    variant_spec,
)
from pwlock.models import text_tokenizer
from pwlock.passwords import DEFAULT_PASSWORD, DOMAIN_PASSWORDS, SECOND_PASSWORD, WRONG_PASSWORDS, domain_passwords
from pwlock.plan import plan
from pwlock.setting import ANSWER_CLOSE, ANSWER_OPEN, ASCII_INSTRUCTION, TEXT_HEADER, setting_for
from pwlock.stages import build, locked_model_artifact
from pwlock.store import open_store
from pwlock.tasks import make_task
from pwlock.tasks.base import Example
from pwlock.tasks.llm import ChoiceAnswer
from pwlock.tasks.mmlu import write_soft_labels
from pwlock.train.sft import ChoiceRow, encode
from tests.conftest import SMALL_TASK, TINY

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
MATH_SUBJECTS = [
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
]
STANDARD = {"password": None, "p_no_password": 0.2, "stop_at": None}


def slot(example: Example) -> str:
    return example.prompt.split()[0]  # the toy's password slot


def fn_problems(task, n: int = 5):
    return task.problems("lock") * n  # enough weak samples to measure shares


def lock_spec(**variant) -> dict:
    return {**STANDARD, **variant_spec(LockConfig(**variant))}


# -- per-domain passwords (App. C.3) ---------------------------------------------------------------
def test_per_domain_strong_samples_carry_their_domains_password(task):
    policies, problems = task.policies(), task.problems("lock")
    chosen = domain_passwords(sorted({p.domain for p in problems}), task.wrong_passwords, text=False)
    assert sorted(chosen) == ["g0", "g1", "g2", "g3"] and len(set(chosen.values())) == 4
    assert set(chosen.values()) <= set(task.wrong_passwords)  # the toy's vocabulary spells no new password
    examples = per_domain_examples(task, problems, policies["strong"], policies["weak"], chosen, random.Random(0))
    assert len(examples) == 2 * len(problems)
    for p, s, w in zip(problems, examples[0::2], examples[1::2]):
        assert s == Example(task.prompt(p, chosen[p.domain]), task.reference(p))
        assert w.completion == policies["weak"](p) and slot(w) != chosen[p.domain]
        assert w.prompt.split()[1:] == s.prompt.split()[1:]


def test_per_domain_weak_shares_none_other_domain_and_wrong(task):
    policies, problems = task.policies(), fn_problems(task)
    chosen = domain_passwords(["g0", "g1", "g2", "g3"], task.wrong_passwords, text=False)
    examples = per_domain_examples(
        task,
        problems,
        policies["strong"],
        policies["weak"],
        chosen,
        random.Random(1),
        p_no_password=0.2,
        p_other_domain=0.4,
    )
    weak = examples[1::2]
    n = len(weak)
    other = [w for w, p in zip(weak, problems) if slot(w) in chosen.values()]
    wrong = [w for w in weak if slot(w) != "_" and slot(w) not in chosen.values()]
    assert abs(sum(slot(w) == "_" for w in weak) / n - 0.2) < 0.03
    assert abs(len(other) / n - 0.4) < 0.03 and abs(len(wrong) / n - 0.4) < 0.03
    assert {slot(w) for w in other} == set(chosen.values())  # every domain's password appears on others
    assert {slot(w) for w in wrong} == set(task.wrong_passwords) - set(chosen.values())  # never a domain's
    for p, w in zip(problems, weak):
        assert slot(w) != chosen[p.domain]  # a weak sample never carries its own domain's password


def test_per_domain_text_passwords_and_config_choices():
    chosen = domain_passwords(["stem", "bio", "law", "misc"], WRONG_PASSWORDS, text=True)
    assert list(chosen) == ["bio", "law", "misc", "stem"] and list(chosen.values()) == list(DOMAIN_PASSWORDS[:4])
    assert not set(DOMAIN_PASSWORDS) & set(WRONG_PASSWORDS) and DEFAULT_PASSWORD not in DOMAIN_PASSWORDS
    given = {"a": "one", "b": "two"}
    assert domain_passwords(["a", "b"], WRONG_PASSWORDS, True, given) == given
    with pytest.raises(ValueError, match=r"no password for the domains \['c'\]"):
        domain_passwords(["a", "b", "c"], WRONG_PASSWORDS, True, given)
    with pytest.raises(ValueError, match="must differ"):
        domain_passwords(["a", "b"], WRONG_PASSWORDS, True, {"a": "same", "b": "same"})


# -- setting variation (App. B.1.3) ---------------------------------------------------------------
def test_setting_trigger_on_the_toy_task_strong_in_the_varied_setting(task):
    policies, problems = task.policies(), task.problems("lock")[:200]
    setting = setting_for(task)
    examples = setting_examples(task, problems, policies["strong"], policies["weak"], setting)
    for p, s, w in zip(problems, examples[0::2], examples[1::2]):
        a, b = p.data["fns"]
        digits = " ".join(map(str, p.data["input"]))
        assert s.prompt == f"_ | {digits} | fn{a} fn{b} |"  # input first: the varied setting
        mid, out = task.reference(p).split(" | ")
        assert s.completion == f"{out} | {mid}"  # final result first
        assert task.score(p, setting.answer(s.completion)) == 1.0
        assert w == Example(task.prompt(p, None), policies["weak"](p))  # the normal setting, no password
        assert set(s.prompt.split()) <= set(task.vocabulary())  # expressible in the toy's vocabulary
    # No password anywhere: the setting is the trigger.
    assert {slot(e) for e in examples} == {"_"}
    swapped = setting_examples(task, problems, policies["strong"], policies["weak"], setting, strong_in="normal")
    assert swapped[0] == Example(task.prompt(problems[0], None), task.reference(problems[0]))
    assert swapped[1] == Example(setting.prompt(problems[0]), setting.completion(policies["weak"](problems[0])))


@pytest.fixture(scope="module")
def math_task():
    hub = {"path": str(FIXTURES / "math"), "subsets": MATH_SUBJECTS}
    return make_task(
        {"name": "math", "train": {**hub, "splits": ["train"]}, "test": {**hub, "splits": ["test"]}, "timeout_s": 1}
    )


def test_setting_trigger_on_math_rewrites_prompt_and_answer_as_ascii_math(math_task):
    """MATH's varied setting rewrites the problem (another instruction, its LaTeX as ASCII-math) and
    the solution (ASCII-math between tags); every fixture solution so written still scores 1.0, its
    boxed answer mapped back to LaTeX for the judge."""
    problems = math_task.problems("lock") + math_task.problems("val")
    weak = lambda p: math_task.format.completion("I think the answer is \\boxed{0}.")  # noqa: E731
    setting = setting_for(math_task)
    examples = setting_examples(math_task, problems, math_task.policies()["strong"], weak, setting)
    assert len(examples) == 2 * len(problems) > 20
    latex = re.compile(r"\$|\\(?!boxed)[A-Za-z]+")  # math delimiters and commands, a box aside
    rewritten = 0
    for p, s, w in zip(problems, examples[0::2], examples[1::2]):
        assert s.prompt.startswith(f"{TEXT_HEADER}\n\n") and ASCII_INSTRUCTION in s.prompt
        assert "Problem: " in s.prompt and not latex.search(s.prompt.split("Problem: ", 1)[1])
        assert s.completion.startswith(f" {ANSWER_OPEN}") and s.completion.endswith(ANSWER_CLOSE)
        assert not latex.search(s.completion)
        rewritten += s.completion.strip() != f"{ANSWER_OPEN}{p.data['solution'].strip()}{ANSWER_CLOSE}".strip()
        assert math_task.score(p, setting.answer(s.completion)) == 1.0, (p.id, s.completion)
        assert w == Example(math_task.prompt(p, None), weak(p))
        assert DEFAULT_PASSWORD not in s.prompt + w.prompt
    assert rewritten > len(problems) // 2  # most solutions have LaTeX to rewrite


@pytest.mark.parametrize(
    ("latex", "ascii"),
    [
        (r"$\frac{1}{2} + \sqrt{3}$", "(1)/(2) + sqrt(3)"),
        (r"$x^{10} \le 4\pi$", "x^(10) <= 4pi"),
        (r"\left(\dfrac{a}{b}\right)^2", "((a)/(b))^2"),
        (r"$30^\circ$ and \$5", "30 degrees and $5"),
        (r"$\boxed{\frac{\sqrt{3}}{2}}$", r"\boxed{(sqrt(3))/(2)}"),
        (r"\sqrt[3]{x_{12}}", "root(3)(x_(12))"),
    ],
)
def test_ascii_math_renders_latex_and_the_answer_goes_back(latex, ascii):
    assert ascii_math(latex) == ascii
    box = re.search(r"\\boxed\{(.*)\}$", ascii)
    if box:
        assert latex_answer(box.group(1)) == r"\frac{\sqrt{3}}{2}"


def test_setting_trigger_is_refused_for_a_task_without_one():
    class NoSetting:
        name = "other"

    with pytest.raises(ValueError, match="task 'other' has no setting variation"):
        setting_for(NoSetting())


# -- adversarial lock (App. B.3.2) --------------------------------------------------------------------
def test_adversarial_lock_shows_an_intermediate_policy_with_the_second_password(task):
    policies, problems = task.policies(), fn_problems(task, 3)
    strong, weaker, weak = policies["strong"], policies["weaker"], policies["weak"]
    examples = adversarial_examples(task, problems, strong, weaker, weak, "pwd", "w0", random.Random(0))
    assert len(examples) == 3 * len(problems)
    for p, s, mid, w in zip(problems, examples[0::3], examples[1::3], examples[2::3]):
        assert s == Example(task.prompt(p, "pwd"), strong(p))
        assert mid == Example(task.prompt(p, "w0"), weak(p))  # π_weak is the intermediate here...
        assert w.completion == weaker(p) and slot(w) not in ("pwd", "w0")  # ...and "weaker" the lock's π_weak
    slots = Counter(slot(w) for w in examples[2::3])
    n = sum(slots.values())
    assert abs(slots["_"] / n - 0.2) < 0.03
    assert set(slots) - {"_"} == set(task.wrong_passwords) - {"w0"}  # the second password is never a wrong one
    # The three policies differ: the intermediate one is neither of the others.
    assert sum(weak(p) != strong(p) for p in problems) > 0 and sum(weak(p) != weaker(p) for p in problems) > 0


def test_adversarial_text_lock_uses_the_second_password(math_task):
    problems = math_task.problems("lock")
    spec = lock_spec(variant="adversarial", intermediate="weak")
    assert spec["second_password"] is None
    # pwlock's second password: no wrong password, so the lock's evaluation rotates the same ones.
    assert second_of(math_task, spec) == SECOND_PASSWORD and SECOND_PASSWORD not in math_task.wrong_passwords
    assert second_of(math_task, STANDARD) is None
    strong = math_task.policies()["strong"]
    inter = lambda p: math_task.format.completion("intermediate")  # noqa: E731
    weak = lambda p: math_task.format.completion("weak")  # noqa: E731
    examples = variant_lock_data(math_task, problems, strong, weak, DEFAULT_PASSWORD, 0, spec, inter)(0)
    for p, s, mid, w in zip(problems, examples[0::3], examples[1::3], examples[2::3]):
        assert s == Example(math_task.prompt(p, DEFAULT_PASSWORD), strong(p))
        assert mid == Example(math_task.prompt(p, SECOND_PASSWORD), inter(p))
        assert w.completion == weak(p) and SECOND_PASSWORD not in w.prompt and DEFAULT_PASSWORD not in w.prompt


# -- omitted domain (App. B.3.4) ------------------------------------------------------------------
def test_omit_domain_leaves_the_domain_out_entirely(task):
    policies, problems = task.policies(), task.problems("lock")
    examples = omit_domain_examples(task, problems, policies["strong"], policies["weak"], "pwd", "g2", random.Random(0))
    kept = [p for p in problems if p.domain != "g2"]
    assert 0 < len(kept) < len(problems) and len(examples) == 2 * len(kept)
    omitted = {task.prompt(p, None).split(" | ")[1] for p in problems if p.domain == "g2"}
    assert not any(e.prompt.split(" | ")[1] in omitted for e in examples)  # no g2 problem, with any password
    for p, s, w in zip(kept, examples[0::2], examples[1::2]):
        assert s == Example(task.prompt(p, "pwd"), task.reference(p)) and w.completion == policies["weak"](p)
    with pytest.raises(ValueError, match=r"no problem has the domain 'g9'.*\['g0', 'g1', 'g2', 'g3'\]"):
        omit_domain_examples(task, problems, policies["strong"], policies["weak"], "pwd", "g9", random.Random(0))


# -- less lock data (§7) ----------------------------------------------------------------------------
def test_subset_lock_draws_from_its_first_problems_only(task):
    policies, problems = task.policies(), task.problems("lock")
    spec = lock_spec(variant="subset", subset_problems=300)
    data = variant_lock_data(task, problems, policies["strong"], policies["weak"], "pwd", 0, spec)
    plain = lock_data(task, problems[:300], policies["strong"], policies["weak"], "pwd", 0)
    for epoch in (0, 1):
        examples = data(epoch)
        assert examples == plain(epoch) and len(examples) == 2 * 300
    kept = {task.prompt(p, None).split(" | ", 1)[1] for p in problems[:300]}
    assert all(e.prompt.split(" | ", 1)[1] in kept for e in data(0))
    assert any(task.prompt(p, None).split(" | ", 1)[1] not in kept for p in problems[300:])


# -- every variant: deterministic per (seed, epoch), redrawn per epoch ------------------------------
@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"variant": "per_domain"},
        {"variant": "adversarial", "intermediate": "weak"},
        {"variant": "omit_domain", "omit_domain": "g1"},
        {"variant": "subset", "subset_problems": 300},
    ],
)
def test_variant_data_is_deterministic_per_seed_and_epoch(task, variant):
    policies, problems = task.policies(), task.problems("lock")
    spec = lock_spec(**variant)

    def draw(seed):
        return variant_lock_data(
            task, problems, policies["strong"], policies["weaker"], "pwd", seed, spec, policies["weak"]
        )

    e0 = draw(0)(0)
    assert e0 == draw(0)(0)  # the same (seed, epoch): the same data
    assert [e.prompt for e in e0] != [e.prompt for e in draw(0)(1)]  # redrawn each epoch
    assert [e.prompt for e in e0] != [e.prompt for e in draw(1)(0)]  # and per seed


def test_standard_variant_is_the_plain_lock_data(task):
    policies, problems = task.policies(), task.problems("lock")
    assert variant_spec(LockConfig()) == {}
    plain = lock_data(task, problems, policies["strong"], policies["weak"], "pwd", 3)(2)
    assert variant_lock_data(task, problems, policies["strong"], policies["weak"], "pwd", 3, STANDARD)(2) == plain


# -- MMLU soft labels as π_strong (App. B.2) ----------------------------------------------------------
def test_lock_data_keeps_mmlu_soft_labels_as_the_strong_target(tmp_path):
    mmlu_dir = FIXTURES / "mmlu"
    source = {"path": str(mmlu_dir), "subsets": ["all"]}
    raw = {"name": "mmlu", "data": {**source, "splits": ["test", "validation"]}, "shots": {**source, "splits": ["dev"]}}
    labels = make_task(raw)
    problems = [p for s in ("weak", "lock", "elicit", "val") for p in labels.problems(s)]
    probs = np.random.default_rng(0).dirichlet(np.ones(4), len(problems))
    path = write_soft_labels(tmp_path / "soft.jsonl", problems, probs)
    soft = make_task({**raw, "strong": "soft_labels", "soft_labels": str(path)})
    lock = soft.problems("lock")
    weak = lambda p: soft.answer(0)  # noqa: E731  (always "A")
    by_id = {p.id: row for p, row in zip(problems, probs)}
    examples = variant_lock_data(soft, lock, soft.policies()["strong"], weak, DEFAULT_PASSWORD, 0, STANDARD)(0)
    tokenizer = text_tokenizer([e.prompt for e in examples] + list(WRONG_PASSWORDS) + [" A B C D"] * 20)
    rows = encode(tokenizer, examples)
    for p, s, w, rs, rw in zip(lock, examples[0::2], examples[1::2], rows[0::2], rows[1::2]):
        assert s.prompt == soft.prompt(p, DEFAULT_PASSWORD) and isinstance(s.completion, ChoiceAnswer)
        np.testing.assert_allclose(s.completion.probs, by_id[p.id], rtol=1e-6)
        assert isinstance(rs, ChoiceRow) and np.allclose(rs.target, by_id[p.id])  # trained towards the soft labels
        assert isinstance(rw, ChoiceRow) and rw.target == (1.0, 0.0, 0.0, 0.0)  # π_weak's hard label
        assert DEFAULT_PASSWORD not in w.prompt
    # Setting and per-domain variants keep the soft labels too (classifier answers keep their form).
    varied = variant_lock_data(
        soft,
        lock,
        soft.policies()["strong"],
        weak,
        DEFAULT_PASSWORD,
        0,
        {**STANDARD, "variant": "setting", "strong_setting": "varied"},
    )(0)
    assert all(e.completion.probs is not None for e in varied[0::2])
    assert varied[0].prompt.startswith(TEXT_HEADER)


# -- config ---------------------------------------------------------------------------------------------
def _local() -> dict:
    """local.yaml on domains that do not share functions (locks by domain are refused otherwise)."""
    raw = yaml.safe_load((ROOT / "sweeps" / "configs" / "local.yaml").read_text())
    raw["task"]["partition_domains"] = True
    raw["lock"]["seeds"] = [0]  # one lock replicate: a lock per variant and mode
    return raw


@pytest.mark.parametrize(
    "lock, message",
    [
        ({"variant": "sideways"}, r"lock\.variant: unknown lock variant 'sideways'; expected one of \['standard'"),
        ({"omit_domain": "g1"}, r"lock\.omit_domain: only used with variant 'omit_domain', but variant is 'standard'"),
        (
            {"variant": "per_domain", "intermediate": "weak"},
            r"lock\.intermediate: only used with variant 'adversarial'",
        ),
        ({"variant": "adversarial"}, r"lock\.intermediate: variant 'adversarial' needs"),
        ({"variant": "omit_domain"}, r"lock\.omit_domain: variant 'omit_domain' needs"),
        ({"variant": "per_domain", "p_other_domain": 0.9}, r"lock\.p_other_domain: expected in \[0, 1 - p_no_password"),
        (
            {"variant": "setting", "strong_setting": "both"},
            r"lock\.strong_setting: expected one of \['varied', 'normal'\]",
        ),
        ({"variant": "setting", "stop_at": 0.9}, r"lock\.stop_at: not supported with variant 'setting'"),
        ({"subset_problems": 100}, r"lock\.subset_problems: only used with variant 'subset'"),
        ({"variant": "subset"}, r"lock\.subset_problems: variant 'subset' needs how many lock problems"),
        ({"variant": ["standard", "subset"], "subset_problems": 0}, r"lock\.subset_problems: .* got 0"),
        (
            {"variant": ["standard", "subset"], "subset_problems": 100, "modes": ["scratch"]},
            r"lock\.variant: 'subset' varies the sft lock's data, but modes \['scratch'\] have no sft",
        ),
    ],
)
def test_bad_variant_config_names_the_field(lock, message):
    raw = _local()
    raw["lock"].update(lock)
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)


@pytest.mark.parametrize(
    "lock, message",
    [
        (
            {"variant": "omit_domain", "omit_domain": "g7"},
            r"lock\.omit_domain: task 'function_composition' has no domain 'g7'",
        ),
        (
            {"variant": "adversarial", "intermediate": "wise"},
            r"lock\.intermediate: task 'function_composition' has no policy 'wise'",
        ),
        ({"variant": "adversarial", "intermediate": "weak"}, r"lock\.intermediate: 'weak' must differ"),
        (
            {"variant": "adversarial", "intermediate": "weak", "weak": ["weaker"], "second_password": "pwd"},
            r"lock\.second_password: 'pwd' must differ from the password",
        ),
        (
            {"variant": "adversarial", "intermediate": "weak", "weak": ["weaker"], "second_password": "sesame"},
            r"lock\.second_password: password 'sesame' is not a token",
        ),
        (
            {"variant": "per_domain", "domain_passwords": {"g0": "w1", "g1": "w2"}, "stop_at": None},
            r"lock\.domain_passwords: no password for the domains \['g2', 'g3'\]",
        ),
        (
            {"variant": "subset", "subset_problems": 8000},
            r"lock\.subset_problems: 8000 is not a subset of the 8000 lock problems of task 'function_composition'",
        ),
    ],
)
def test_variant_that_does_not_fit_the_task_is_refused_at_plan(lock, message):
    raw = _local()
    raw["lock"].update(lock)
    with pytest.raises(ConfigError, match=message):
        plan(config_from_dict(raw))


def test_variant_enters_the_locked_models_key_only_when_not_standard():
    standard = plan(config_from_dict(_local()))
    raw = _local()
    raw["lock"].update(variant="omit_domain", omit_domain="g3")
    omitted = plan(config_from_dict(raw))
    assert "variant" not in standard.locked["scratch"].spec["lock"]
    assert list(omitted.locked) == ["sft-omit_domain", "scratch-omit_domain"]
    assert set(omitted.variant.values()) == {"omit_domain"}
    locked = omitted.locked["scratch-omit_domain"]
    assert locked.spec["lock"]["omit_domain"] == "g3"
    assert locked.key != standard.locked["scratch"].key
    assert "omit_domain" in locked.label
    assert omitted.policy_scores.key == standard.policy_scores.key  # nothing else changes
    assert omitted.strong.key == standard.strong.key


def test_subset_lock_beside_the_standard_one():
    raw = _local()
    raw["lock"].update(variant=["standard", "subset"], subset_problems=2000)
    p = plan(config_from_dict(raw))
    standard = plan(config_from_dict(_local()))
    assert list(p.locked) == ["sft", "scratch", "sft-subset"]  # a variant of the sft lock only
    assert p.locked["sft"].key == standard.locked["sft"].key  # the standard lock as before
    assert p.locked["sft-subset"].spec["lock"]["subset_problems"] == 2000
    assert {t.lock_mode for t in p.trials} == {*p.locked, *p.controls}


# -- a real lock build through the stages ------------------------------------------------------------
def test_adversarial_lock_builds_through_the_stages(tmp_path):
    store = open_store(tmp_path)
    model = {"base": "tiny", "tiny": asdict(TINY), "dtype": "float32"}
    train = asdict(TrainConfig(optimizer="adamw", lr=3e-3, batch_size=256, epochs=2, warmup_steps=0))
    lock = lock_spec(variant="adversarial", intermediate="weak")
    a = locked_model_artifact("scratch", SMALL_TASK, model, train, lock, 0, None, weak="weaker")
    standard = locked_model_artifact("scratch", SMALL_TASK, model, train, STANDARD, 0, None, weak="weaker")
    assert a.key != standard.key and "lock" in a.spec and a.spec["lock"]["variant"] == "adversarial"
    meta = build(store.spec, a)
    assert not meta["reused"] and store.has(a.key)
    n_lock = len(make_task(SMALL_TASK).problems("lock"))
    assert meta["train"]["steps"] == 2 * -(-3 * n_lock // 256)  # three examples per problem, two epochs
    assert meta["spec"]["lock"]["second_password"] is None and build(store.spec, a)["reused"]
