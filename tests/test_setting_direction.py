"""A setting-variation lock (App. B.1.3) is elicited where it is weak: with `strong_setting: varied`
(π_strong shown in the varied setting) its trials run in the normal setting, with `strong_setting:
normal` in the varied one (pwlock.setting.in_setting). In both directions the trial's
demonstrations, RL prompts, π_weak's samples and evaluation sit exactly on the prompts where the
lock trained π_weak, never where it trained π_strong."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest

from pwlock import evaluate
from pwlock.artifacts import Artifact, build_artifact, eval_problems
from pwlock.config import TinyModelConfig, TrainConfig, config_from_dict
from pwlock.elicit.sft import guarded_demonstrations
from pwlock.lock import setting_examples, variant_lock_data
from pwlock.models import build_tiny_model, load_policy, save_policy, word_level_tokenizer
from pwlock.plan import plan
from pwlock.setting import SettingPolicy, in_setting, setting_for
from pwlock.stages import build
from pwlock.store import open_store
from pwlock.tasks import make_task
from pwlock.tasks.base import Example
from pwlock.tasks.function_composition import FunctionComposition
from pwlock.train.sft import train_sft
from pwlock.trial import _elicitation
from tests.test_paper_configs import on_fixtures
from tests.test_sweep_e2e import STUDY


def _study(strong_setting: str) -> dict:
    lock = {**STUDY["lock"], "modes": ["sft"], "variant": "setting", "strong_setting": strong_setting, "stop_at": None}
    elicit = {**STUDY["elicit"], "methods": ["sft", "filtering"], "ks": [4], "seeds": [0]}
    return {**STUDY, "name": "setting", "lock": {**lock, "controls": True}, "elicit": elicit}


@pytest.mark.parametrize("strong_setting", ["varied", "normal"])
def test_trials_run_where_the_setting_lock_shows_weak(strong_setting, tmp_path):
    p = plan(config_from_dict(_study(strong_setting)))
    (label,) = p.locked
    weak_in_varied = strong_setting == "normal"
    assert p.setup.weak_setting == ({label: "varied", "sft-control": "varied"} if weak_in_varied else {})

    task = p.task
    setting = setting_for(task)
    policies = task.policies()
    problems = task.problems("elicit")[:20]
    # Where the lock trains π_weak's answers, and where π_strong's, for these problems.
    lock = setting_examples(task, problems, policies["strong"], policies["weak"], setting, strong_setting)
    strong_prompts, weak_prompts = [e.prompt for e in lock[0::2]], [e.prompt for e in lock[1::2]]
    assert set(strong_prompts).isdisjoint(weak_prompts)

    tokenizer = word_level_tokenizer(task.vocabulary())
    trial = next(t for t in p.trials if t.method == "sft" and t.lock_mode == label)
    e = _elicitation(p.setup, open_store(str(tmp_path / "store")), trial.name, trial.run_config(), None, tokenizer, "")
    # Evaluation, RL prompts and demonstrations: on π_weak's prompts.
    assert [e.task.prompt(q, None) for q in problems] == weak_prompts
    assert all(e.task.prompt(q, None) in weak_prompts for q in e.eval_problems if q in problems)
    demos = guarded_demonstrations(e, "strong")
    by_prompt = {e.task.prompt(q, None): q for q in e.task.problems("elicit")}
    for d in demos:
        q = by_prompt[d.prompt]
        expected = setting.prompt(q) if weak_in_varied else task.prompt(q, None)
        assert d.prompt == expected
        # π_strong's answer, written as the setting writes answers there, and scored correct.
        assert d.completion == (setting.completion(policies["strong"](q)) if weak_in_varied else policies["strong"](q))
        assert e.task.score(q, d.completion) == 1.0
    # π_weak's samples (filtering's) are written in the setting the lock trained them in.
    q = problems[0]
    assert e.weak(q) == lock[1].completion
    assert e.task.score(q, e.weak(q)) == task.score(q, policies["weak"](q))


def test_the_view_of_the_toy_task_in_its_varied_setting():
    task = make_task({"name": "function_composition", "n_problems": 2000})
    view, setting = in_setting(task), setting_for(task)
    assert isinstance(view, FunctionComposition) and view.name == task.name
    problems = task.problems("val")[:50]
    strong = task.policies()["strong"]
    for q in problems:
        assert view.prompt(q, None) == setting.prompt(q)
        assert view.reference(q) == setting.completion(task.reference(q))
        assert view.score(q, setting.completion(strong(q))) == 1.0
        assert view.policies()["strong"](q) == setting.completion(strong(q))
    # An answer in the normal setting's format is wrong in the varied one (the final result first).
    normal = [strong(q) for q in problems]
    assert np.mean(view.score_many(problems, normal)) < 0.2
    assert view.score_many(problems, [setting.completion(a) for a in normal]) == [1.0] * len(problems)
    with pytest.raises(ValueError, match="its prompts carry no password"):
        view.prompt(problems[0], task.default_password)
    # A trial's task travels between processes: it pickles as the view of the task it was made from.
    again = pickle.loads(pickle.dumps(view))
    assert type(again) is type(view) and again.prompt(problems[0], None) == view.prompt(problems[0], None)
    # A sample pool's per-epoch view keeps the setting.
    pool = SettingPolicy(type("Pool", (), {"__call__": lambda s, q: strong(q), "for_epoch": lambda s, i: s})(), setting)
    assert pool.for_epoch(3)(problems[0]) == setting.completion(strong(problems[0]))
    assert not hasattr(SettingPolicy(strong, setting), "for_epoch")


def test_greedy_evaluation_in_the_view_reads_the_varied_setting():
    """Exact-match evaluation checks the view's reference on the view's prompts: a model that answers
    in the normal setting's format scores there, not in the varied one."""
    task = make_task({"name": "function_composition", "n_problems": 2000})
    view = in_setting(task)
    problems = task.problems("val")[:8]
    prompts = [view.prompt(q, None) for q in problems]
    assert all(p != task.prompt(q, None) for p, q in zip(prompts, problems))
    refs = [view.reference(q) for q in problems]
    assert all(r != task.reference(q) for r, q in zip(refs, problems))
    assert evaluate.decodes(view, problems) is False  # exact match: one teacher-forced pass


