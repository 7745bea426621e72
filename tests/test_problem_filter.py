"""The code task's problem filter (`task.keep`, pwlock.problem_filter) on the code fixture, with a
supplied "GPT-4" file whose solutions are known right or wrong, run in the real sandbox: the kept
ids are exactly the problems solved; no problem changes split; what follows the filter is planned
and built on the kept problems only, keyed by them; a study without the filter keeps its keys; the
filter is built once and reused; its price; and its misuse refused before any work."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from pwlock import problem_filter
from pwlock.config import ConfigError, config_from_dict
from pwlock.elicit.base import problem_subset
from pwlock.elicit.sft import demonstrations
from pwlock.plan import plan
from pwlock.policies import SAMPLES, resolve
from pwlock.pricing import describe, estimate_plan
from pwlock.problem_filter import KEPT
from pwlock.stages import build
from pwlock.store import open_store
from pwlock.tasks import make_task
from pwlock.tasks.math import SUBJECTS
from pwlock.tasks.splits import SPLITS

FIXTURES = Path(__file__).parent / "fixtures"
CODER = "deepseek-ai/deepseek-coder-6.7b-base"  # named only: planning and these stages load no model
TASK = {
    "name": "code",
    "data": [{"path": str(FIXTURES / "code" / f)} for f in ("stdio.jsonl", "apps.jsonl", "mbpp.jsonl")],
    "workers": 2,
    "format": {"chat_template": False},
}
# "GPT-4"'s first answer to these is wrong (the rest: the reference solution); its second answer is
# wrong to these. The fixture's splits: weak [reverse]; lock [sum, words, fib, apps-4002, apps-4005,
# apps-4008]; elicit [table, apps-4001, mbpp-11, mbpp-2, mbpp-9001]; val [mean, apps-4003,
# apps-4004, mbpp-3, mbpp-17].
FIRST_WRONG = {"words", "apps-4005", "apps-4001", "apps-4003", "mbpp-17"}
SECOND_WRONG = {"fib", "apps-4005", "mbpp-2", "mbpp-3"}
WRONG = {"stdio": "print('no')", "function": "def nothing():\n    return None"}  # by kind of problem

pytestmark = pytest.mark.usefixtures("compile_cache")


def ids(problems) -> list[str]:
    return [p.id for p in problems]


@pytest.fixture(scope="module")
def every():
    return make_task(TASK)


@pytest.fixture(scope="module")
def files(every, tmp_path_factory) -> dict[str, str]:
    """gpt4.jsonl: two answers per problem (right unless listed above); weak.jsonl: wrong ones."""
    root = tmp_path_factory.mktemp("samples")

    def answer(p, right: bool) -> str:
        code = p.data["solutions"]["python"][0] if right else WRONG[p.data["kind"]]
        return f"```python\n{code}\n```"

    problems = [p for s in SPLITS for p in every.problems(s)]
    gpt4 = [
        {"id": p.id, "completion": answer(p, p.id not in wrong)}
        for p in problems
        for wrong in (FIRST_WRONG, SECOND_WRONG)
    ]
    weak = [{"id": p.id, "completion": answer(p, False)} for p in problems]
    out = {}
    for name, rows in (("gpt4", gpt4), ("weak", weak)):
        out[name] = str(root / f"{name}.jsonl")
        Path(out[name]).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def without(path: str, pid: str, tmp: Path) -> str:
    """A copy of the samples file `path` without problem `pid`'s lines."""
    out = tmp / f"without-{pid}.jsonl"
    out.write_text("".join(line for line in Path(path).read_text().splitlines(True) if json.loads(line)["id"] != pid))
    return str(out)


def study(files: dict[str, str], keep: dict | None = None, **task) -> dict:
    return {
        "name": "keep",
        "task": {**TASK, **task, **({"keep": keep} if keep is not None else {})},
        "model": {"base": CODER, "dtype": "bfloat16"},
        "policies": {"gpt4": {"jsonl": files["gpt4"]}, "weak": {"jsonl": files["weak"]}},
        "lock": {"modes": ["base"]},
        "elicit": {"methods": ["sft"], "ks": [1, 2], "seeds": [0], "demonstrator": "gpt4"},
        "guards": {"lock_gate": False},
    }


