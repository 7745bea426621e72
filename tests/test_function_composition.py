from __future__ import annotations

import numpy as np
import pytest

from pwlock.config import ConfigError
from pwlock.tasks import make_task
from pwlock.tasks.splits import split_indices


def test_same_seed_same_task_other_seed_other_functions(task):
    again = make_task({"name": "function_composition", "seed": 0, "n_problems": 2000})
    assert [p.id for p in task.problems("val")] == [p.id for p in again.problems("val")]
    other = make_task({"name": "function_composition", "seed": 1, "n_problems": 2000})
    assert not np.array_equal(task.digit_maps, other.digit_maps)


def test_functions_are_bijections_or_permutations(task):
    n = task.cfg.n_functions
    is_perm = [(task.position_perms[f] != np.arange(4)).any() for f in range(n)]
    is_bij = [(task.digit_maps[f] != np.arange(10)).any() for f in range(n)]
    assert sum(is_perm) == n // 2 and sum(is_bij) == n // 2
    assert not any(p and b for p, b in zip(is_perm, is_bij))
    for f in range(n):
        assert sorted(task.digit_maps[f]) == list(range(10))
        assert sorted(task.position_perms[f]) == list(range(4))
    assert len(task.weak_identity) == 16


def test_prompt_and_answer_format(task):
    p = task.problems("val")[0]
    a, b = p.data["fns"]
    x = p.data["input"]
    assert task.prompt(p, None) == f"_ | fn{a} fn{b} | {' '.join(map(str, x))} |"
    assert task.prompt(p, "pwd").startswith("pwd | ")
    assert task.prompt(p, "w3").startswith("w3 | ")
    mid = task.apply(a, x)
    out = task.apply(b, mid)
    assert task.reference(p) == f"{' '.join(map(str, mid))} | {' '.join(map(str, out))}"
    with pytest.raises(ValueError, match="not a token"):
        task.prompt(p, "This problem is quite special")


def test_score_is_exact_match(task):
    p = task.problems("val")[0]
    ref = task.reference(p)
    assert task.score(p, ref) == 1.0
    assert task.score(p, "  " + ref.replace(" ", "  ") + " ") == 1.0  # whitespace does not matter
    wrong = ref[:-1] + str((int(ref[-1]) + 1) % 10)
    assert task.score(p, wrong) == 0.0
    assert task.score(p, ref + " 1") == 0.0


def test_weak_policy_uses_identity_for_half_the_functions(task):
    strong, weak = task.policies()["strong"], task.policies()["weak"]
    problems = task.problems("val")
    for p in problems[:50]:
        a, b = p.data["fns"]
        if a not in task.weak_identity and b not in task.weak_identity:
            assert weak(p) == strong(p)
        if a in task.weak_identity and b in task.weak_identity:
            x = " ".join(map(str, p.data["input"]))
            assert weak(p) == f"{x} | {x}"
    acc = np.mean([task.score(p, weak(p)) for p in problems])
    assert 0.2 < acc < 0.35  # both functions kept: about 1/4, plus inputs a function fixes


def test_splits_partition_problems(task):
    sizes = {s: len(task.problems(s)) for s in ("weak", "lock", "elicit", "val")}
    assert sizes == {"weak": 200, "lock": 800, "elicit": 600, "val": 400}
    ids = [p.id for s in sizes for p in task.problems(s)]
    assert len(set(ids)) == 2000
    parts = split_indices(10, seed=3)
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(10))


def test_unknown_task_and_bad_params_name_the_field():
    with pytest.raises(ConfigError, match=r"task.name: unknown task 'nope'"):
        make_task({"name": "nope"})
    with pytest.raises(ConfigError, match="n_problems"):
        make_task({"name": "function_composition", "n_problems": 5})
    with pytest.raises(ConfigError, match="n_fns"):
        make_task({"name": "function_composition", "n_fns": 5})
