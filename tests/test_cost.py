"""The cost model: exact prices on hand-computable work, artifacts in the store at cost 0, the
plan printed by --dry-run (nothing trained or written); a study description priced as its configs'
plans (a task at a given size, its data unread), the paper's study priced, bad descriptions refused
with the field named; a vLLM engine's decoding rate from its settings, locked models'
lengths, weight syncs, and trials that do not fit their GPU refused with the numbers."""

from __future__ import annotations

import copy
import dataclasses
import math
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from pwlock import description
from pwlock.cli import cost_main as main
from pwlock.config import ConfigError, VLLMConfig, config_from_dict, load_config, read_yaml
from pwlock.cost import KNOWN_ARCHS, KNOWN_PARAMS, Assumptions, DoesNotFit, Engine, Model, Pricer, Tokens, dpo_pairs
from pwlock.plan import plan
from pwlock.pricing import estimate_plan, evaluation_of, model_of, task_tokens
from pwlock.stages import build, eval_problems
from pwlock.store import open_store
from pwlock.tasks import make_task
from pwlock.tasks.math import MathTask
from pwlock.tasks.sized import TaskSize, is_sized
from pwlock.tasks.splits import SPLITS

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "sweeps" / "configs"
PAPER = CONFIGS / "paper.yaml"

# Round numbers: a 7e9-parameter model trains at 1 ms per token (6N / (0.5 × 8.4e13)), a forward
# pass costs a third of that, vLLM decodes 100 tokens/s (the fixed what-if figure), loading its
# 14 GB takes 1 s, saving 2 s, and a weight sync 1 + 1 s.
SIMPLE = dict(
    peak_flops=8.4e13,
    mfu=((7e9, 0.5),),
    step_floor_s=((7e9, 1e-9),),
    vllm_tok_s=100.0,
    max_generate_tok_s=1e9,
    evaluation_engine="vllm",
    start_s=10.0,
    engine_start_s=20.0,
    load_gb_s=14.0,
    save_gb_s=7.0,
    sync_gb_s=14.0,
    sync_s=1.0,
)


def paper_sizes() -> dict[str, TaskSize]:
    """The paper's text tasks at their size (sweeps/configs/paper.yaml's `sizes:`)."""
    return description.load(PAPER).sizes


def sized_plan(name: str, mutate=None, sizes: dict | None = None):
    """A shipped config planned as paper.yaml plans it: its task at the paper's size, its data unread."""
    raw = yaml.safe_load((CONFIGS / name).read_text())
    if mutate is not None:
        mutate(raw)
    return plan(config_from_dict(raw, source=name, data=False), sizes=sizes or paper_sizes())


TOY_FIGURES = [
    {"id": "f6", "title": "F6", "sweep": "from_scratch", "configs": ["paper_toy.yaml"]},
    {"id": "f13", "title": "F13", "sweep": "sample_efficiency", "configs": ["paper_toy_weak.yaml"]},
]


def tiny_description(tmp_path: Path, **fields) -> Path:
    """A description of the two toy paper configs (copied beside it; their data is generated, so it
    gives no sizes), with `fields` added or replaced."""
    for name in ("paper_toy.yaml", "paper_toy_weak.yaml"):
        shutil.copy(CONFIGS / name, tmp_path / name)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny", "figures": copy.deepcopy(TOY_FIGURES), **fields}))
    return path