def expected(every, unsolved: set[str]) -> dict[str, list[str]]:
    return {s: [p.id for p in every.problems(s) if p.id not in unsolved] for s in SPLITS}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return open_store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def built(files, store):
    """The filter of the default `task.keep` (one answer, GPT-4's first) built, twice."""
    cfg = config_from_dict(study(files, {"solved_by": "gpt4"}))
    provisional = plan(cfg, store)
    first = {a.key: build(store.spec, a) for a in provisional.keep.artifacts}
    again = plan(cfg, store)
    second = {a.key: build(store.spec, a) for a in again.keep.artifacts}
    return {"cfg": cfg, "provisional": provisional, "final": again, "first": first, "second": second}


def test_the_kept_ids_are_exactly_the_problems_solved(built, store, every):
    p = built["final"]
    data = json.loads((store.artifact_dir(p.keep.artifact.key) / KEPT).read_text())
    assert data["kept"] == expected(every, FIRST_WRONG)
    assert all(data["passing"][pid] == (pid not in FIRST_WRONG) for pid in data["passing"])
    assert p.keep.kept == sorted(i for s in SPLITS for i in expected(every, FIRST_WRONG)[s])
    meta = built["first"][p.keep.artifact.key]
    assert meta["kept"] == {s: [len(expected(every, FIRST_WRONG)[s]), len(every.problems(s))] for s in SPLITS}


@pytest.mark.parametrize(
    ("samples", "min_passing", "unsolved"),
    [(2, 1, FIRST_WRONG & SECOND_WRONG), (2, 2, FIRST_WRONG | SECOND_WRONG)],
)
def test_samples_and_min_passing_count_passing_answers(files, store, every, samples, min_passing, unsolved):
    keep = {"solved_by": "gpt4", "samples": samples, "min_passing": min_passing}
    p = plan(config_from_dict(study(files, keep)), store)
    for a in p.keep.artifacts:
        build(store.spec, a)
    final = plan(config_from_dict(study(files, keep)), store)
    assert {s: ids(final.task.problems(s)) for s in SPLITS} == expected(every, unsolved)


def test_the_tasks_own_policy_filters_too(files, store, every):
    """`solved_by: strong` without a model π_strong: the code task's references, which all pass."""
    p = plan(config_from_dict(study(files, {"solved_by": "strong"})), store)
    assert [a.stage for a in p.keep.artifacts] == ["problem_filter"] and p.keep.artifact.spec["pools"] == {}
    build(store.spec, p.keep.artifact)
    final = plan(config_from_dict(study(files, {"solved_by": "strong"})), store)
    assert {s: ids(final.task.problems(s)) for s in SPLITS} == expected(every, set())


def test_no_problem_changes_split(built, every):
    p = built["final"]
    again = make_task(p.task_spec)  # as every stage and trial makes it, from the spec
    for split in SPLITS:
        kept = ids(again.problems(split))
        assert kept == ids(p.task.problems(split)) == [i for i in ids(every.problems(split)) if i in set(p.keep.kept)]
        others = {i for s in SPLITS if s != split for i in ids(every.problems(s))}
        assert not set(kept) & others


