"""Generalization across domains (paper §5.2, Fig. 4, 10, 17) and the trial dimensions it needs:
several lock variants in one experiment, demonstrations from one domain, several demonstrators,
per-domain evaluation, the "other domains" measure and its figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pwlock import analysis, evaluate
from pwlock.config import ConfigError, config_from_dict, load_config
from pwlock.elicit.sft import demonstrations
from pwlock.lock import variant_lock_data
from pwlock.passwords import domain_passwords
from pwlock.plan import plan
from pwlock.tasks import make_task

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "sweeps" / "configs"


def _raw(name: str) -> dict:
    raw = yaml.safe_load((CONFIGS / name).read_text())
    if name == "local.yaml":
        raw["lock"]["seeds"] = [0]  # one lock replicate: a lock per variant and mode
    return raw


def _partitioned(name: str) -> dict:
    """A shipped config on domains that share no function (studies by domain are refused otherwise)."""
    raw = _raw(name)
    raw["task"]["partition_domains"] = True
    return raw


def test_generalization_config_plans_a_lock_per_variant_and_a_trial_per_domain():
    p = plan(load_config(CONFIGS / "generalization.yaml"))
    assert list(p.locked) == ["sft", "sft-per_domain", "sft-omit_domain"]
    assert p.variant == {"sft": "standard", "sft-per_domain": "per_domain", "sft-omit_domain": "omit_domain"}
    # Its task's domains share no function: its problems, π_strong's model and locks are not local.yaml's.
    local = plan(load_config(CONFIGS / "local.yaml"))
    assert p.locked["sft"].key != local.locked["sft"].key and p.strong.key != local.strong.key
    # The per-domain lock is evaluated "with password" with each domain's password.
    opens = p.locked_eval["sft-per_domain"].spec["password"]
    assert opens == domain_passwords(["g0", "g1", "g2", "g3"], make_task(p.task_spec).wrong_passwords, False)
    assert p.locked_eval["sft"].spec["password"] == "pwd"
    assert len(p.trials) == 3 * 5 * 2 * 3  # locks × domains × k × seeds
    names = {t.name for t in p.trials}
    assert "sft-per_domainlock-sft-g2-k512-seed1" in names and "sftlock-sft-k32-seed0" in names
    assert {t.domain for t in p.trials} == {"all", "g0", "g1", "g2", "g3"}


def test_from_scratch_config_has_a_trial_per_demonstrator():
    p = plan(load_config(CONFIGS / "from_scratch.yaml"))
    assert list(p.locked) == ["sft", "scratch", "sft-subset"] and list(p.controls) == ["sft-control", "scratch-control"]
    assert {t.demonstrator for t in p.trials} == {"strong", "weak"}
    assert len(p.trials) == 5 * 2 * 5 * 2  # 3 locks and 2 controls × 2 demonstrators × 5 k × 2 seeds
    assert "scratchlock-sft-weak-k128-seed1" in {t.name for t in p.trials}
    # The standard locks and the controls are local.yaml's first replicate's: built once for both.
    local = plan(load_config(CONFIGS / "local.yaml"))
    assert {x.key for x in (*p.locked.values(), *p.controls.values())} - {p.locked["sft-subset"].key} <= {
        x.key for x in (*local.locked.values(), *local.controls.values())
    }


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"elicit": {"domains": ["all", "g9"]}},
            r"elicit\.domains\[1\]: task 'function_composition' has no domain 'g9'",
        ),
        (
            {"elicit": {"domains": ["g1"], "ks": [8, 4000]}},
            r"elicit\.domains\[0\]: k=4000 exceeds the \d+ problems of "
            r"domain 'g1'",
        ),
        ({"elicit": {"domains": ["g1", "g1"]}}, r"elicit\.domains: expected domains \(or 'all'\), each once"),
        (
            {"elicit": {"demonstrator": ["strong", "wise"]}},
            r"elicit\.demonstrator\[1\]: task 'function_composition' has "
            r"no 'wise' policy",
        ),
        ({"lock": {"variant": ["standard", "sideways"]}}, r"lock\.variant\[1\]: unknown lock variant 'sideways'"),
        (
            {"lock": {"variant": ["standard", "standard"]}},
            r"lock\.variant: expected a variant or a list of variants, "
            r"each once",
        ),
        (
            {"lock": {"variant": ["standard"], "omit_domain": "g1"}},
            r"lock\.omit_domain: only used with variant "
            r"'omit_domain'",
        ),
        (
            {"elicit": {"methods": ["expert_iteration"], "domains": ["g1"]}},
            r"elicit\.domains: only used by the sft method",
        ),
        (
            {"elicit": {"methods": ["dpo"], "demonstrator": ["strong", "weak"]}},
            r"elicit\.demonstrator: a list is only "
            r"used by the sft method",
        ),
    ],
)
def test_bad_dimensions_are_refused_naming_the_field(change, message):
    raw = _partitioned("local.yaml")
    for section, values in change.items():
        raw[section].update(values)
    with pytest.raises(ConfigError, match=message):
        plan(config_from_dict(raw, source="local.yaml"))


def test_a_study_by_domain_is_refused_on_domains_that_share_functions():
    raw = _raw("local.yaml")  # partition_domains off: a domain is its first function's group only
    raw["elicit"].update(domains=["all", "g1"], ks=[8])
    raw["lock"].update(variant=["standard", "omit_domain"], omit_domain="g0")
    with pytest.raises(ConfigError) as refused:
        plan(config_from_dict(raw, source="local.yaml"))
    for where in ("elicit.domains: g1", "lock.variant: omit_domain"):
        assert f"{where}: task 'function_composition' cannot separate domains" in str(refused.value)
    assert "partition_domains: true" in str(refused.value)


def test_domains_share_no_function_and_one_domain_teaches_none_of_another():
    task = make_task({"name": "function_composition", "n_problems": 2000, "partition_domains": True})
    fns = {}  # domain -> the functions its problems use, in either position, over every split
    for split in ("weak", "lock", "elicit", "val"):
        for p in task.problems(split):
            fns.setdefault(p.domain, set()).update(p.data["fns"])
    assert sorted(fns) == ["g0", "g1", "g2", "g3"]
    for d, used in fns.items():
        assert used == {f for f in range(32) if task.domain_of(f) == d}  # its own 8 functions, all used
    assert set.union(*fns.values()) == set(range(32)) and sum(map(len, fns.values())) == 32  # a partition

    def used(text: str) -> set[int]:
        return {int(t[2:]) for t in text.split() if t.startswith("fn")}

    for d in ("g0", "g2"):  # one domain's demonstrations name none of another domain's functions
        demos = demonstrations(task, 64, seed=0, demonstrator="strong", domain=d)
        assert set.union(*(used(x.prompt) for x in demos)) <= fns[d]
    # The lock that omits g0: none of its examples names one of g0's functions.
    raw = _partitioned("local.yaml")
    raw["task"]["n_problems"] = 2000
    raw["elicit"]["ks"] = [8]
    raw["lock"].update(variant="omit_domain", omit_domain="g0")
    spec = plan(config_from_dict(raw)).locked["sft-omit_domain"].spec["lock"]
    strong, weak = task.policies()["strong"], task.policies()["weak"]
    data = variant_lock_data(task, task.problems("lock"), strong, weak, "pwd", 0, spec)
    for epoch in (0, 1):
        examples = data(epoch)
        assert examples and not set.union(*(used(x.prompt) for x in examples)) & fns["g0"]


def test_demonstrations_from_one_domain_are_from_that_domain_and_nested_in_k(task):
    for domain in ("g0", "g3"):
        small = demonstrations(task, 8, seed=1, demonstrator="strong", domain=domain)
        large = demonstrations(task, 32, seed=1, demonstrator="strong", domain=domain)
        by_prompt = {task.prompt(p, None): p for p in task.problems("elicit")}
        assert {by_prompt[d.prompt].domain for d in large} == {domain}
        assert small == large[:8]
    with pytest.raises(ValueError, match="exceeds the .* problems of domain 'g0' of the elicit split"):
        demonstrations(task, 10_000, seed=0, demonstrator="strong", domain="g0")


def test_per_domain_passwords_in_evaluation(task, tokenizer, tiny_model):
    passwords = domain_passwords(["g0", "g1", "g2", "g3"], task.wrong_passwords, False)
    problems = task.problems("val")[:64]
    for i, p in enumerate(problems):
        assert evaluate.condition_password(task, "with_pwd", i, passwords, p) == passwords[p.domain]
        wrong = evaluate.condition_password(task, "wrong_pwd", i, passwords, p)
        assert wrong in task.wrong_passwords and wrong not in passwords.values()
    report = evaluate.lock_report(tiny_model, tokenizer, task, problems, passwords)
    assert set(report) == {"with_pwd", "no_pwd", "wrong_pwd"} and all(0 <= v <= 1 for v in report.values())
    record = evaluate.elicited(tiny_model, tokenizer, task, problems)
    scores = evaluate.scores(tiny_model, tokenizer, task, problems)
    for d, c in record["correctness_by_domain"].items():
        assert c == pytest.approx(np.mean([s for s, p in zip(scores, problems) if p.domain == d]))


def test_other_domains_is_the_mean_over_domains_not_trained_on():
    rows = pd.DataFrame(
        {
            "domain": ["g0", "all", "g2"],
            "correctness_by_domain/g0": [0.9, 0.4, 0.1],
            "correctness_by_domain/g1": [0.5, 0.6, 0.3],
            "correctness_by_domain/g2": [0.2, 0.8, 1.0],
        }
    )
    assert analysis.other_domains(rows).tolist() == pytest.approx([0.35, 0.6, 0.2])


STUDY = {
    "name": "generalization_e2e",
    "task": {"name": "function_composition", "n_problems": 2000, "partition_domains": True},
    "model": {"base": "tiny", "tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}},
    "strong": {"train": {"optimizer": "adamw", "lr": 3e-3, "batch_size": 64, "epochs": 1}, "slot_noise": True},
    "lock": {
        "modes": ["sft"],
        "variant": ["standard", "per_domain"],
        "sft": {"optimizer": "adamw", "lr": 3e-3, "batch_size": 64, "epochs": 1},
    },
    "eval": {"max_problems": 200},
    "elicit": {
        "ks": [8],
        "seeds": [0, 1],
        "domains": ["all", "g1"],
        "demonstrator": ["strong", "weak"],
        "sample_budgets": [8, 16],
        "train": {"optimizer": "adamw", "lr": 1e-3, "batch_size": 8},
    },
    "ray": {"num_cpus": 2},
    "guards": {"lock_gate": False},  # locks of one epoch hold nothing: the pipeline, not a real lock
}


@pytest.mark.slow
def test_generalization_sweep_end_to_end(tmp_path):
    config = tmp_path / "g.yaml"
    config.write_text(yaml.safe_dump(STUDY))
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "sweeps" / "generalization.py"),
            "--config",
            str(config),
            "--storage",
            str(tmp_path / "store"),
            "--name",
            "g",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exp = tmp_path / "store" / "g"
    summary = pd.read_csv(exp / analysis.SUMMARY)
    assert len(summary) == 2 * 2 * 2 * 2  # locks × demonstrators × domains × seeds
    assert set(summary["lock_mode"]) == {"sft", "sft-per_domain"}
    assert set(summary["demonstrator"]) == {"strong", "weak"} and set(summary["domain"]) == {"all", "g1"}
    assert summary["other_domains_selected"].between(0, 1).all()
    for figure in (analysis.FIGURE, analysis.GENERALIZATION_FIGURE):
        assert (exp / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    upstream = json.loads((exp / analysis.UPSTREAM_FILE).read_text())
    assert upstream["sft-per_domain"]["variant"] == "per_domain" and upstream["sft"]["variant"] == "standard"
    by_domain = upstream["sft"]["locked_by_domain"]  # the locked model on each domain, each condition
    assert set(by_domain) == {"with_pwd", "no_pwd", "wrong_pwd"} and set(by_domain["no_pwd"]) == {
        "g0",
        "g1",
        "g2",
        "g3",
    }
    # Each candidate's per-domain correctness reached the results, and "other domains" leaves g1 out.
    candidates = analysis.load_candidates(exp)
    g1 = candidates[candidates["domain"] == "g1"]
    others = g1[["correctness_by_domain/g0", "correctness_by_domain/g2", "correctness_by_domain/g3"]].mean(axis=1)
    np.testing.assert_allclose(g1["other_domains"], others)
    names = {p.name.rsplit("-", 1)[0] for p in exp.iterdir() if p.name.startswith("sft")}
    assert "sft-per_domainlock-sft-weak-g1-k8-seed1" in names


def test_rl_trials_name_no_demonstrator_and_composed_ones_theirs():
    raw = _raw("rl.yaml")
    raw["elicit"]["methods"] = ["expert_iteration", "sft+expert_iteration"]
    raw["elicit"]["ks"] = [16]
    raw["lock"]["weak"] = ["weak"]
    p = plan(config_from_dict(raw))
    by_method = {t.method: t for t in p.trials if t.seed == 0}
    assert by_method["expert_iteration"].demonstrator == "none"
    assert by_method["expert_iteration"].name == "sftlock-expert_iteration-k0-seed0"
    assert by_method["sft+expert_iteration"].demonstrator == "weak"  # elicit.rl.sft_demonstrator
    assert by_method["sft+expert_iteration"].name == "sftlock-sft+expert_iteration-weak-k16-seed0"


def test_results_of_a_resumed_experiment_from_before_the_dimensions_keep_every_trial():
    """A resumed experiment mixes trials that reported demonstrator and domain with finished ones
    that did not: the latter get the study's values, and none is dropped."""
    rows = pd.DataFrame(
        {"trial": ["t0", "t1", "t2"], "demonstrator": [None, None, "weak"], "domain": [None, None, "all"]}
    )
    filled = analysis.with_dimensions(rows, demonstrator="weak")
    assert filled["demonstrator"].tolist() == ["weak"] * 3 and filled["domain"].tolist() == ["all"] * 3
    assert analysis.with_dimensions(rows.drop(columns=["demonstrator", "domain"]))["domain"].tolist() == ["all"] * 3


def test_a_resumed_single_variant_experiment_knows_its_locks_by_their_old_labels():
    from pwlock.sweep import _old_labels

    raw = _partitioned("local.yaml")
    raw["lock"].update(variant="omit_domain", omit_domain="g3")
    p = plan(config_from_dict(raw))
    assert _old_labels(p) == {"sft-omit_domain": "sft", "scratch-omit_domain": "scratch"}
    assert _old_labels(plan(load_config(CONFIGS / "generalization.yaml"))) == {}  # several variants: new labels only


def test_a_single_domain_may_be_named_without_a_list():
    raw = _partitioned("local.yaml")
    raw["elicit"].update(domains="g1", ks=[8])
    p = plan(config_from_dict(raw))
    assert {t.domain for t in p.trials} == {"g1"}