def test_pricer_interpolates_mfu_and_floor_in_log_parameters():
    a = Assumptions(peak_flops=1e12, mfu=((1e9, 0.5), (1e11, 0.25)), step_floor_s=((1e9, 0.1), (1e11, 0.4)))
    # at 1e10, half-way in log N: MFU 0.375, floor 0.25 s
    assert a.step_s(1e10, 1000) == pytest.approx(max(0.25, 1000 * 6e10 / (0.375 * 1e12)))
    assert a.step_s(1e10, 1) == pytest.approx(0.25)  # the floor binds
    assert a.step_s(1e12, 10) == pytest.approx(max(0.4, 10 * 6e12 / (0.25 * 1e12)))  # held beyond the last point
    assert a.forward_batch_s(1e10, 3000) == pytest.approx(3000 * 2e10 / (0.375 * 1e12))
    assert Assumptions(vllm_tok_s=2000, max_generate_tok_s=5000).generate_tok_s(3.5e9, "vllm") == 4000
    assert Assumptions(vllm_tok_s=2000, max_generate_tok_s=5000).generate_tok_s(1e9, "vllm") == 5000
    price = Pricer(Assumptions(**SIMPLE))
    m, toks = Model(7e9), Tokens(100, 50, 50)
    # 100 examples in steps of 8: 13 steps of 1,200 tokens, 1 ms each
    assert price.train(m, 100, toks, 1, 8).train_s == pytest.approx(13 * 1.2)
    assert price.train(m, 100, toks, 3, 8).train_tokens == 3 * 100 * 150
    # 200 greedy answers of 50 tokens at 100 tok/s, plus the prompts' prefill in one batch
    ev = price.evaluate(m, 200, toks, "generate", points=2)
    assert ev.evaluate_s == pytest.approx(2 * (200 * 50 / 100 + 200 * 100 / 3000))
    assert ev.evaluated_tokens == 2 * 200 * 50
    assert price.evaluate(m, 200, toks, "classify").evaluate_s == pytest.approx(200 * 101 / 3000)
    assert price.overhead([m], [m], engine=True).overhead_s == pytest.approx(10 + 1 + 2 + 20)


def test_a_description_prices_each_configs_plan_and_a_shared_artifact_once(tmp_path):
    est = description.estimate(description.load(tiny_description(tmp_path)), compare_engines=False)
    priced = {
        fig: estimate_plan(plan(load_config(CONFIGS / name)), compare_engines=False)
        for fig, name in (("f6", "paper_toy.yaml"), ("f13", "paper_toy_weak.yaml"))
    }
    # every trial of each config's plan, under its figure, named after its config, priced as its plan
    want = {
        f"{name}/{t.id}": (fig, t.cost.seconds)
        for (fig, p), name in zip(priced.items(), ("paper_toy", "paper_toy_weak"))
        for t in p.trials
    }
    assert {t.id: (t.figures[0], t.cost.seconds) for t in est.trials} == want
    # the artifacts: each key once (Fig. 13's upstream is Fig. 6's), priced as the plans price it
    first = {}
    for p in priced.values():
        for i in p.artifacts:
            first.setdefault(i.id, i)
    assert len(first) < sum(len(p.artifacts) for p in priced.values())  # shared between the two
    assert {i.id: i.cost.seconds for i in est.artifacts} == {k: i.cost.seconds for k, i in first.items()}
    trial_h = sum(t.gpu_hours for p in priced.values() for t in p.trials)
    assert est.gpu_hours == pytest.approx(trial_h + sum(i.gpu_hours for i in first.values()))
    assert {f: [t.id for t in ts] for f, _, ts, _ in est.by_figure()} == {
        f: [k for k, (g, _) in want.items() if g == f] for f in ("f6", "f13")
    }


def test_a_task_at_a_given_size_is_planned_without_its_data():
    p = sized_plan("paper_math_category.yaml")  # MATH is not here; its size is paper.yaml's
    assert is_sized(p.task) and isinstance(p.task, MathTask)  # the task's own class: its setting, its checks
    assert {s: len(p.task.problems(s)) for s in SPLITS} == {"weak": 1500, "lock": 6000, "elicit": 3000, "val": 2000}
    shares = Counter(q.domain for q in p.task.problems("elicit"))
    assert set(shares) == {"algebra", "geometry", "numbers"}  # the grouping the config asks for
    assert shares["algebra"] / 3000 == pytest.approx(0.576, abs=0.03)
    assert task_tokens(p.task, p.task.default_password) == Tokens(150, 250, 250)  # paper.yaml's tokens
    with pytest.raises(RuntimeError, match="placeholder problems"):
        p.task.score(p.task.problems("val")[0], "42")
    # MMLU at its size is a classifier, as on its data
    assert evaluation_of(sized_plan("paper_mmlu.yaml").task) == "classify"
    # code: GPT-4's sample files are not here either; its pools are planned, keyed by the files' paths
    c = sized_plan("paper_code.yaml")
    files = {a.spec["source"]["jsonl"] for a in c.artifacts if a.stage == "sample_pool" and "jsonl" in a.spec["source"]}
    assert files == {"unread data/code_gpt4_t0.jsonl", "unread data/code_gpt4_t1.jsonl"}
    # a grouping the size does not give is refused, naming the field
    sizes = {"math": dataclasses.replace(paper_sizes()["math"], domains={"type": {"algebra": 1.0}})}
    with pytest.raises(ConfigError, match=_re("sizes.math.domains: task 'math' groups by 'level'")):
        sized_plan("paper_math_level.yaml", sizes=sizes)
    # without a size, the data is checked as a sweep checks it
    with pytest.raises(ConfigError, match=_re("policies.gpt4-t1.jsonl: data/code_gpt4_t1.jsonl: file not found")):
        load_config(CONFIGS / "paper_code.yaml")
    raw = yaml.safe_load((CONFIGS / "paper_critique.yaml").read_text())
    with pytest.raises(ConfigError, match=_re("task.data.path: data/critiques.jsonl: no such file or directory")):
        plan(config_from_dict(raw, source="critique.yaml", data=False), sizes={"math": paper_sizes()["math"]})


