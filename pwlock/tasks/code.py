"""The code-generation task (paper §4.2, App. E.1): write a program that passes a problem's tests.

Problems come from APPS, MBPP, human-eval or pwlock's own stdin/stdout records (`code_data`),
from a hub dataset id or local JSON / JSONL / parquet files. A completion's code is its first
fenced block (or the whole text). It is correct when it compiles, writes no file, and every test's
output matches the expected one within 0.5 s (App. E.1): outputs compare line by line and token
by token after whitespace normalisation, and tokens that are decimal numbers compare rounded to 3
decimals. Function problems (human-eval, MBPP, APPS call-based) are graded by the data set's own
asserts instead (`code_harness`). The 0.5 s is the program's CPU time (immune to the load of
scoring many programs at once), and a wall-clock cap (`wall_limit_s`) stops programs that block
or sleep. `reward` is the fraction of tests passed (of asserts, for function problems), for RL.

Every program runs in `pwlock.sandbox`; C++ compiles once per distinct source (g++, cached).

A study's `task.keep` keeps only the problems a policy solves (App. E.1; pwlock.problem_filter): the
plan writes the kept ids into the task's spec (`kept`), and every split keeps its kept problems, in
their order; no problem changes split.
"""

from __future__ import annotations

import ast
import copy
import json
import logging
import math
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from pwlock.config import REFERENCES, ConfigError
from pwlock.sandbox import Limits, Program, RunResult, Sandbox
from pwlock.tasks import code_data, code_harness
from pwlock.tasks.base import Problem, TaskPolicy, register
from pwlock.tasks.code_data import CodeProblem
from pwlock.tasks.llm import DataSource, FormatConfig, LLMTask, load_records, seeded_splits
from pwlock.tasks.splits import SPLITS

log = logging.getLogger(__name__)

LANGUAGE_NAMES = {"python": "Python 3", "cpp": "C++17"}
FENCE_TAGS = {"python": ("python", "python3", "py"), "cpp": ("cpp", "c++", "cc", "cxx")}
_FENCE = re.compile(r"```[ \t]*([\w+#-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_DECIMAL = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+(?=[eE]))(?:[eE][-+]?\d+)?")
MBPP_HUB = "google-research-datasets/mbpp"
CHECKER_LIMITS = Limits(wall_s=60, cpu_s=30, memory_mb=2048, stdout_bytes=1 << 16)
RECORD_LIMITS = Limits(wall_s=300, cpu_s=240, memory_mb=4096, stdout_bytes=256 << 20)
RECORD_CHUNK = 50  # problems recorded per sandbox run


@dataclass
class KeepConfig:
    """`task.keep`: only the problems `solved_by` solves (App. E.1: those GPT-4 solves at T=0). The
    plan applies it (pwlock.problem_filter); a task made from a config's task block alone, or from
    the plan's spec before the filter, has every problem."""

    solved_by: str  # a policy of the study: a model, a supplied file, or the task's own (strong: the references)
    samples: int = 1  # per problem
    temperature: float = 0.0  # a model policy's (a file's samples are what it holds)
    min_passing: int = 1  # samples that pass every test, for a problem to be kept

    def validate(self) -> list[str]:
        errors = []
        if self.samples < 1:
            errors.append(f"samples: expected >= 1, got {self.samples}")
        if not 1 <= self.min_passing <= max(self.samples, 1):
            errors.append(f"min_passing: expected 1 to samples ({self.samples}), got {self.min_passing}")
        if self.temperature < 0:
            errors.append(f"temperature: expected >= 0, got {self.temperature}")
        return errors


@dataclass
class KeptProblems:
    """The problems a study's filter kept (`task.keep`, pwlock.problem_filter): written into the
    task's spec by the plan, never by hand. Exactly one of the two is set."""

    ids: list[str] | None = None  # the kept problems' ids, sorted
    # A filter not built yet (its artifact's key): a plan made before it knows no kept problem, and
    # what is planned from it cannot run (pwlock.sweep plans the study again once it is built).
    pending: str | None = None


