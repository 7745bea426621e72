"""The cost model: exact prices on hand-computable work, artifacts in the store at cost 0, the
plan printed by --dry-run (nothing trained or written), the paper's study priced, bad study files
refused with the field named; a vLLM engine's decoding rate from its settings, locked models'
lengths, weight syncs, and trials that do not fit their GPU refused with the numbers."""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pwlock import study_plan
from pwlock.cli import cost_main as main
from pwlock.config import ConfigError, VLLMConfig, config_from_dict, load_config, read_yaml
from pwlock.cost import KNOWN_ARCHS, KNOWN_PARAMS, Assumptions, DoesNotFit, Engine, Model, Pricer, Tokens
from pwlock.plan import plan
from pwlock.pricing import estimate_plan, model_of
from pwlock.stages import build, eval_problems
from pwlock.store import open_store
from pwlock.tasks import make_task

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "sweeps" / "configs" / "paper.yaml"

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


def tiny_study() -> dict:
    return {
        "name": "tiny",
        "defaults": {"seeds": 1, "lock_epochs": 1, "policy_epochs": 1, "batch_size": 8, "sample_budgets": [8]},
        "assumptions": {k: [list(p) for p in v] if isinstance(v, tuple) else v for k, v in SIMPLE.items()},
        "models": {"m": {"params": 7e9}},
        "tasks": {
            "t": {
                "problems": 1000,
                "strong_base": "m",
                "weak_base": "m",
                "strong": {"recipe": "labels"},
                "tokens": {"prompt": 100, "completion": 50},
            }
        },
        "figures": [{"id": "f", "title": "F", "sweep": "sample_efficiency", "tasks": ["t"], "ks": [4]}],
    }


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


def test_tiny_described_study_is_priced_exactly():
    est = study_plan.estimate(study_plan.from_dict(tiny_study(), "tiny.yaml"), compare_engines=False)
    s = {a.label: a.cost.seconds for a in est.artifacts}
    # splits of 1,000 problems: weak 100, lock 400, elicit 300, val 200; π_strong is the labels
    evaluation = 200 * 50 / 100 + 200 * 100 / 3000  # greedy answers on val, and their prefill
    weak = 13 * 1.2 + evaluation + (10 + 1 + 2)  # π_weak: SFT on 100 examples, evaluated, loaded and saved
    pool = 400 * 50 / 100 + 400 * 100 / 3000 + (10 + 1 + 20)  # its samples on the lock split, in an engine
    lock = 100 * 1.2 + (10 + 1 + 2)  # 800 examples (a strong and a weak one per problem) in 100 steps
    lock_eval = 3 * evaluation + (10 + 1 + 20)  # with, without and with a wrong password, in an engine
    assert s == pytest.approx(
        {
            "policy: t, m trained on π_strong": weak,
            "samples: t, π_weak (m) on lock ×1": pool,
            "locked: t": lock,
            "locked: t: evaluation": lock_eval,
        }
    )
    # one trial: k = 4, candidates {8/4} = [2] epochs of one step of 600 tokens, one evaluation in
    # the trial's engine (started for it: a generation task), given the weights once
    (trial,) = est.trials
    assert trial.cost.seconds == pytest.approx((10 + 1 + 20) + 2 * 0.6 + evaluation + 2)
    assert trial.cost.sync_s == pytest.approx(2)
    total = weak + pool + lock + lock_eval + trial.cost.seconds
    assert est.gpu_hours == pytest.approx(total / 3600)
    kinds = est.hours_by_kind()
    assert kinds["training"] == pytest.approx((13 * 1.2 + 100 * 1.2 + 2 * 0.6) / 3600)
    assert sum(kinds.values()) == pytest.approx(est.gpu_hours)
    assert all(not a.buildable for a in est.artifacts)  # described: pwlock has no stage for them yet


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
    study = study_plan.load(PAPER)
    est = study_plan.estimate(study)
    assert math.isfinite(est.gpu_hours) and est.gpu_hours > 0
    # Evaluating in HF generate instead prices it at HF's fixed, measured rate (1,398 tok/s, a whole
    # GPU at batch 128), which beats a trial's engine with 0.25 of the GPU (a 7B model's KV cache
    # then holds a dozen sequences): the comparison is printed, whichever way it goes.
    assert math.isfinite(est.other_engine_gpu_hours) and est.other_engine_gpu_hours != est.gpu_hours
    figures = {fig: trials for fig, _, trials, _ in est.by_figure()}
    assert set(figures) == {f.id for f in study.figures} and all(figures.values())
    # Fig. 5: 3 tasks × 3 locks × (expert iteration, filtering, 3 DPO and 3 iterated-DPO learning rates) × 3 seeds
    assert len(figures["fig5"]) == 3 * 3 * 8 * 3
    # each artifact is priced once though several figures need it (e.g. the default locks)
    ids = [a.id for a in est.artifacts]
    assert len(ids) == len(set(ids))
    code_lock = [f for f, _, _, arts in est.by_figure() if any(a.label == "locked: code" for a in arts)]
    assert {"fig3", "fig5", "fig7", "fig12"} <= set(code_lock)
    # Fig. 13's toy sweep has the same upstream keys as Fig. 6's: built once
    toy = [a for a in est.artifacts if a.buildable]
    assert len(toy) == 9  # policy scores, strong model + evaluation, 2 locks + evaluations + audits
    kinds = est.hours_by_kind()
    assert all(v > 0 for v in kinds.values()) and sum(kinds.values()) == pytest.approx(est.gpu_hours)