def small_config(tmp_path) -> dict:
    raw = yaml.safe_load((ROOT / "sweeps" / "configs" / "local.yaml").read_text())
    raw["task"]["n_problems"] = 2000
    raw["elicit"]["ks"] = [8, 32]
    raw["lock"].update(seeds=[0], controls=False, control_replicates=None)  # one lock replicate, no control
    raw["eval"]["max_problems"] = 200
    raw["store"]["url"] = str(tmp_path / "store")
    return raw


def test_artifacts_in_the_store_cost_nothing(tmp_path):
    p = plan(config_from_dict(small_config(tmp_path)))
    store = open_store(tmp_path / "store")
    before = estimate_plan(p, store)
    assert not any(a.in_store for a in before.artifacts)
    build(store.spec, p.policy_scores)  # a real build: the task's policies scored on the validation problems
    after = estimate_plan(p, store)
    item = next(a for a in after.artifacts if a.id == p.policy_scores.key)
    assert item.in_store and item.gpu_hours == 0
    assert item.cost.seconds > 0  # what it would have cost
    assert after.gpu_hours == pytest.approx(before.gpu_hours - item.cost.seconds * item.gpus / 3600)
    summary = "\n".join(after.summary())
    assert "8 artifacts to build" in summary and "1 in the store (cost 0)" in summary


def _files(root: Path) -> dict[str, int]:
    return {str(f.relative_to(root)): f.stat().st_size for f in root.rglob("*") if f.is_file()}


