"""CHAMP (Mao et al. 2024): 270 competition problems with people's step-by-step solutions and
answers, shipped on PyPI as `champ-dataset`. A real math data set that works offline, read as MATH
records (`task.train.path: pypi:champ-dataset==1.0.0`, `test: null`): each answer, written in
CHAMP's ASCII math, converted to LaTeX and boxed at the end of its solution; CHAMP's five categories
mapped to the MATH types they belong to; every problem "Level 5" (CHAMP has no levels).
"""

from __future__ import annotations

import json
import re

import sympy
from sympy.parsing.sympy_parser import (
    convert_xor,
    implicit_multiplication_application,
    parse_expr,
    standard_transformations,
)

from pwlock import pypi

PACKAGE = "champ-dataset"

CHAMP_TYPES = {
    "Number-Theory": "Number Theory",
    "Combinatorics": "Counting & Probability",
    "Inequality": "Intermediate Algebra",
    "Polynomial": "Intermediate Algebra",
    "Sequence": "Intermediate Algebra",
}
_T = standard_transformations + (implicit_multiplication_application, convert_xor)
_NAMES = {
    "C": lambda n, k: sympy.binomial(n, k, evaluate=False),
    "floor": sympy.floor,
    "sqrt": sympy.sqrt,
    "f": sympy.Function("f"),
    **{c: sympy.Symbol(c) for c in "abckmnpqrxyz"},
}


def _expr(s: str) -> sympy.Expr:
    """CHAMP's ASCII math (2^(n-1), C(n, 4), sqrt(3)/3, sum_(i=1)^n i^3) as sympy, unevaluated."""
    s = s.replace("−", "-").strip()
    m = re.fullmatch(r"sum_\((\w)=(\w+)\)\^(\w+) (.+)", s)
    if m:
        return sympy.Sum(_expr(m[4]), (sympy.Symbol(m[1]), _expr(m[2]), _expr(m[3])))
    return parse_expr(s, local_dict=_NAMES, transformations=_T, evaluate=False)


def _tex(e: sympy.Expr) -> str:
    # Unevaluated, `-2` is Mul(-1, 2), which sympy prints as "\left(-1\right) 2".
    return re.sub(r"\\left\(-1\\right\) (\d+)", r"-\1", sympy.latex(e))