def test_cost_command_on_a_study_file_and_a_sweep_config(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_study()))
    assert main([str(path), "--brief"]) == 0
    out = capsys.readouterr().out
    assert "F: 1 trials" in out and "total: " in out
    assert main([str(path), "--brief", "--assume", "vllm_tok_s=50"]) == 0
    slower = capsys.readouterr().out
    assert slower != out
    assert main([str(ROOT / "sweeps" / "configs" / "paper_toy.yaml"), "--brief"]) == 0
    out = capsys.readouterr().out
    assert "sample_efficiency.png: 42 trials" in out and "CPU study" not in out


def _bad(mutate) -> dict:
    raw = copy.deepcopy(tiny_study())
    mutate(raw)
    return raw


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda r: r["figures"][0].update(ks=[4, -1]),
            "figures[0].ks[1]: expected a positive number of demonstrations",
        ),
        (lambda r: r["figures"][0].update(tasks=["nope"]), "figures[0].tasks[0]: unknown task 'nope'"),
        (lambda r: r["figures"][0].update(methods=["ppo"]), "figures[0].methods[0]: unknown method 'ppo'"),
        (lambda r: r["figures"][0].update(locks=[{"weak": "gpt5"}]), "figures[0].locks[0].weak: expected default"),
        (lambda r: r["figures"][0].update(ks="many"), "figures[0].ks: expected a list, got 'many'"),
        (lambda r: r["models"]["m"].update(params="big"), "models.m.params: expected a number, got 'big'"),
        (lambda r: r["tasks"]["t"].pop("problems"), "tasks.t.problems: missing"),
        (lambda r: r["tasks"]["t"].update(tokenz={}), "tasks.t.tokenz: unknown key"),
        (lambda r: r["tasks"]["t"].update(strong_base="m2"), "tasks.t.strong_base: unknown model 'm2'"),
        (lambda r: r["tasks"]["t"]["tokens"].update(prompt=0), "tasks.t.tokens.prompt: expected a positive number"),
        (
            lambda r: r["defaults"].update(splits={"weak": 0.5, "lock": 0.5}),
            "defaults.splits: expected positive shares",
        ),
    ],
)
def test_bad_study_files_name_the_field(mutate, message):
    with pytest.raises(ConfigError, match="^tiny.yaml: .*" + _re(message)):
        study_plan.from_dict(_bad(mutate), "tiny.yaml")


def test_bad_assumptions_name_the_field(tmp_path, capsys):
    raw = _bad(lambda r: r["assumptions"].update(vllm_tokps=1))
    with pytest.raises(ConfigError, match=_re("assumptions.vllm_tokps: unknown assumption")):
        study_plan.estimate(study_plan.from_dict(raw, "tiny.yaml"))
    raw = _bad(lambda r: r["assumptions"].update(evaluation_engine="tgi"))
    expected = "assumptions: evaluation_engine: expected one of ['config', 'hf', 'vllm']"
    with pytest.raises(ConfigError, match=_re(expected)):
        study_plan.estimate(study_plan.from_dict(raw, "tiny.yaml"))
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_study()))
    assert main([str(path), "--assume", "vllm_tok_s=fast"]) == 2
    assert "--assume.vllm_tok_s: expected float, got 'fast'" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: cannot read" in capsys.readouterr().err


def test_every_shipped_study_file_loads():
    studies = [p for p in sorted((ROOT / "sweeps" / "configs").glob("*.yaml")) if study_plan.is_study(read_yaml(p))]
    assert PAPER in studies
    for path in studies:
        assert study_plan.load(path).figures
        with pytest.raises(ConfigError, match="a study description"):
            load_config(path)
    assert load_config(ROOT / "sweeps" / "configs" / "paper_toy_weak.yaml").elicit.demonstrator == "weak"


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