def test_dry_run_prints_the_estimate_and_writes_nothing(tmp_path):
    cfg = small_config(tmp_path)
    store = open_store(tmp_path / "store")
    build(store.spec, plan(config_from_dict(cfg)).policy_scores)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(cfg))
    before = _files(tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "sweeps" / "sample_efficiency.py"),
            "--dry-run",
            "--config",
            str(tmp_path / "study.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "cost estimate on one H100 80GB" in out
    assert "CPU study (ray.gpus_per_trial: 0)" in out
    assert "sample_efficiency.png: 8 trials" in out
    assert "upstream: 8 artifacts to build" in out and "1 in the store (cost 0)" in out
    assert out.count("[in store, reused]") == 1
    assert "scratchlock-sft-k32-seed1" in out and out.count(" GPU-h") >= 8 + 9
    assert "total: " in out
    assert _files(tmp_path) == before  # nothing trained, nothing written


def test_paper_study_is_priced_and_reuses_artifacts_across_figures():
    d = description.load(PAPER)
    est = description.estimate(d)
    assert math.isfinite(est.gpu_hours) and est.gpu_hours > 0
    # Evaluating in HF generate instead prices it at HF's fixed, measured rate (1,398 tok/s, a whole
    # GPU at batch 128), which beats a trial's engine with 0.25 of the GPU (a 7B model's KV cache
    # then holds a dozen sequences): the comparison is printed, whichever way it goes.
    assert math.isfinite(est.other_engine_gpu_hours) and est.other_engine_gpu_hours != est.gpu_hours
    figures = {fig: trials for fig, _, trials, _ in est.by_figure()}
    assert set(figures) == {f.id for f in d.figures} and all(figures.values())
    # Fig. 5: 3 tasks × 3 locks × (expert iteration, filtering, 3 DPO and 3 iterated-DPO learning rates) × 3 seeds
    assert len(figures["fig5"]) == 3 * 3 * 8 * 3
    # each artifact is priced once though several configs and figures need it (one key): code's lock
    ids = [a.id for a in est.artifacts]
    assert len(ids) == len(set(ids))
    (code_lock,) = {a.key for a in sized_plan("paper_code.yaml").locked.values()}
    users = {f for f, _, _, arts in est.by_figure() if any(a.id == code_lock for a in arts)}
    assert {"fig3", "fig5", "fig7", "fig12"} <= users
    # Fig. 13's toy sweep has the same upstream keys as Fig. 6's: built once
    toy = [a for a in est.artifacts if a.label.startswith("function_composition: ")]
    assert len(toy) == 9  # policy scores, strong model + evaluation, 2 locks + evaluations + audits
    kinds = est.hours_by_kind()
    assert all(v > 0 for v in kinds.values()) and sum(kinds.values()) == pytest.approx(est.gpu_hours)


def test_cost_command_on_a_description_and_a_sweep_config(tmp_path, capsys):
    path = tiny_description(tmp_path)
    assert main([str(path), "--brief"]) == 0
    out = capsys.readouterr().out
    assert "F6: 42 trials" in out and "F13: 42 trials" in out and "total: " in out
    assert main([str(path), "--brief", "--assume", "mfu=[[1e9, 0.1]]"]) == 0
    slower = capsys.readouterr().out
    assert slower != out
    assert main([str(CONFIGS / "paper_toy.yaml"), "--brief"]) == 0
    out = capsys.readouterr().out
    assert "sample_efficiency.png: 42 trials" in out and "CPU study" not in out


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r["figures"][0].update(sweep="train"), "figures[0] (f6).sweep: expected one of ['sample_"),
        (lambda r: r["figures"][0].update(configs=["nope.yaml"]), "figures[0] (f6).configs: "),
        (lambda r: r["figures"][0].update(configs=[]), "figures[0] (f6).configs: expected the sweep configs"),
        (lambda r: r["figures"][1].update(id="f6"), "figures[1] (f6).id: 'f6' names two figures"),
        (lambda r: r["figures"][0].update(ks=[4]), "figures[0].ks: unknown key"),
        (lambda r: r.update(figures=[]), "figures: expected at least one figure"),
        (lambda r: r.update(sizes={"nope": SIZE}), "sizes.nope: no task 'nope'"),
        (lambda r: r.update(sizes={"math": {**SIZE, "problems": 0}}), "sizes.math.problems: expected >= 4, got 0"),
        (
            lambda r: r.update(sizes={"math": {**SIZE, "splits": {"weak": 1}}}),
            "sizes.math.problems: expected either problems or splits",
        ),
        (
            lambda r: r.update(sizes={"math": {**SIZE, "tokens": {"prompt": 0, "completion": 5}}}),
            "sizes.math.tokens.prompt: expected > 0, got 0",
        ),
        (
            lambda r: r.update(sizes={"math": {**SIZE, "domains": {"type": {"algebra": 0.5, "geometry": 0.4}}}}),
            "sizes.math.domains.type: expected shares > 0 that sum to 1",
        ),
        (lambda r: r.update(reference_gpu_hours=-1), "reference_gpu_hours: expected > 0, got -1"),
    ],
)
def test_bad_descriptions_name_the_field(mutate, message, tmp_path):
    raw = yaml.safe_load(tiny_description(tmp_path).read_text())
    mutate(raw)
    with pytest.raises(ConfigError, match="tiny.yaml: .*" + _re(message)):
        description.from_dict(raw, str(tmp_path / "tiny.yaml"))


SIZE = {"problems": 100, "tokens": {"prompt": 10, "completion": 5}}