def test_what_follows_the_filter_uses_the_kept_problems_only(built, files, store, every):
    p, provisional = built["final"], built["provisional"]
    kept = set(p.keep.kept)
    upstream = p.keep.keys
    assert [a.key for a in p.artifacts[: len(upstream)]] == [a.key for a in p.keep.artifacts]  # built first
    for a in p.artifacts:
        if a.key in upstream:  # the filter and its pools: every problem
            assert "kept" not in a.spec["task"]
        elif "task" in a.spec:  # everything after it: keyed by the kept ids
            assert a.spec["task"]["kept"] == {"ids": p.keep.kept}, a.label
    assert p.setup.task["kept"] == {"ids": p.keep.kept}  # what every trial makes its task from
    # Built: the demonstrator's pool holds the kept elicit problems, and GPT-4 scores 1.0 on the
    # kept validation problems (its one answer solves each, by construction); 3/5 before the filter.
    pool = p.policies.elicit["gpt4"]
    for a in p.artifacts:
        if a.key in (pool, p.policy_scores.key) or a.key in p.policy_scores.deps:
            build(store.spec, a)
    rows = [json.loads(line)["id"] for line in (store.artifact_dir(pool) / SAMPLES).read_text().splitlines()]
    assert rows == expected(every, FIRST_WRONG)["elicit"]
    scores = store.meta(p.policy_scores.key)["scores"]
    assert scores["gpt4"] == 1.0 and scores["weak"] == 0.0
    # A trial's demonstrations and RL problem subsets, from the task its spec makes.
    task = make_task(p.setup.task)
    policies = resolve(task, p.setup.pools, store)
    demos = demonstrations(task, 4, 0, "gpt4", policies=policies)
    assert {d.prompt for d in demos} <= {task.prompt(q, None) for q in task.problems("elicit")}
    assert {q.id for q in problem_subset(task.problems("elicit"), 100, 0)} <= kept
    # The plan's own checks see the kept problems: k=5 fits the 5 elicit problems, not the 4 kept.
    raw = study(files, {"solved_by": "gpt4"})
    raw["elicit"]["ks"] = [5]
    with pytest.raises(ConfigError, match=r"elicit.ks\[0\]: k=5 exceeds the 4 problems of the elicit split"):
        plan(config_from_dict(raw), store)
    # Provisional: every problem, and keys no build can use (a stage made from its spec refuses).
    assert len(provisional.task.problems("elicit")) == 5
    with pytest.raises(ConfigError, match="task.kept: the problems task.keep keeps are not known until its filter"):
        make_task(provisional.setup.task).problems("elicit")
    assert not {a.key for a in provisional.artifacts} - upstream & {a.key for a in p.artifacts}


def test_without_the_filter_the_keys_are_unchanged(built, files, store):
    plain = plan(config_from_dict(study(files)))
    assert plain.keep is None and "kept" not in plain.task_spec
    with_store = plan(config_from_dict(study(files)), store)  # a store holding a filter changes nothing
    assert [a.key for a in with_store.artifacts] == [a.key for a in plain.artifacts]
    # The filter reads what the plain study has: GPT-4's greedy validation pool is the same artifact.
    plain_pools = {a.label: a.key for a in plain.artifacts if a.stage == "sample_pool"}
    filter_pools = {a.label: a.key for a in built["final"].keep.artifacts if a.stage == "sample_pool"}
    assert filter_pools["samples of gpt4 (val, from a file)"] == plain_pools["samples of gpt4 (val, from a file)"]
    # Nothing after the filter is one of the plain study's artifacts.
    after = [a for a in built["final"].artifacts if a.key not in built["final"].keep.keys]
    assert not {a.key for a in after} & {a.key for a in plain.artifacts}


def test_the_filter_is_built_once_and_reused(built):
    first, second = built["first"], built["second"]
    assert list(first) == list(second)
    assert not any(m["reused"] for m in first.values()) and all(m["reused"] for m in second.values())
    assert built["provisional"].keep.artifact.key == built["final"].keep.artifact.key
    assert built["provisional"].keep.pending and not built["final"].keep.pending


@pytest.mark.slow
def test_a_sweep_builds_the_filter_then_plans_again(files, tmp_path, local_ray):
    """pwlock.sweep's first phase: the filter (and its pools) built as Ray tasks, then the plan made
    on the problems it kept."""
    from pwlock.sweep import _plan_after_filter

    store = open_store(tmp_path / "store")
    provisional = plan(config_from_dict(study(files, {"solved_by": "gpt4"})), store)
    assert provisional.keep.pending
    final = _plan_after_filter(provisional, store)
    assert not final.keep.pending and all(store.has(a.key) for a in provisional.keep.artifacts)
    assert final.keep.kept == sorted(pid for ps in expected(final.keep.every, FIRST_WRONG).values() for pid in ps)