def champ_answer(raw: str) -> tuple[str, str, list[tuple[str, str]], str]:
    """A CHAMP answer as (kind, LaTeX answer, [(form, the answer in another LaTeX form)], a wrong answer)."""
    segs = re.findall(r"@@(.+?)@@", raw)
    words = raw.replace("@@", "").split(" (")[0]
    if segs and re.fullmatch(r"\[(.+), (.+)\]", segs[0]):  # an interval
        lo, hi = re.fullmatch(r"\[(.+), (.+)\]", segs[0]).groups()
        ref = f"[{_tex(_expr(lo))}, {_tex(_expr(hi))}]"
        return (
            "interval",
            ref,
            [("markup", f"\\left[ {_tex(_expr(lo))}, {_tex(_expr(hi))} \\right]")],
            ref.replace("[", "(", 1),
        )
    if segs and "±" in segs[0]:  # x=±1, ±2, ±1/2 or a(1±sqrt(2)), ...: a set of values
        parts = [p.strip() for p in segs[0].split("=", 1)[-1].split(",")]
        values = [_expr(p.replace("±", sign, 1)) for p in parts for sign in ("+", "-")]
        ref = ", ".join(_tex(v) for v in values)
        others = [("reordered", ", ".join(_tex(v) for v in reversed(values)))]
        if all(re.fullmatch(r"±[\d/]+", p) for p in parts):
            others.insert(0, ("\\pm", ", ".join("\\pm " + _tex(_expr(p[1:])) for p in parts)))
        return "plus-minus set", ref, others, ", ".join(_tex(v) for v in values[:-1])
    if segs and not re.match(r"sum_", segs[0]) and all("=" in s for s in segs) and "<" not in raw:
        # Solutions: x=6, y=5 (one), or (x=1, y=2) and (x=2, y=1) / (x=8, y=2), (x=2, y=8) (several)
        segs = [re.sub(r"^(\w)=(\w)=(.+)$", r"\1=\3, \2=\3", s) for s in segs]  # x=y=0
        sols = [re.split(r",\s*", s.strip("()")) for seg in segs for s in re.split(r"\),\s*\(", seg)]
        sols = [[tuple(t.strip() for t in eq.split("=")) for eq in sol] for sol in sols]
        if all(len(eq) == 2 for sol in sols for eq in sol):
            if len(sols) == 1 and "=" not in sols[0][0][1]:
                sol = sols[0]
                ref = ", ".join(f"{_tex(_expr(a))} = {_tex(_expr(b))}" for a, b in sol)
                wrong = ", ".join(f"{_tex(_expr(a))} = {_tex(_expr(b) + 1)}" for a, b in sol)
                if len(sol) > 1:
                    other = ("reordered", ", ".join(f"{_tex(_expr(a))} = {_tex(_expr(b))}" for a, b in reversed(sol)))
                else:
                    a, b = sol[0]
                    other = ("doubled fraction", f"{_tex(_expr(a))} = \\frac{{2 \\cdot ({_tex(_expr(b))})}}{{2}}")
                return "equations", ref, [other], wrong
            if all(len(sol) > 1 for sol in sols):  # several solutions as tuples

                def tup(sol):
                    return "(" + ", ".join(_tex(_expr(b)) for _, b in sorted(sol)) + ")"

                ref = ", ".join(tup(s) for s in sols)
                wrong = ", ".join(tup(s) for s in sols[:-1]) + ", " + tup([(a, b + "+1") for a, b in sols[-1]])
                return "solution tuples", ref, [("reordered", ", ".join(tup(s) for s in reversed(sols)))], wrong
    if segs and "=" not in re.sub(r"sum_\(\w=\w+\)", "", segs[0]) and "..." not in segs[0] and "≥" not in raw:
        e = _expr(segs[0])
        ref = _tex(e)
        value = sympy.simplify(e.doit())
        others = [("dataset's own", _tex(_expr(s))) for s in segs[1:]]
        if value.is_Rational and not value.is_Integer:
            others.append(
                (
                    "decimal" if 10**6 % value.q == 0 else "unreduced fraction",
                    str(float(value)) if 10**6 % value.q == 0 else f"\\frac{{{2 * value.p}}}{{{2 * value.q}}}",
                )
            )
        others += [
            ("expanded", _tex(sympy.expand(value))),
            ("factored", _tex(sympy.factor(value))),
            ("doubled fraction", f"\\frac{{2 \\cdot ({ref})}}{{2}}"),
            ("parenthesized", f"({ref})"),
        ]
        return "expression", ref, [(f, o) for f, o in others if o != ref], _tex(sympy.Add(value, 1))
    nums = re.fullmatch(r"(-?\d+)(?:, (-?\d+))*(?:,? and (-?\d+))?(?: is the only possible value| \w+)?", words)
    if nums or re.fullmatch(r"-?\d+", words):
        values = re.findall(r"-?\d+", words)
        ref = ", ".join(values)
        if len(values) > 1:
            return (
                "numbers",
                ref,
                [("reordered", ", ".join(reversed(values)))],
                ", ".join(values[:-1] + [str(int(values[-1]) + 1)]),
            )
        n = int(values[0])
        return "number", ref, [("decimal", f"{n}.0"), ("unreduced fraction", f"\\frac{{{2 * n}}}{{2}}")], str(n + 1)
    m = re.search(r"(?:equal to|value for the limit is|period of) (\S+)$", words)
    if m:
        e = _expr(m[1])
        value = e.doit()
        return "expression", _tex(e), [("doubled fraction", f"\\frac{{2 \\cdot ({_tex(e)})}}{{2}}")], _tex(value + 1)
    text = words.replace("@@", "")
    wrong = "\\text{Yes}" if text.startswith("No") else "\\text{No}" if text == "Yes" else "\\text{Yes}"
    others = [("lower case", f"\\text{{{text.lower()}}}"), ("\\mathrm", f"\\mathrm{{{text}}}")]
    return "text", f"\\text{{{text}}}", [(f, o) for f, o in others if o != f"\\text{{{text}}}"], wrong


def math_records(source: str) -> list[dict[str, str]]:
    """CHAMP's problems from the wheel of `source` (pypi:champ-dataset==<version>) as MATH records."""
    problems = json.loads(pypi.cached(source, "v0.json").read_text())["problems"]
    return [
        {
            "problem": p["_text"],
            "level": "Level 5",
            "type": CHAMP_TYPES[p["category"]],
            "solution": "\n".join(s["_text"] for s in p["solution"]["steps"])
            + f"\n\nThe answer is $\\boxed{{{champ_answer(p['_raw_answer'])[1]}}}$.",
        }
        for p in problems.values()
    ]
