"""App. G.3's own budgets, free: an SFT trial with other budgets also evaluates the paper's epoch
candidates inside the same run, and summary.csv carries both selections."""

from __future__ import annotations

import pandas as pd

from pwlock import analysis
from pwlock.config import TrainConfig
from pwlock.elicit.sft import DEFAULT_BUDGETS, demonstrations, elicit_sft, epoch_candidates, paper_candidates
from pwlock.models import build_tiny_model
from tests.conftest import TINY

LOCAL_BUDGETS = [2048, 4096, 8192]  # sweeps/configs/local.yaml


def test_paper_candidates_are_the_papers_where_the_run_reaches_them():
    assert epoch_candidates(8, LOCAL_BUDGETS) == [256, 512, 1024] and paper_candidates(8, LOCAL_BUDGETS) == [
        32,
        64,
        128,
    ]
    assert epoch_candidates(2048, LOCAL_BUDGETS) == [1, 2, 4] and paper_candidates(2048, LOCAL_BUDGETS) == [1, 2, 4]
    assert paper_candidates(512, LOCAL_BUDGETS) == [1, 2, 4]  # configured 4, 8, 16
    assert paper_candidates(8, DEFAULT_BUDGETS) == epoch_candidates(8)  # the same candidates: nothing extra
    assert paper_candidates(8, [8, 16]) == []  # the run stops at 2 epochs, before the paper's 32: none of them


def test_paper_candidates_are_evaluated_within_the_run_as_a_run_of_their_own_would(task, tokenizer):
    demos = demonstrations(task, 256, seed=0, demonstrator="strong")
    problems = task.problems("val")[:100]
    train = TrainConfig(optimizer="adamw", lr=1e-3, batch_size=64, warmup_steps=4)
    budgets = [512, 1024, 2048]  # configured 2, 4, 8 epochs; the paper's 1, 2, 4
    reported = []
    records = elicit_sft(
        build_tiny_model(TINY, tokenizer, seed=0), tokenizer, task, demos, problems, train, 0, budgets, reported.append
    )
    assert reported == records  # every record reported as the run reaches it
    got = [(r["epochs"], r["candidate"], r["configured"], r["paper_candidate"]) for r in records]
    assert got == [(1, 4, False, 1), (2, 1, True, 2), (4, 2, True, 3), (8, 3, True, None)]
    # A run with the paper's budgets alone gives the same numbers at its candidates: one run serves both.
    alone = elicit_sft(build_tiny_model(TINY, tokenizer, seed=0), tokenizer, task, demos, problems, train, 0)
    assert [r["epochs"] for r in alone] == [1, 2, 4]
    paper = {r["epochs"]: r["correctness"] for r in records if r["paper_candidate"]}
    assert paper == {r["epochs"]: r["correctness"] for r in alone}


def _rows(seed: int, correct: dict[int, float]) -> list[dict]:
    """A trial's candidate rows as load_candidates gives them: k = 256, budgets [512, 1024, 2048]."""
    number = {2: (1, True, 2), 4: (2, True, 3), 8: (3, True, None), 1: (4, False, 1)}
    base = {"task": "t", "lock_mode": "sft", "method": "sft", "demonstrator": "strong", "domain": "all", "k": 256}
    return [
        {
            **base,
            "trial": f"s{seed}",
            "seed": seed,
            "rl": False,
            "epochs": e,
            "candidate": number[e][0],
            "configured": number[e][1],
            "paper_candidate": number[e][2],
            "correctness": c,
        }
        for e, c in correct.items()
    ]


def test_summary_carries_both_selections():
    candidates = pd.DataFrame(
        _rows(0, {1: 0.30, 2: 0.50, 4: 0.40, 8: 0.90}) + _rows(1, {1: 0.34, 2: 0.46, 4: 0.44, 8: 0.80})
    )
    summary = analysis.summarize(candidates).set_index("seed")
    # Configured: 2, 4 or 8 epochs, best mean at 8; the paper's: 1, 2 or 4, best mean at 2.
    assert (summary["selected_epochs"] == 8).all() and summary["correctness_selected"].tolist() == [0.9, 0.8]
    assert (summary["paper_epochs"] == 2).all() and summary["correctness_paper"].tolist() == [0.5, 0.46]
    # The configured candidates' columns hold those alone; the best is among them.
    assert {c for c in summary if c.startswith("correctness_c")} == {
        "correctness_c1",
        "correctness_c2",
        "correctness_c3",
    }
    assert summary["correctness"].tolist() == [0.9, 0.8]
    text = analysis.table(summary.reset_index())
    assert "App. G.3's own budgets" in text and "0.480 ± 0.020" in text
    # Trials that reported no paper candidate (experiments from before, RL) have no paper selection.
    old = analysis.summarize(candidates.drop(columns=["configured", "paper_candidate"]).query("candidate <= 3"))
    assert "correctness_paper" not in old and "App. G.3's own" not in analysis.table(old)
