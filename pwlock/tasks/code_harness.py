"""Function-call problems (human-eval, MBPP, APPS call-based) as stdin/stdout runs, graded by
the data set's own assertions.

A data set like human-eval tests a function with `check(candidate)`: asserts over calls such as
`assert abs(candidate(1.33) - 0.33) < 1e-6`, loops over seeded random inputs, helpers from the
prompt. Turning each assert into a fixed expected output would weaken or change such tests, so
pwlock keeps them and splits the work in three, each run in the sandbox:

1. Recording (once, when the data set loads; trusted code): `check` runs against the reference
   solution through a recorder that logs the arguments of every call, grouped by the top-level
   statement of `check` that made it. Arguments must be Python literals.
2. The program under test: the completion plus a driver that reads one group's calls from stdin
   and prints `repr` of each result, one line per call. It sees arguments only, never expected
   values; its own prints go to stderr. One run per group, each held to the per-test limits.
3. The checker: `check` again, with the candidate replaced by a replay of the program's printed
   results (parsed with `ast.literal_eval`, so nothing the program prints can run) and each
   `assert` turned into a counted verdict. Passed = every assert the reference run executed holds.
   The checker reruns the data set's own code (its helpers, its random draws, seeded per group as
   in the recording), and a replayed call whose arguments differ from the recorded ones fails.

Name resolution is as in human-eval, where `check` runs in the solution's module: a call to the
entry point by name (`sort_third(...)` in HumanEval/33) is a call to the candidate too. Helpers come
from the problem's prelude (the prompt's other definitions), not from the completion, so a program
cannot redefine what its own answers are checked with.
"""

from __future__ import annotations

import ast
import textwrap

GROUP, ASSERT, CANDIDATE = "_pw_group", "_pw_assert", "candidate"

# Before the completion: its own prints must not mix with the results.
DRIVER_HEAD = "import sys as _pw_sys\n_pw_out = _pw_sys.stdout\n_pw_sys.stdout = _pw_sys.stderr\n"

DRIVER_TAIL = """

def _pw_main():
    import ast
    target = {target}
    for args, kwargs in ast.literal_eval(_pw_sys.stdin.read()):
        _pw_out.write(repr(target(*args, **kwargs)) + "\\n")
    _pw_out.flush()


_pw_main()
"""

# Shared by the recorder and the checker: group markers (reseeding `random` as the recording did)
# and counted asserts.
_RUNTIME = """
import ast as _pw_ast, random as _pw_random, sys as _pw_sys


class _PwState:
    group = -1
    call = 0
    passed = 0
    total = 0


def _pw_group(k):
    _PwState.group, _PwState.call = k, 0
    _pw_random.seed(k)


def _pw_assert(cond):
    _PwState.total += 1
    try:
        _PwState.passed += bool(cond())
    except Exception:
        pass
"""

RECORDER = (
    _RUNTIME
    + '''

def _pw_record(problems):
    """problems: [(id, entry, solution source, check source)] -> one JSON-able dict each."""
    import copy, json
    out = []
    for pid, entry, solution, check_source in problems:
        try:
            env = {{"__name__": "__pw_solution__"}}
            exec(compile(solution, f"<{{pid}} solution>", "exec"), env)
            real = env[entry] if entry in env else getattr(env["Solution"](), entry)
            calls = []

            def recorder(*args, **kwargs):
                args, kwargs = list(args), dict(kwargs)
                snapshot = repr((args, kwargs))
                if _pw_ast.literal_eval(snapshot) != (args, kwargs):
                    raise TypeError(f"arguments are not Python literals: {{snapshot[:200]}}")
                while len(calls) <= _PwState.group:
                    calls.append([])
                calls[_PwState.group].append(snapshot)
                _PwState.call += 1
                return real(*copy.deepcopy(args), **copy.deepcopy(kwargs))

            checks = {{"__name__": "__pw_check__", "{assert_}": _pw_assert, "{group}": _pw_group}}
            exec(compile(check_source, f"<{{pid}} check>", "exec"), checks)
            checks[entry] = recorder
            _PwState.passed = _PwState.total = 0
            checks["check"](recorder)
            out.append({{"id": pid, "calls": calls, "asserts": _PwState.total, "passed": _PwState.passed}})
        except BaseException as e:
            out.append({{"id": pid, "error": f"{{type(e).__name__}}: {{e}}"[:500]}})
    print(json.dumps(out))


_pw_record(_pw_ast.literal_eval(_pw_sys.stdin.read()))
'''.format(assert_=ASSERT, group=GROUP)
)