def test_bad_assumptions_name_the_field(tmp_path, capsys):
    path = tiny_description(tmp_path, assumptions={"vllm_tokps": 1})
    with pytest.raises(ConfigError, match=_re("assumptions.vllm_tokps: unknown assumption")):
        description.estimate(description.load(path))
    path = tiny_description(tmp_path, assumptions={"evaluation_engine": "tgi"})
    expected = "assumptions: evaluation_engine: expected one of ['config', 'hf', 'vllm']"
    with pytest.raises(ConfigError, match=_re(expected)):
        description.estimate(description.load(path))
    path = tiny_description(tmp_path)
    assert main([str(path), "--assume", "vllm_tok_s=fast"]) == 2
    assert "--assume.vllm_tok_s: expected float, got 'fast'" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: cannot read" in capsys.readouterr().err


def test_every_shipped_description_loads():
    found = [p for p in sorted(CONFIGS.glob("*.yaml")) if description.is_description(read_yaml(p))]
    assert PAPER in found
    for path in found:
        assert description.load(path).figures
        with pytest.raises(ConfigError, match="a study description"):
            load_config(path)
    assert load_config(CONFIGS / "paper_toy_weak.yaml").elicit.demonstrator == "weak"


def _re(text: str) -> str:
    import re

    return re.escape(text)


# -- a study description given to a sweep's entry point ---------------------------------------------
def _sweep_cmd(sweep: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "sweeps" / f"{sweep}.py"), "--config", str(PAPER), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