@pytest.mark.parametrize("sweep", study_plan.SWEEPS)
def test_each_sweep_dry_run_prints_its_figures_of_the_paper_and_the_whole_total(sweep, tmp_path):
    study = study_plan.load(PAPER)
    proc = _sweep_cmd(sweep, "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    mine = [f for f in study.figures if f.sweep == sweep]
    assert mine and f"the {len(mine)} of its {len(study.figures)} figures that sweeps/{sweep}.py runs" in out
    for f in study.figures:  # its figures, each with its trials and artifacts; no other sweep's
        assert (f"  {f.title}: " in out) == (f.sweep == sweep), f.id
    assert "upstream artifacts (" in out and "[to build" in out
    # the whole study: each sweep's part, the total, against the paper's ~4,000 GPU-hours
    assert all(f"  sweeps/{name}.py: " in out for name in study_plan.SWEEPS)
    assert "  total: " in out and "against the paper (App. F): about 4,000 GPU-hours; this estimate is " in out
    assert list(tmp_path.iterdir()) == []  # nothing built, nothing written


def test_a_study_description_without_dry_run_is_refused_at_once_with_what_to_run(tmp_path):
    proc = _sweep_cmd("sample_efficiency", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    err = proc.stderr
    assert "paper.yaml is a study description (`figures:`), not a sweep config" in err
    assert "--dry-run" in err and "fig13: " in err and "paper_toy_weak.yaml" in err
    assert "figures fig3, fig7, fig8, fig9a, fig12, fig12-soft, fig15 run from " in err and "paper_<task>*.yaml" in err
    proc = _sweep_cmd("rl", "--quick", cwd=tmp_path)
    assert proc.returncode == 2 and "figures fig5, fig9b, fig14, fig16, fig16-lock run from " in proc.stderr
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
def test_rl_evaluation_schedule_and_dpo_pairs_are_priced_as_run():
    raw = tiny_study()
    raw["figures"] = [
        {"id": "ei", "title": "EI", "sweep": "rl", "tasks": ["t"], "methods": ["expert_iteration"]},
        {"id": "dpo", "title": "DPO", "sweep": "rl", "tasks": ["t"], "methods": ["dpo"]},
        {
            "id": "wdpo",
            "title": "weighted DPO",
            "sweep": "rl",
            "tasks": ["t"],
            "methods": ["dpo"],
            "continuous_reward": True,
        },
    ]
    raw["defaults"]["rl"] = {"iterations": 5, "dpo_rounds": 5, "n": 4, "dpo_problems": 100}

    def trial_s(rl: dict) -> dict[str, float]:
        r = copy.deepcopy(raw)
        r["defaults"]["rl"].update(rl)
        est = study_plan.estimate(study_plan.from_dict(r, "tiny.yaml"), compare_engines=False)
        return {t.figures[0]: t.cost for t in est.trials}

    every = trial_s({})
    sched = trial_s({"eval_every": 2, "eval_problems_between": 20})
    evaluation = 200 * 50 / 100 + 200 * 100 / 3000  # the whole validation split (200 problems), as above
    subset = 20 * 50 / 100 + 20 * 100 / 3000
    for fig in ("ei", "dpo"):
        assert every[fig].evaluate_s == pytest.approx(5 * evaluation)
        # rounds 2, 4 and the last on all 200 problems; rounds 1 and 3 on the same 20
        assert sched[fig].evaluate_s == pytest.approx(3 * evaluation + 2 * subset)
        assert sched[fig].train_s == every[fig].train_s and sched[fig].generate_s == every[fig].generate_s
    # 0/1 scores: a pair is kept when its 2 samples differ, 2p(1 - p) <= 1/2 of the problems; a
    # continuous reward keeps (nearly) all 100
    price = Pricer(Assumptions(**SIMPLE))
    m, toks = Model(7e9), Tokens(100, 50, 50)
    assert every["dpo"].train_s == pytest.approx(5 * price.dpo(m, 50, toks, 8).train_s)
    assert every["wdpo"].train_s == pytest.approx(5 * price.dpo(m, 100, toks, 8).train_s)


def test_a_sweeps_rl_evaluation_schedule_is_priced_from_its_config():
    raw = yaml.safe_load((ROOT / "sweeps" / "configs" / "rl.yaml").read_text())
    raw["elicit"]["methods"] = ["expert_iteration"]

    def evaluated(rl: dict) -> tuple[float, int, int]:
        r = copy.deepcopy(raw)
        r["elicit"]["rl"].update(rl)
        p = plan(config_from_dict(r))
        est = estimate_plan(p, compare_engines=False)
        n_eval = len(eval_problems(make_task(p.task_spec), p.cfg.eval.split, p.cfg.eval.max_problems))
        return est.trials[0].cost.evaluated_tokens, p.cfg.elicit.rl.iterations, n_eval

    full, rounds, n_eval = evaluated({})
    sched, _, _ = evaluated({"eval_every": 3, "eval_problems_between": 7})
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
    raw = tiny_study()
    raw["tasks"]["t"]["max_new_tokens"] = 400

    def seconds(overrides: dict) -> dict[str, float]:
        est = study_plan.estimate(study_plan.from_dict(raw, "tiny.yaml"), overrides=overrides, compare_engines=False)
        return {"trial": est.trials[0].cost.evaluate_s} | {a.label: a.cost.evaluate_s for a in est.artifacts}

    prefill = 200 * 100 / 3000
    s = seconds({})
    assert s["trial"] == pytest.approx(200 * 200 / 100 + prefill)  # half of 400 new tokens, not the reference's 50
    assert s["locked: t: evaluation"] == pytest.approx(3 * (200 * 50 / 100 + prefill))  # a stage: the reference's
    # a share below the reference's length leaves the reference's
    assert seconds({"locked_new_tokens_share": 0.1})["trial"] == pytest.approx(200 * 50 / 100 + prefill)


def test_weight_syncs_are_priced_per_round_and_per_epoch_candidate():
    raw = tiny_study()
    raw["defaults"].update(sample_budgets=[8, 16], rl={"iterations": 5, "dpo_rounds": 3, "n": 4, "dpo_problems": 100})
    raw["figures"] += [
        {"id": "ei", "title": "EI", "sweep": "rl", "tasks": ["t"], "methods": ["expert_iteration"]},
        {"id": "idpo", "title": "iterated DPO", "sweep": "rl", "tasks": ["t"], "methods": ["iterated_dpo"]},
    ]
    est = study_plan.estimate(study_plan.from_dict(raw, "tiny.yaml"), compare_engines=False)
    syncs = {t.figures[0]: t.cost.sync_s for t in est.trials}
    # 14 GB at 14 GB/s plus 1 s: 2 s a sync; SFT's k = 4 has epoch candidates 2 and 4
    assert syncs == pytest.approx({"f": 2 * 2, "ei": 5 * 2, "idpo": 3 * 2})
    assert sum(t.cost.sync_s for t in est.trials) / 3600 == pytest.approx(est.hours_by_kind()["weight syncs"])
    # a classifier decodes nothing: an SFT trial starts no engine and syncs nothing
    raw["tasks"]["t"]["evaluation"] = "classify"
    est = study_plan.estimate(study_plan.from_dict(raw, "tiny.yaml"), compare_engines=False)
    assert {t.figures[0]: t.cost.sync_s for t in est.trials}["f"] == 0
    # by default a 7B model's 13.8 GB at 2 GB/s, plus 1 s
    assert Pricer(Assumptions()).sync(MATH_7B, 12).sync_s == pytest.approx(12 * (13.82 / 2 + 1))
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
    # its frozen reference, the engine's 0.25), reported, not refused (a description runs nothing).
    est = study_plan.estimate(study_plan.load(PAPER), compare_engines=False)
    assert est.misfits() == []
    top = max((t for t in est.trials if t.memory), key=lambda t: t.memory.total)
    assert top.label in ("dpo", "iterated_dpo") and top.memory.total == pytest.approx(4 * 13.82 + 20)
    assert "; all 1,716 trials fit" in "\n".join(est.summary())
    raw = tiny_study()
    raw["models"]["m"]["params"] = 7e10
    est = study_plan.estimate(study_plan.from_dict(raw, "tiny.yaml"), compare_engines=False)
    assert "DOES NOT FIT: 1 trials (f/locked: t/sft on 4 high_quality/seed0/lr0): needs 440.0 GB" in "\n".join(
        est.summary()
    )
    # The toy study on a quarter of a GPU fits its 20 GB; a CPU study has no GPU to fit.
    toy = estimate_plan(plan(load_config(ROOT / "sweeps" / "configs" / "paper_toy.yaml")), compare_engines=False)
    assert all(t.memory.capacity == 20 and t.memory.fits for t in toy.trials)
    cpu = estimate_plan(plan(config_from_dict(small_config(tmp_path))), compare_engines=False)
    assert cpu.cpu_study and all(t.memory is None for t in cpu.trials)
    assert "GPU memory" not in "\n".join(cpu.summary())