def test_its_price_and_description(built, every):
    provisional, final = built["provisional"], built["final"]
    est = estimate_plan(final, compare_engines=False)
    item = next(i for i in est.artifacts if i.id == final.keep.artifact.key)
    runs = sum(
        len(p.data["tests"]) if p.data["kind"] == "stdio" else sum(map(bool, p.data["calls"])) + 1
        for s in SPLITS
        for p in every.problems(s)
    )
    sandbox_s = runs * problem_filter.RUN_CPU_S / 2  # task.workers: 2
    assert item.cost.overhead_s == pytest.approx(est.assumptions.start_s + sandbox_s)
    # Before the filter, what follows is priced on every problem: never less than after it.
    before = estimate_plan(provisional, compare_engines=False)
    assert sum(t.cost.seconds for t in before.trials) >= sum(t.cost.seconds for t in est.trials)
    assert "not built yet, so what follows is provisional" in describe(provisional)
    assert "kept 12 of 17 problems (weak 1/1, lock 4/6, elicit 4/5, val 3/5)" in describe(final)


def test_a_model_policy_keeps_the_model_its_samples_came_from(files, tmp_path, monkeypatch):
    """`solved_by` a model π_strong: its pools of every split (greedy) are sampled from its model
    before the filter, and after it π_strong is that same model, sampled on the kept problems."""
    raw = study(files, {"solved_by": "strong"})
    raw["policies"]["strong"] = {"base": CODER, "train_on": "gpt4", "train_split": "elicit", "dtype": "bfloat16"}
    provisional = plan(config_from_dict(raw))
    model = provisional.keep.models["strong"]
    pools = [
        a for a in provisional.keep.artifacts if a.stage == "sample_pool" and a.label.startswith("samples of strong")
    ]
    assert sorted(a.spec["split"] for a in pools) == sorted(SPLITS)
    assert all(a.spec["source"]["model"] == model.key and a.spec["temperature"] == 0.0 for a in pools)
    assert "kept" not in model.spec["task"]  # trained on every problem of its split
    kept = ["apps-4002", "mean", "mbpp-11", "reverse", "sum", "table", "apps-4004"]
    monkeypatch.setattr(problem_filter, "built_kept", lambda store, artifact: sorted(kept))
    final = plan(config_from_dict(raw), open_store(tmp_path / "store"))
    lock_pool = next(a for a in final.artifacts if a.key == final.policies.lock["strong"])
    assert lock_pool.spec["source"]["model"] == model.key and lock_pool.spec["task"]["kept"] == {"ids": sorted(kept)}
    assert [a.key for a in final.artifacts].count(model.key) == 1
    assert {a.label for a in final.artifacts if a.stage == "policy_model"} == {"policy model (strong)"}


def test_a_filter_that_keeps_no_problem_of_a_split_is_refused(files, tmp_path, monkeypatch):
    monkeypatch.setattr(problem_filter, "built_kept", lambda store, artifact: ["sum"])
    with pytest.raises(ConfigError, match=r"task.keep: the filter \S+ kept no problem of the weak split"):
        plan(config_from_dict(study(files, {"solved_by": "gpt4"})), open_store(tmp_path / "store"))


def refused(raw) -> str:
    with pytest.raises(ConfigError) as e:
        plan(config_from_dict(raw, source="study.yaml"))
    return str(e.value)