@pytest.mark.parametrize("sweep", description.SWEEPS)
def test_each_sweep_dry_run_prints_its_figures_of_the_paper_and_the_whole_total(sweep, tmp_path):
    study = description.load(PAPER)
    proc = _sweep_cmd(sweep, "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    mine = [f for f in study.figures if f.sweep == sweep]
    assert mine and f"the {len(mine)} of its {len(study.figures)} figures that sweeps/{sweep}.py runs" in out
    for f in study.figures:  # its figures, each with its trials and artifacts; no other sweep's
        assert (f"  {f.title}: " in out) == (f.sweep == sweep), f.id
    assert "upstream artifacts (" in out and "[to build" in out
    # the whole study: each sweep's part, the total, against the paper's ~4,000 GPU-hours
    assert all(f"  sweeps/{name}.py: " in out for name in description.SWEEPS)
    assert "  total: " in out and "against the paper (App. F): about 4,000 GPU-hours; this estimate is " in out
    assert list(tmp_path.iterdir()) == []  # nothing built, nothing written


def test_a_study_description_without_dry_run_is_refused_at_once_with_what_to_run(tmp_path):
    proc = _sweep_cmd("sample_efficiency", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    err = proc.stderr
    assert "paper.yaml is a study description (`figures:`), not a sweep config" in err
    assert "--dry-run" in err and "fig13: " in err and "paper_toy_weak.yaml" in err
    assert "give sweeps/sample_efficiency.py one of its configs with --config: fig3: " in err
    assert "paper_math.yaml" in err and "fig5: " not in err
    proc = _sweep_cmd("rl", "--quick", cwd=tmp_path)
    assert proc.returncode == 2 and "; fig9b: " in proc.stderr and "paper_math_rl_setting.yaml" in proc.stderr
    assert list(tmp_path.iterdir()) == []  # no store, no Ray session, no results


def test_study_dry_run_counts_what_the_given_store_has(tmp_path):
    store = open_store(tmp_path / "store")
    toy = plan(load_config(ROOT / "sweeps" / "configs" / "paper_toy.yaml"))
    build(store.spec, toy.policy_scores)  # Fig. 6's and Fig. 13's cheapest artifact, really built
    proc = _sweep_cmd("sample_efficiency", "--dry-run", "--storage", str(tmp_path / "store"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("[in store, reused]") == 1 and "policy scores" in proc.stdout
    assert ", 1 in the store (cost 0)" in proc.stdout


# -- RL evaluation on a subset between whole-set rounds; DPO pairs ------------------------------------
def test_dpo_pairs_are_priced_as_run():
    # 0/1 scores: a pair is kept when its 2 samples differ, 2p(1 - p) <= 1/2 of the problems; a
    # continuous reward keeps (nearly) all
    assert dpo_pairs(100, False) == 50 and dpo_pairs(100, True) == 100
    a = Assumptions()
    for continuous in (True, False):  # DPO and iterated DPO on code, each round's pairs trained once
        p = sized_plan(
            "paper_code_rl_continuous.yaml", lambda r: r["elicit"]["rl"].update(continuous_reward=continuous)
        )
        rl, task = p.cfg.elicit.rl, p.task
        tokens = task_tokens(task, task.default_password).locked(task.max_new_tokens, a.locked_new_tokens_share)
        pairs = dpo_pairs(min(rl.dpo_problems, len(task.problems("elicit"))), continuous)
        per_round = Pricer(a).dpo(model_of(p.cfg.model, task), pairs, tokens, rl.dpo_train.batch_size).train_s
        for t in estimate_plan(p, compare_engines=False).trials:
            assert t.cost.train_s == pytest.approx(rl.dpo_rounds * per_round), t.id


def test_a_sweeps_rl_evaluation_schedule_is_priced_from_its_config():
    raw = yaml.safe_load((ROOT / "sweeps" / "configs" / "rl.yaml").read_text())
    raw["elicit"]["methods"] = ["expert_iteration"]

    def evaluated(rl: dict, method: str = "expert_iteration") -> tuple[float, int, int]:
        r = copy.deepcopy(raw)
        r["elicit"]["rl"].update(rl)
        r["elicit"]["methods"] = [method]
        p = plan(config_from_dict(r))
        est = estimate_plan(p, compare_engines=False)
        n_eval = len(eval_problems(make_task(p.task_spec), p.cfg.eval.split, p.cfg.eval.max_problems))
        return est.trials[0].cost.evaluated_tokens, p.cfg.elicit.rl.iterations, n_eval

    full, rounds, n_eval = evaluated({})
    sched, _, _ = evaluated({"eval_every": 3, "eval_problems_between": 7})
    whole = sum(1 for r in range(1, rounds + 1) if r % 3 == 0 or r == rounds)
    assert sched / full == pytest.approx((whole * n_eval + (rounds - whole) * 7) / (rounds * n_eval))
    # DPO's rounds: the same schedule
    full, rounds, n_eval = evaluated({}, "dpo")
    sched, _, _ = evaluated({"eval_every": 3, "eval_problems_between": 7}, "dpo")
    whole = sum(1 for r in range(1, rounds + 1) if r % 3 == 0 or r == rounds)
    assert sched / full == pytest.approx((whole * n_eval + (rounds - whole) * 7) / (rounds * n_eval))


# -- generation from the engine's settings, locked models' lengths, weight syncs, the fit check ------
MATH_7B = Model(KNOWN_PARAMS["deepseek-ai/deepseek-math-7b-base"], 2, KNOWN_ARCHS["deepseek-ai/deepseek-math-7b-base"])


def test_decode_throughput_follows_the_engines_kv_cache():
    a = Assumptions()

    def rate(tokens: Tokens, **engine) -> float:
        return a.decode_tok_s(MATH_7B, Engine(**engine), tokens, 1e6)

    short, long_, longer = Tokens(150, 250, 250), Tokens(150, 250, 512), Tokens(150, 250, 1024)
    assert rate(short) > rate(long_) > rate(longer)  # longer sequences: fewer of them in the cache
    assert rate(long_) < rate(long_, gpu_memory_utilization=0.5) < rate(long_, gpu_memory_utilization=0.85)
    assert rate(long_, enforce_eager=False) == pytest.approx(rate(long_) / a.eager_factor)
    # By hand: 30 layers × 2 × 32 KV heads × 128 × 2 bytes per token; the cache gets 0.25 × 80 GB
    # less 13.82 GB of weights and 2.5 GB: 11 sequences of 150 + 512 tokens. A step reads the
    # weights and each sequence's 150 + 256 tokens on average, at 0.6 × 3.35 TB/s; eager: × 0.65.
    kv = 30 * 2 * 32 * 128 * 2
    seqs = math.floor((0.25 * 80e9 - 13.82e9 - 2.5e9) / (kv * 662))
    assert seqs == 11 == a.concurrent(MATH_7B, Engine(), long_, 1e6)
    assert rate(long_) == pytest.approx(seqs / ((13.82e9 + seqs * 406 * kv) / (0.6 * 3.35e12)) * 0.65)
    # at most max_num_seqs, and the sequences asked for
    assert rate(short, gpu_memory_utilization=0.85, max_num_seqs=4) < rate(short, gpu_memory_utilization=0.85)
    assert a.concurrent(MATH_7B, Engine(0.85), short, 3) == 3
    # grouped-query attention (Mistral: 8 KV heads of 32) keeps 4× less per token
    mistral = "mistralai/Mistral-7B-v0.1"
    assert Model(7.24e9, 2, KNOWN_ARCHS[mistral]).kv_bytes_per_token == kv * 32 // 30 / 4
    # the earlier fixed figure, as a what-if; and through the Pricer, in the engine it was given
    assert Assumptions(vllm_tok_s=2500).decode_tok_s(MATH_7B, Engine(), long_, 1e6) == pytest.approx(2500 * 7 / 6.91)
    big = Pricer(a, Engine(gpu_memory_utilization=0.85))
    assert (
        big.generate(MATH_7B, 1000, long_, "vllm").generate_s
        < Pricer(a).generate(MATH_7B, 1000, long_, "vllm").generate_s
    )
    assert Engine.of(VLLMConfig(gpu_memory_utilization=0.3, enforce_eager=False)) == Engine(0.3, False)


def test_a_locked_models_samples_are_priced_at_a_share_of_max_new_tokens():
    p = sized_plan("paper_math.yaml")  # max_new_tokens 1024; references of 250 tokens
    lock_eval = next(a for a in p.artifacts if a.stage == "model_eval" and a.spec["model"] == p.locked["base"].key)

    def evaluate_s(share: float) -> tuple[float, float]:
        est = estimate_plan(p, a=Assumptions(locked_new_tokens_share=share), compare_engines=False)
        stage = next(i for i in est.artifacts if i.id == lock_eval.key)
        return est.trials[0].cost.evaluated_tokens, stage.cost.evaluated_tokens

    half, stage = evaluate_s(0.5)
    n_eval = len(eval_problems(p.task, p.cfg.eval.split, p.cfg.eval.max_problems))
    points = len(p.trials[0].epoch_candidates)
    assert half == pytest.approx(points * n_eval * 512)  # half of 1,024 new tokens, not the reference's 250
    # a share below the reference's length leaves the reference's; a stage decodes the reference's length
    assert evaluate_s(0.1)[0] == pytest.approx(points * n_eval * 250)
    assert stage == evaluate_s(0.1)[1] == pytest.approx(len(lock_eval.spec["conditions"]) * n_eval * 250)


def test_weight_syncs_are_priced_per_round_and_per_epoch_candidate():
    # by default a 7B model's 13.8 GB at 2 GB/s, plus 1 s
    assert Pricer(Assumptions()).sync(MATH_7B, 12).sync_s == pytest.approx(12 * (13.82 / 2 + 1))
    # an SFT trial gives its evaluation engine the weights at each epoch candidate
    p = sized_plan("paper_math.yaml")
    for t, item in zip(p.trials, estimate_plan(p, compare_engines=False).trials):
        assert item.cost.sync_s == pytest.approx(Pricer(Assumptions()).sync(MATH_7B, len(t.epoch_candidates)).sync_s)
    # a classifier decodes nothing: an SFT trial starts no engine and syncs nothing
    assert all(t.cost.sync_s == 0 for t in estimate_plan(sized_plan("paper_mmlu.yaml"), compare_engines=False).trials)
    # a sweep's RL trials that start an engine (filtering on an exact-match task starts none): one
    # sync a round
    p = plan(config_from_dict(yaml.safe_load((ROOT / "sweeps" / "configs" / "rl.yaml").read_text())))
    est = estimate_plan(p, compare_engines=False)
    model = model_of(p.cfg.model, p.task)
    for t, item in zip(p.trials, est.trials):
        rounds = len(t.epoch_candidates) if item.cost.engine_starts else 0
        assert item.cost.sync_s == pytest.approx(Pricer(Assumptions()).sync(model, rounds).sync_s), t.name
    assert {"expert_iteration", "iterated_dpo"} <= {t.method for t, i in zip(p.trials, est.trials) if i.cost.sync_s}


def test_a_plan_that_does_not_fit_its_gpu_is_refused_with_the_numbers(tmp_path, capsys):
    from pwlock.cli import main as sweep_main
    from tests.test_paper_configs import on_fixtures

    raw, _ = on_fixtures("paper_math.yaml", tmp_path)  # Deepseek-Math-7B, bf16, on the MATH fixture
    raw["elicit"]["train"]["optimizer"] = "adamw"
    raw["elicit"]["rl"] = {"generator": {"vllm": {"gpu_fraction": 0.95, "gpu_memory_utilization": 0.9}}}
    p = plan(config_from_dict(raw, source="adamw.yaml"))
    with pytest.raises(DoesNotFit) as e:
        estimate_plan(p)
    n = len(p.trials)  # SFT trials, each with its evaluation engine: all alike
    head = f"adamw.yaml: {n} of {n} trials do not fit their GPU: {n} trials ({p.trials[0].name}, "
    assert str(e.value).startswith(head)
    assert (
        "needs 127.3 GB of GPU memory, more than its 80 GB (weights 13.8 + gradients 13.8 + AdamW state 27.6 + "
        "vLLM engine 72.0 (gpu_memory_utilization 0.9 × 80))"
    ) in str(e.value)
    # The sweep refuses it before any work, --dry-run or not: no store, nothing written.
    path = tmp_path / "adamw.yaml"
    path.write_text(yaml.safe_dump(raw))
    for dry in (["--dry-run"], []):
        args = ["--config", str(path), "--storage", str(tmp_path / "store"), *dry]
        assert sweep_main(args, default_config=path) == 2
        assert "trials do not fit their GPU" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()
    # A 70B-parameter model (a local directory with its config) does not fit with any optimizer.
    from transformers import LlamaConfig

    big = tmp_path / "llama-70b"
    LlamaConfig(
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        vocab_size=32000,
    ).save_pretrained(big)
    raw, _ = on_fixtures("paper_math.yaml", tmp_path)
    raw["model"]["base"] = str(big)
    with pytest.raises(DoesNotFit, match=_re("needs 433.9 GB of GPU memory, more than its 80 GB (weights 138.0")):
        estimate_plan(plan(config_from_dict(raw, source="big.yaml")))
    # An engine whose KV cache cannot hold one sequence of the model's context would not start.
    raw, _ = on_fixtures("paper_code.yaml", tmp_path)
    raw["elicit"].pop("rl")  # the shipped max_model_len: 6144 gone; Deepseek-Coder's own is 16,384
    with pytest.raises(DoesNotFit, match=_re("less than one sequence of max_model_len 16,384 needs (8.6 GB)")):
        estimate_plan(plan(config_from_dict(raw, source="code.yaml")))


def test_the_shipped_configs_fit_and_a_cpu_study_has_nothing_to_fit(tmp_path):
    from tests.test_paper_configs import NAMES, on_fixtures

    for name in NAMES:  # the paper's sweep configs on the fixtures: every trial fits one 80 GB GPU
        raw, _ = on_fixtures(name, tmp_path)
        est = estimate_plan(plan(config_from_dict(raw, source=name)), compare_engines=False)
        assert est.trials and all(t.memory.fits and t.memory.engine_starts for t in est.trials), name
        assert max(t.memory.total for t in est.trials) <= 80, name
    # The paper's study: every trial fits; the largest are the DPO trials on Deepseek-Math-7B (Lion,
    # its frozen reference, the engine's 0.25).
    est = description.estimate(description.load(PAPER), compare_engines=False)
    assert est.misfits() == []
    top = max((t for t in est.trials if t.memory), key=lambda t: t.memory.total)
    assert top.id.startswith("paper_math_rl") and "dpo" in top.id and top.memory.total == pytest.approx(4 * 13.82 + 20)
    assert f"; all {len(est.trials):,} trials fit" in "\n".join(est.summary())
    # The toy study on a quarter of a GPU fits its 20 GB; a CPU study has no GPU to fit.
    toy = estimate_plan(plan(load_config(ROOT / "sweeps" / "configs" / "paper_toy.yaml")), compare_engines=False)
    assert all(t.memory.capacity == 20 and t.memory.fits for t in toy.trials)
    cpu = estimate_plan(plan(config_from_dict(small_config(tmp_path))), compare_engines=False)
    assert cpu.cpu_study and all(t.memory is None for t in cpu.trials)
    assert "GPU memory" not in "\n".join(cpu.summary())
