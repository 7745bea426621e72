"""A setting-variation lock (App. B.1.3) is elicited where it is weak: with `strong_setting: varied`
(π_strong shown in the varied setting) its trials run in the normal setting, with `strong_setting:
normal` in the varied one (pwlock.setting.in_setting). In both directions the trial's
demonstrations, RL prompts, π_weak's samples and evaluation sit exactly on the prompts where the
lock trained π_weak, never where it trained π_strong."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from pwlock import evaluate
from pwlock.config import config_from_dict
from pwlock.elicit.sft import guarded_demonstrations
from pwlock.lock import setting_examples
from pwlock.models import word_level_tokenizer
from pwlock.plan import plan
from pwlock.setting import SettingPolicy, in_setting, setting_for
from pwlock.store import open_store
from pwlock.tasks import make_task
from pwlock.tasks.function_composition import FunctionComposition
from pwlock.trial import _elicitation
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