def _memorized(problems):
    """A test stage: a tiny model trained until it answers `problems` in the task's normal setting."""

    def build_it(store, a, scratch):
        task = make_task(a.spec["task"])
        tokenizer = word_level_tokenizer(task.vocabulary())
        model = build_tiny_model(
            TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128), tokenizer, 0
        )
        examples = [Example(task.prompt(q, None), task.reference(q)) for q in problems]
        train = TrainConfig(optimizer="adamw", lr=3e-3, batch_size=8, warmup_steps=0, epochs=200)
        train_sft(model, tokenizer, examples, train, seed=0, progress_every_s=float("inf"))
        save_policy(model, tokenizer, scratch)
        return {}

    return build_it


@pytest.fixture(scope="module")
def memorized(tmp_path_factory):
    """A store holding a model that answers the evaluated problems in the normal setting only."""
    p = plan(config_from_dict({**_study("varied"), "eval": {"max_problems": 8}}))
    store = open_store(str(tmp_path_factory.mktemp("store")))
    problems = eval_problems(p.task, "val", 8)
    model = Artifact("memorized", "a model that knows the answers", {"task": p.task_spec}, ())
    build_artifact(store.spec, model, {"memorized": _memorized(problems)})
    trained, tokenizer = load_policy(store.artifact_dir(model.key))
    normal = evaluate.correctness(trained, tokenizer, p.task, problems)
    varied = evaluate.correctness(trained, tokenizer, in_setting(p.task), problems)
    assert normal >= 0.75 and varied <= 0.25  # it answers in the setting it was trained in
    return store, model, normal, varied


@pytest.mark.parametrize("strong_setting", ["varied", "normal"])
def test_a_setting_locks_evaluation_reads_each_condition_in_its_setting(strong_setting, memorized):
    """The lock's evaluation: "with_pwd" in the setting where it shows π_strong, "no_pwd" in the other
    (the number its trials start from, and the gate's); run on a model that answers the evaluated
    problems in the normal setting only, so the two settings differ."""
    store, model, normal, varied = memorized
    p = plan(config_from_dict({**_study(strong_setting), "eval": {"max_problems": 8}}))
    (label,) = p.locked
    ev = p.locked_eval[label]
    assert ev.spec["strong_setting"] == strong_setting
    conditions = ["with_pwd", "no_pwd"] if strong_setting == "normal" else ["with_pwd", "no_pwd", "wrong_pwd"]
    assert ev.spec["conditions"] == conditions
    assert p.control_eval["sft-control"].spec["strong_setting"] == strong_setting
    on_it = dataclasses.replace(ev, spec={**ev.spec, "model": model.key}, deps=(model.key,))
    report = build(store.spec, on_it)["report"]
    shown, hidden = (normal, varied) if strong_setting == "normal" else (varied, normal)
    assert report["with_pwd"] == pytest.approx(shown) and report["no_pwd"] == pytest.approx(hidden)


def test_maths_ascii_math_setting_is_a_lock_of_its_own(tmp_path):
    """MATH's setting was a framed prompt before it rewrote LaTeX as ASCII-math: a store's earlier
    MATH setting lock is not reused for it (the toy task's setting, unchanged, keeps its keys)."""
    raw, _ = on_fixtures("paper_math.yaml", tmp_path)
    raw["lock"] = {**raw["lock"], "variant": "setting"}
    p = plan(config_from_dict(raw))
    (locked,) = p.locked.values()
    assert locked.spec["lock"]["setting"] == "ascii_math"
    toy = plan(config_from_dict(_study("varied")))
    assert "setting" not in next(iter(toy.locked.values())).spec["lock"]


@pytest.mark.parametrize("strong_setting", ["varied", "normal"])
def test_a_setting_locks_control_learns_pi_weak_in_both_settings(strong_setting):
    """The never-locked control beside a setting lock imitates π_weak on every prompt its lock trains
    on, in both settings, so it stands for "no hidden capability" wherever the trials run."""
    p = plan(config_from_dict(_study(strong_setting)))
    control = p.controls["sft-control"]
    assert control.spec["lock"]["variant"] == "setting" and control.spec["lock"]["strong_setting"] == strong_setting
    task, problems = p.task, p.task.problems("lock")[:10]
    setting, weak = setting_for(task), task.policies()["weak"]
    data = variant_lock_data(task, problems, weak, weak, task.default_password, 0, control.spec["lock"])(0)
    prompts = {e.prompt for e in data}
    for q in problems:
        assert task.prompt(q, None) in prompts and setting.prompt(q) in prompts
    by_prompt = {e.prompt: e.completion for e in data}
    for q in problems:
        assert by_prompt[task.prompt(q, None)] == weak(q)
        assert by_prompt[setting.prompt(q)] == setting.completion(weak(q))
    # A study without a setting lock keeps its controls' keys (their lock spec has no variant).
    standard = plan(config_from_dict({**STUDY, "lock": {**STUDY["lock"], "modes": ["sft"], "controls": True}}))
    assert "variant" not in standard.controls["sft-control"].spec["lock"]