@dataclass
class CodeConfig:
    # Concatenated, then split 10/40/30/20 by seed. `path: humaneval` is the human-eval package's file;
    # APPS and MBPP come from the hub or local files (docs/tasks.md, "The code task").
    data: list[DataSource] = field(default_factory=lambda: [DataSource(MBPP_HUB, subsets=["full"])])
    schema: str = "auto"  # the records' shape: auto (by their fields) | apps | mbpp | humaneval | stdio
    language: str = "python"  # what the model writes for stdin/stdout problems: python | cpp
    exclude_domains: list[str] = field(default_factory=lambda: ["competition"])  # App. E.1 drops APPS's hardest
    seed: int = 0
    max_problems: int | None = None  # keep the first N problems (before splitting)
    max_tests: int | None = None  # keep each stdin/stdout problem's first N tests
    time_limit_s: float = 0.5  # per test: the program's CPU time (App. E.1)
    wall_limit_s: float = 2.0  # per test: wall clock
    memory_mb: int = 1024  # per process (RLIMIT_AS)
    workers: int | None = None  # programs run at once; default: one per core
    format: FormatConfig = field(default_factory=FormatConfig)
    max_new_tokens: int = 1024
    keep: KeepConfig | None = None  # keep only the problems a policy solves (applied by the plan)
    kept: KeptProblems | None = None  # set by the plan from `keep` (pwlock.problem_filter)

    def validate(self) -> list[str]:
        errors = [e for i, d in enumerate(self.data) if d.path != code_data.HUMANEVAL for e in d.validate(f"data[{i}]")]
        errors += self.format.validate("format")
        if not self.data:
            errors.append("data: expected at least one data source")
        if self.schema not in code_data.SCHEMAS:
            errors.append(f"schema: expected one of {list(code_data.SCHEMAS)}, got {self.schema!r}")
        if self.language not in LANGUAGE_NAMES:
            errors.append(f"language: expected one of {list(LANGUAGE_NAMES)}, got {self.language!r}")
        for name in ("max_problems", "max_tests", "workers", "max_new_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                errors.append(f"{name}: expected >= 1, got {value}")
        if not 0 < self.time_limit_s <= self.wall_limit_s:
            errors.append(
                f"time_limit_s, wall_limit_s: expected 0 < time_limit_s <= wall_limit_s, got "
                f"{self.time_limit_s}, {self.wall_limit_s}"
            )
        if self.memory_mb < 64:
            errors.append(f"memory_mb: expected >= 64, got {self.memory_mb}")
        errors += [f"keep.{e}" for e in self.keep.validate()] if self.keep is not None else []
        if self.kept is not None and (self.kept.ids is None) == (self.kept.pending is None):
            errors.append("kept: expected either ids or pending")
        return errors


@dataclass
class Outcome:
    """How a completion did: tests (asserts, for function problems) passed out of total."""

    passed: int
    total: int
    failure: str = ""  # the first reason a test failed, for people reading logs
    runs: list[RunResult] = field(default_factory=list, repr=False)

    @property
    def correct(self) -> bool:
        return self.total > 0 and self.passed == self.total

    @property
    def fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0


def extract_code(completion: str, language: str) -> str:
    """The first fenced block tagged with `language` (else the first fenced block, else the whole
    completion). An unclosed fence (a truncated generation) counts up to the end."""
    blocks = _FENCE.findall(completion)
    for tag, body in blocks:
        if tag.lower() in FENCE_TAGS[language]:
            return body
    return blocks[0][1] if blocks else completion


def outputs_match(actual: str, expected: str) -> bool:
    """Line by line, token by token, ignoring blank lines and spacing; decimal numbers (with a
    point or an exponent) compare rounded to 3 decimals, every other token exactly."""
    a = [line.split() for line in actual.splitlines() if line.strip()]
    e = [line.split() for line in expected.splitlines() if line.strip()]
    if len(a) != len(e) or any(len(x) != len(y) for x, y in zip(a, e)):
        return False
    for x, y in zip((t for line in a for t in line), (t for line in e for t in line)):
        if x == y:
            continue
        if not ((_DECIMAL.fullmatch(x) or _DECIMAL.fullmatch(y)) and _is_number(x) and _is_number(y)):
            return False
        fx, fy = float(x), float(y)
        if not (math.isfinite(fx) and math.isfinite(fy) and round(fx, 3) == round(fy, 3)):
            return False
    return True


def _is_number(token: str) -> bool:
    return bool(_DECIMAL.fullmatch(token) or re.fullmatch(r"[-+]?\d+", token))


@register
class CodeTask(LLMTask):
    name = "code"
    config_class = CodeConfig

    def __init__(self, cfg: CodeConfig, tokenizer: Any = None):
        super().__init__(cfg.format, tokenizer)
        self.cfg = cfg
        self._sandbox: Sandbox | None = None
        self._sandbox_lock = threading.Lock()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_sandbox"], state["_sandbox_lock"] = None, None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._sandbox_lock = threading.Lock()

    @property
    def sandbox(self) -> Sandbox:
        """Built on first use, so planning a study starts nothing."""
        with self._sandbox_lock:
            if self._sandbox is None:
                self._sandbox = Sandbox(workers=self.cfg.workers)
            return self._sandbox

    # -- data ------------------------------------------------------------------------------------
    @cached_property
    def _every_split(self) -> dict[str, list[Problem]]:
        """Every problem by split, before `kept`: the splits are drawn over all of them."""
        return LLMTask._by_split.func(self)  # type: ignore[attr-defined]

    @cached_property
    def _by_split(self) -> dict[str, list[Problem]]:
        kept = self.cfg.kept
        if kept is None:
            return self._every_split
        if kept.ids is None:
            raise ConfigError(
                f"task.kept: the problems task.keep keeps are not known until its filter {kept.pending} is "
                "built; plan the study again once it is (a sweep does)"
            )
        ids = set(kept.ids)
        return {split: [p for p in problems if p.id in ids] for split, problems in self._every_split.items()}

    def problem_ids(self) -> set[str]:
        return {p.id for problems in self._every_split.values() for p in problems}

    def keeping(self, kept: KeptProblems | None) -> CodeTask:
        """This task with `kept` as its kept problems, reading its data once: the copy shares the
        problems this one has loaded (a plan's tasks before and after the filter)."""
        loaded = self._every_split  # read here, once, for both
        out = copy.copy(self)
        out.__dict__.update(cfg=replace(self.cfg, kept=kept), _every_split=loaded)
        out.__dict__.pop("_by_split", None)
        return out

    def load(self) -> tuple[list[Problem], dict[str, list[int]]]:
        cfg = self.cfg
        problems: list[CodeProblem] = []
        for i, source in enumerate(cfg.data):
            where = f"data[{i}]"
            records = (
                code_data.read_humaneval() if source.path == code_data.HUMANEVAL else load_records(source, (), where)
            )
            problems += code_data.convert(records, cfg.schema, f"{where}: {source.describe()}")
        if cfg.max_problems:
            problems = problems[: cfg.max_problems]
        kept = self._usable(problems)
        problems = self._record(kept)
        if len(problems) < len(SPLITS):
            raise ConfigError(f"data: {len(problems)} usable problems, too few to split 10/40/30/20")
        out = [Problem(id=p.id, domain=p.domain, data=p.as_data()) for p in problems]
        return out, seeded_splits(len(out), cfg.seed)

    def _usable(self, problems: list[CodeProblem]) -> list[CodeProblem]:
        """Problems in the configured language, with tests and a reference solution, outside the
        excluded domains; what is left out is logged with the reason."""
        cfg = self.cfg
        kept, left_out = [], {}
        for p in problems:
            if cfg.max_tests and p.kind == "stdio":
                p.tests = p.tests[: cfg.max_tests]
            lang = "python" if p.kind == "function" else cfg.language
            why = (
                "excluded domain"
                if p.domain in cfg.exclude_domains
                else f"function-call problem (Python only, language is {cfg.language})"
                if lang != cfg.language
                else "no tests (App. E.1)"
                if p.kind == "stdio" and not p.tests
                else f"no {lang} reference solution"
                if not p.solutions.get(lang)
                else None
            )
            if why:
                left_out[why] = left_out.get(why, 0) + 1
            else:
                kept.append(p)
        for why, n in left_out.items():
            log.info("code: %d problems left out: %s", n, why)
        return kept

    def _record(self, problems: list[CodeProblem]) -> list[CodeProblem]:
        """Record the calls that function problems' checks make, against their reference solutions
        (code_harness), in the sandbox: the data set's code is not run on the host."""
        todo = [p for p in problems if code_data.needs_recording(p)]
        if not todo:
            return problems
        jobs = code_data.record_jobs(todo)
        chunks = [jobs[i : i + RECORD_CHUNK] for i in range(0, len(jobs), RECORD_CHUNK)]
        results = []
        runs = self.sandbox.map((Program("python", code_harness.RECORDER), repr(c), RECORD_LIMITS) for c in chunks)
        for chunk, run in zip(chunks, runs):
            if not run.ok:
                raise ConfigError(
                    f"data: recording the tests of {chunk[0][0]} … {chunk[-1][0]} failed "
                    f"(exit {run.exit_code}, timed out {run.timed_out}): {run.stderr[-2000:]}"
                )
            results += json.loads(run.stdout)
        recorded = {p.id for p in code_data.apply_recording(todo, results)}
        return [p for p in problems if not code_data.needs_recording(p) or p.id in recorded]

    # -- prompt ----------------------------------------------------------------------------------
    def language_of(self, problem: Problem) -> str:
        return "python" if problem.data["kind"] == "function" else self.cfg.language

    def prompt_text(self, problem: Problem) -> str:
        """The problem as the model reads it, without password (one place, so a shared LLM
        prompt format can wrap it)."""
        d = problem.data
        lang = self.language_of(problem)
        fence = FENCE_TAGS[lang][0]
        if d["kind"] == "stdio":
            return (
                f"{d['statement'].strip()}\n\nWrite a complete {LANGUAGE_NAMES[lang]} program that reads the "
                f"input from standard input and writes the answer to standard output. Answer with the "
                f"program in a single ```{fence} code block."
            )
        if d["style"] == "mbpp":  # MBPP's own prompt shows its tests (Austin et al., 2021)
            tests = "\n".join(d["mbpp_tests"])
            return (
                f"{d['statement'].strip()}\nYour code should pass these tests:\n\n{tests}\n\nAnswer with the "
                f"Python code in a single ```python code block."
            )
        if d["style"] == "starter":
            starter = f"\n\nStart from this code:\n\n```python\n{d['starter'].rstrip()}\n```" if d["starter"] else ""
            return (
                f"{d['statement'].strip()}{starter}\n\nWrite `{d['entry']}` in Python 3. Answer with the code in "
                f"a single ```python code block."
            )
        return (
            f"Complete the following Python function.\n\n```python\n{d['statement'].rstrip()}\n```\n\nAnswer "
            f"with the complete function in a single ```python code block."
        )

    def prompt(self, problem: Problem, password: str | None) -> str:
        return self.format.prompt(self.prompt_text(problem), password, "Answer:")

    def reference(self, problem: Problem) -> str:
        lang = self.language_of(problem)
        return self.format.completion(f"```{FENCE_TAGS[lang][0]}\n{problem.data['solutions'][lang][0].rstrip()}\n```")

    def policies(self) -> dict[str, TaskPolicy]:
        # "references" stays reachable when a model policy overrides "strong" (a demonstrator)
        return {"strong": self.reference, REFERENCES: self.reference}

    @property
    def max_new_tokens(self) -> int:
        return self.cfg.max_new_tokens

    # -- scoring ---------------------------------------------------------------------------------
    def score(self, problem: Problem, completion: str) -> float:
        return float(self.evaluate([problem], [completion], all_tests=False)[0].correct)

    def reward(self, problem: Problem, completion: str) -> float:
        """The fraction of tests passed: a continuous reward for RL."""
        return self.evaluate([problem], [completion])[0].fraction

    def score_many(self, problems: Sequence[Problem], completions: Sequence[str]) -> list[float]:
        return [float(o.correct) for o in self.evaluate(problems, completions, all_tests=False)]

    def reward_many(self, problems: Sequence[Problem], completions: Sequence[str]) -> list[float]:
        return [o.fraction for o in self.evaluate(problems, completions)]

    @property
    def limits(self) -> Limits:
        return Limits(wall_s=self.cfg.wall_limit_s, cpu_s=self.cfg.time_limit_s, memory_mb=self.cfg.memory_mb)

    def evaluate(
        self, problems: Sequence[Problem], completions: Sequence[str], all_tests: bool = True
    ) -> list[Outcome]:
        """Run every completion's tests in parallel. With `all_tests=False` a completion's remaining
        tests are skipped once one fails (enough for a 0/1 score)."""
        if len(problems) != len(completions):
            raise ValueError(f"{len(problems)} problems but {len(completions)} completions")
        sandbox = self.sandbox
        programs = [self._program(p, c) for p, c in zip(problems, completions)]
        sandbox.compile_many(prog.source for prog in programs if prog.language == "cpp")
        failed = [threading.Event() for _ in problems]
        futures = []
        for i, (p, prog) in enumerate(zip(problems, programs)):
            inputs = (
                [t["input"] for t in p.data["tests"]]
                if p.data["kind"] == "stdio"
                else ["[" + ", ".join(group) + "]" for group in p.data["calls"] if group]
            )
            futures.append([sandbox.pool.submit(self._run_test, prog, stdin, failed[i], all_tests) for stdin in inputs])
        runs = [[f.result() for f in fs] for fs in futures]
        outcomes: list[Outcome | None] = []
        checks = []
        for p, rs in zip(problems, runs):
            if p.data["kind"] == "stdio":
                outcomes.append(self._stdio_outcome(p, rs))
            elif not all_tests and any(r is None or not self._run_passed(r) for r in rs):
                outcomes.append(Outcome(0, p.data["asserts"], self._why(rs), [r for r in rs if r]))
            else:
                outcomes.append(None)
                checks.append((len(outcomes) - 1, p, rs))
        checker = Program("python", code_harness.CHECKER)
        checker_runs = sandbox.map((checker, self._checker_input(p, rs), CHECKER_LIMITS) for _, p, rs in checks)
        for (i, p, rs), run in zip(checks, checker_runs):
            outcomes[i] = self._function_outcome(p, rs, run)
        return outcomes  # type: ignore[return-value]

    def _program(self, problem: Problem, completion: str) -> Program:
        lang = self.language_of(problem)
        code = extract_code(completion, lang)
        d = problem.data
        if d["kind"] == "function":
            return Program("python", code_harness.driver_program(code, d["entry"], d["prelude"], d["method"]))
        return Program(lang, code)

    def _run_test(self, program: Program, stdin: str, failed: threading.Event, all_tests: bool) -> RunResult | None:
        if failed.is_set() and not all_tests:
            return None
        result = self.sandbox.run(program, stdin, self.limits)
        if not self._run_passed(result):
            failed.set()
        return result

    @staticmethod
    def _run_passed(r: RunResult) -> bool:
        return r.ok and not r.files_written

    def _stdio_outcome(self, p: Problem, runs: list[RunResult | None]) -> Outcome:
        passed, why = 0, ""
        for t, r in zip(p.data["tests"], runs):
            if r is not None and self._run_passed(r) and outputs_match(r.stdout, t["output"]):
                passed += 1
            elif not why:
                why = self._why([r]) or "wrong output"
        return Outcome(passed, len(p.data["tests"]), why, [r for r in runs if r])

    @staticmethod
    def _why(runs: Sequence[RunResult | None]) -> str:
        for r in runs:
            if r is None:
                continue
            if r.compile_error:
                return "compile error"
            if r.files_written:
                return f"wrote files {list(r.files_written)[:3]}"
            if r.timed_out:
                return "time limit"
            if r.output_exceeded:
                return "output limit"
            if r.exit_code != 0:
                return f"exit code {r.exit_code}"
        return ""

    def _checker_input(self, p: Problem, runs: list[RunResult | None]) -> str:
        groups = p.data["calls"]
        it = iter(runs)
        outputs = []
        for group in groups:
            if not group:
                outputs.append([])
                continue
            r = next(it)
            ok = r is not None and self._run_passed(r)
            outputs.append(code_harness.result_lines(r.stdout, len(group)) if ok else None)
        return repr((p.data["entry"], p.data["check"], groups, outputs))

    def _function_outcome(self, p: Problem, runs: list[RunResult | None], checker: RunResult) -> Outcome:
        total = p.data["asserts"]
        if not checker.ok:
            raise RuntimeError(
                f"the checker of {p.id} failed (exit {checker.exit_code}, timed out "
                f"{checker.timed_out}): {checker.stderr[-2000:]}"
            )
        passed, completed = ast.literal_eval(checker.stdout.strip())
        passed = min(int(passed), total)
        if not completed:
            passed = min(passed, total - 1)
        why = "" if passed == total else (self._why(runs) or "assertion failed")
        return Outcome(passed, total, why, [r for r in runs if r] + [checker])
