"""Plain DPO's samples drawn once upstream (pwlock.elicit.dpo.dpo_samples_artifact): its sampler is
the fixed locked model, so every learning rate's trial of a lock and seed would draw the same samples.
One artifact per lock and seed, shared by the rates' trials, priced once; a trial that reads it
trains and evaluates exactly as one that samples itself; iterated DPO still samples itself."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pwlock.config import config_from_dict
from pwlock.elicit.base import SameModel, problem_subset
from pwlock.elicit.dpo import run_dpo, stored_rounds
from pwlock.models import load_policy
from pwlock.plan import dpo_samples_of, plan
from pwlock.pricing import estimate_plan
from pwlock.stages import build
from pwlock.store import open_store
from pwlock.trial import _elicitation
from tests.test_sweep_e2e import STUDY

RL = {
    "dpo_rounds": 2,
    "dpo_problems": 12,
    "dpo_lr_scales": [1.0, 0.5],
    "dpo_train": {"optimizer": "adamw", "lr": 1e-3, "batch_size": 8, "warmup_steps": 0},
    "eval_every": 1,
    "generator": {"backend": "hf"},
}


def _study(methods: list[str], seeds: list[int]) -> dict:
    lock = {**STUDY["lock"], "modes": ["sft"], "weak": ["weak", "weaker"]}
    elicit = {**STUDY["elicit"], "methods": methods, "seeds": seeds, "rl": RL}
    return {**STUDY, "name": "dpo-samples", "lock": lock, "elicit": elicit, "eval": {"max_problems": 16}}


def test_one_artifact_per_lock_and_seed_shared_by_the_rates_and_priced_once():
    p = plan(config_from_dict(_study(["dpo", "iterated_dpo"], [0, 1])))
    samples = [a for a in p.artifacts if a.stage == "dpo_samples"]
    assert sorted(a.label for a in samples) == [
        f"locked model ({lock}): DPO samples, seed {seed}" for lock in ("sft", "sft-weaker") for seed in (0, 1)
    ]
    assert all(a.deps == (p.locked[a.label.split("(")[1].split(")")[0]].key,) for a in samples)
    assert set(p.setup.dpo_samples.values()) == {a.key for a in samples}
    est = estimate_plan(p)
    trials = {i.id: i for i in est.trials}
    cost = {i.id: i.cost for i in est.artifacts}
    for t in p.trials:
        key = p.setup.dpo_samples[dpo_samples_of(t.lock_mode, t.seed)]
        if t.method == "dpo":  # both rates' trials read the same samples and generate nothing
            assert key in trials[t.name].deps and trials[t.name].cost.generated_tokens == 0
        else:  # iterated DPO samples the model it trains
            assert key not in trials[t.name].deps and trials[t.name].cost.generated_tokens > 0
    # Generated once per lock and seed: what one iterated DPO trial draws (the same rounds and problems).
    iterated = next(t for t in p.trials if t.method == "iterated_dpo")
    assert cost[samples[0].key].generated_tokens == trials[iterated.name].cost.generated_tokens
    # Without plain DPO there is nothing to share.
    assert not [a for a in plan(config_from_dict(_study(["iterated_dpo"], [0]))).artifacts if a.stage == "dpo_samples"]


def test_a_trial_reading_the_shared_samples_trains_as_one_that_samples_itself(tmp_path):
    """The upstream built in process (the toy lock, then its DPO samples), then one DPO trial run twice
    on the same locked model: from the artifact, and sampling itself with the same seeds."""
    p = plan(config_from_dict(_study(["dpo"], [3])))
    store = open_store(str(tmp_path / "store"))
    for a in p.artifacts:
        if a.stage != "lock_audit" and (a.stage != "dpo_samples" or "weaker" not in a.label):
            build(store.spec, a)
    trial = next(t for t in p.trials if t.lock_mode == "sft" and t.lr is None)
    run = trial.run_config()
    locked_dir = str(store.artifact_dir(p.setup.locked_key["sft"]))

    def records(shared: bool) -> list[dict]:
        model, tokenizer = load_policy(locked_dir)
        e = _elicitation(p.setup, store, trial.name, run, model, tokenizer, locked_dir)
        assert (e.dpo_samples is not None) and e.dpo_samples.endswith(p.setup.dpo_samples["sft/seed3"].split("/")[-1])
        if not shared:
            e = dataclasses.replace(e, dpo_samples=None)
        out: list[dict] = []
        run_dpo(e, lambda record, state: out.append(record) if record else None, None, None)
        return out

    shared, itself = records(True), records(False)
    assert [r["candidate"] for r in shared] == [1, 2]
    keys = ("pairs", "steps", "samples", "correctness", "eval_problems")
    assert [{k: r[k] for k in keys} for r in shared] == [{k: r[k] for k in keys} for r in itself]
    # The very samples a trial draws itself: the locked model, seeded by (seed, round) as a trial seeds.
    problems = problem_subset(p.task.problems("elicit"), RL["dpo_problems"], 3)
    stored = stored_rounds(str(store.artifact_dir(p.setup.dpo_samples["sft/seed3"])), [q.id for q in problems])
    ref, tokenizer = load_policy(locked_dir)
    gen = SameModel(ref, tokenizer, p.setup.rl.generator.batch_size)
    prompts = [p.task.prompt(q, None) for q in problems]
    drawn = []
    for r in (1, 2):
        torch.manual_seed(3 * 1000 + r)
        drawn.append(gen.generate(prompts, n=2, temperature=1.0, max_new_tokens=p.task.max_new_tokens))
        assert drawn[-1] == stored(r)
    assert drawn[0] != drawn[1]  # each round draws afresh
    with pytest.raises(ValueError, match="no samples of round 3"):
        stored(3)