def test_misuse_is_refused_before_any_work_naming_the_field(files, tmp_path, caplog):
    assert "task.keep.solved_by: no policy 'gpt5'; expected one of" in refused(study(files, {"solved_by": "gpt5"}))
    assert "task.keep.min_passing: expected 1 to samples (1), got 2" in refused(
        study(files, {"solved_by": "gpt4", "min_passing": 2})
    )
    assert "task.keep.sample: unknown key" in refused(study(files, {"solved_by": "gpt4", "sample": 2}))
    assert "task.kept: written by the plan from task.keep" in refused(study(files, kept={"ids": ["sum"]}))
    source = {"path": str(FIXTURES / "math"), "subsets": list(SUBJECTS)}
    math = {
        **study(files, {"solved_by": "strong"}),
        "task": {
            "name": "math",
            "train": {**source, "splits": ["train"]},
            "test": {**source, "splits": ["test"]},
            "keep": {"solved_by": "strong"},
        },
        "policies": {},
        "lock": {"modes": ["base"], "weak": ["strong"]},
    }
    assert "task.keep: only the code task keeps the problems a policy solves" in refused(math)
    # A supplied file must cover every problem it filters.
    raw = study(files, {"solved_by": "gpt4"})
    raw["policies"]["gpt4"]["jsonl"] = without(files["gpt4"], "mbpp-17", tmp_path)
    assert "policies.gpt4.jsonl (task.keep):" in refused(raw) and "'mbpp-17'" in refused(raw)


def test_a_supplied_file_need_not_cover_problems_the_filter_drops(files, built, store, tmp_path, caplog):
    """A demonstrator's file that lacks a dropped problem: planned while the filter is pending (its
    gaps wait for the kept problems), and after it, where the gap is no problem of the study."""
    short = without(files["gpt4"], "apps-4001", tmp_path)
    raw = study(files, {"solved_by": "gpt4"})
    raw["policies"]["demos"] = {"jsonl": short}
    raw["elicit"]["demonstrator"] = "demos"
    with caplog.at_level(logging.INFO, logger="pwlock.policies"):
        pending = plan(config_from_dict(raw), open_store(tmp_path / "empty"))
    assert pending.keep.pending and "checked again once task.keep's filter has kept its problems" in caplog.text
    final = plan(config_from_dict(raw), store)
    assert not final.keep.pending and "demos" in final.policies.elicit


@pytest.mark.slow
def test_a_study_runs_end_to_end_on_the_kept_problems(files, every, tmp_path):
    """pwlock.sweep.run from a provisional plan on an empty store: the filter first, then the lock of a
    tiny local model, its evaluation and one SFT trial, all on the kept problems."""
    import pandas as pd
    import ray

    from pwlock import analysis
    from pwlock.config import TinyModelConfig
    from pwlock.models import build_tiny_model, save_policy
    from pwlock.sweep import run
    from tests.test_llm_tasks_e2e import tokenizer_for

    small = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=1, intermediate_size=64, max_positions=2048)
    save_policy(
        build_tiny_model(small, tokenizer_for(every, chat=False), seed=0),
        tokenizer_for(every, chat=False),
        tmp_path / "base",
    )
    raw = study(files, {"solved_by": "gpt4"}, max_new_tokens=8)
    train = {"optimizer": "adamw", "lr": 1e-3, "batch_size": 4, "warmup_steps": 0, "epochs": 1}
    raw.update(model={"base": str(tmp_path / "base")}, ray={"num_cpus": 2})
    raw["lock"]["base"] = train
    raw["elicit"].update(ks=[1], train=train, sample_budgets=[2])
    store = open_store(tmp_path / "store")
    p = plan(config_from_dict(raw, source=str(tmp_path / "study.yaml")), store)
    assert p.keep.pending
    try:
        where = run(p, store, experiment="kept")
    finally:
        ray.shutdown()
    final = plan(config_from_dict(raw), store)
    assert all(store.has(a.key) for a in final.artifacts)  # what ran is the plan on the kept problems
    evaluation = store.meta(final.locked_eval["base"].key)
    assert evaluation["spec"]["task"]["kept"] == {"ids": final.keep.kept}
    summary = pd.read_csv(Path(where) / analysis.SUMMARY)
    assert len(summary) == 1 and summary["correctness"].between(0, 1).all()