CHECKER = (
    _RUNTIME
    + '''

class _PwFailed(Exception):
    pass


def _pw_check(entry, check_source, calls, outputs):
    """calls[g]: the recorded (args, kwargs) reprs of group g; outputs[g]: the program's stdout
    for group g, or None where its run failed. Prints (asserts passed, whether check completed)."""
    def replay(*args, **kwargs):
        g, i = _PwState.group, _PwState.call
        _PwState.call += 1
        if not (0 <= g < len(outputs)) or outputs[g] is None or i >= len(calls[g]):
            raise _PwFailed
        if _pw_ast.literal_eval(calls[g][i]) != (list(args), dict(kwargs)):
            raise _PwFailed  # the check took another path than in the recording
        return _pw_ast.literal_eval(outputs[g][i])

    checks = {{"__name__": "__pw_check__", "{assert_}": _pw_assert, "{group}": _pw_group}}
    exec(compile(check_source, "<check>", "exec"), checks)
    checks[entry] = replay
    completed = True
    try:
        checks["check"](replay)
    except BaseException:
        completed = False
    print(repr((_PwState.passed, completed)))


_pw_check(*_pw_ast.literal_eval(_pw_sys.stdin.read()))
'''.format(assert_=ASSERT, group=GROUP)
)


class _Instrument(ast.NodeTransformer):
    """`assert X, msg` -> `_pw_assert(lambda: X)` anywhere inside `check`."""

    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        lam = ast.Lambda(
            args=ast.arguments(posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[]), body=node.test
        )
        return ast.copy_location(ast.Expr(ast.Call(ast.Name(ASSERT, ast.Load()), [lam], [])), node)


def instrument_check(test_source: str, prelude: str = "") -> str:
    """The data set's test module (which defines `check(candidate)`) with every top-level
    statement of `check` preceded by a group marker and every assert counted; `prelude` (the
    prompt's helpers) first, as the original check saw them."""
    module = ast.parse(test_source)
    checks = [n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if len(checks) != 1:
        raise ValueError("the test code defines no `check(candidate)` function")
    check = _Instrument().visit(checks[0])
    body: list[ast.stmt] = []
    for k, stmt in enumerate(check.body):
        body.append(ast.Expr(ast.Call(ast.Name(GROUP, ast.Load()), [ast.Constant(k)], [])))
        body.append(stmt)
    check.body = body
    return prelude + "\n\n" + ast.unparse(ast.fix_missing_locations(module)) + "\n"


def check_from_asserts(asserts: list[str], setup: str = "") -> str:
    """A `check(candidate)` made of assert statements (MBPP's test_list), one group each."""
    body = "\n".join(asserts) or "pass"
    return instrument_check("def check(candidate):\n" + textwrap.indent(body, "    ") + "\n", setup)


def strip_definition(source: str, name: str) -> tuple[str, str]:
    """(source without the top-level definition of `name`, that definition's source)."""
    module = ast.parse(source)
    lines = source.splitlines(keepends=True)
    for node in module.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            start = (node.decorator_list[0].lineno if node.decorator_list else node.lineno) - 1
            return "".join(lines[:start] + lines[node.end_lineno :]), "".join(lines[start : node.end_lineno])
    raise ValueError(f"no top-level definition of {name!r}")


def driver_program(code: str, entry: str, prelude: str = "", method: bool = False) -> str:
    """The program run for a function-call problem: the prelude (imports and helpers the prompt
    gave), the completion, and the driver. `method`: the entry is a method of `Solution`
    (LeetCode-style APPS problems)."""
    target = f"Solution().{entry}" if method else entry
    return DRIVER_HEAD + prelude + "\n\n" + code + DRIVER_TAIL.format(target=target)


def result_lines(stdout: str, n_calls: int) -> list[str] | None:
    """The driver's lines for a group, or None if it printed a different number of them."""
    lines = stdout.splitlines()
    return lines if len(lines) == n_calls else None
