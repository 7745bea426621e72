"""LaTeX math rendered as ASCII-math and the answer back: the MATH setting variation's rewrite (paper
App. B.1.3 replaces LaTeX by ASCII-Math). Hand-written: no package on the index converts LaTeX to
ASCII-math both ways, and MATH's LaTeX uses a small set of commands.

    \\frac{a}{b} -> (a)/(b)     \\sqrt{x} -> sqrt(x)     \\sqrt[3]{x} -> root(3)(x)     x^{2} -> x^(2)
    \\le -> <=     \\cdot -> *     \\pi -> pi     ^\\circ -> degrees     $...$ -> ...     \\text{cm} -> cm

`\\boxed{...}` stays a box (its content rendered), so the answer is still found where MATH puts it;
`latex_answer` turns a boxed ASCII-math answer back into LaTeX for the task's judge.
"""

from __future__ import annotations

import re

SYMBOLS = {
    "cdot": "*", "times": "*", "div": "/", "le": "<=", "leq": "<=", "ge": ">=", "geq": ">=", "ne": "!=",
    "neq": "!=", "pi": "pi", "infty": "infinity", "pm": "+-", "mp": "-+", "dots": "...", "ldots": "...",
    "cdots": "...", "approx": "~=", "circ": " degrees", "%": "%", "$": "$", "{": "{", "}": "}", "&": "&",
    "#": "#", "_": "_", "cup": " U ", "cap": " n ", "to": "->", "rightarrow": "->", "Rightarrow": "=>",
    "implies": "=>", "in": " in ", "theta": "theta", "alpha": "alpha", "beta": "beta", "angle": "angle ",
    "triangle": "triangle ", "sim": "~", "equiv": "-=", "mid": "|", "lfloor": "floor(", "rfloor": ")",
    "lceil": "ceil(", "rceil": ")", "prime": "'", "star": "*",
}  # fmt: skip
DROP = {"left", "right", "displaystyle", "limits", "nonumber", "!", "big", "Big", "bigg", "Bigg"}
SPACE = {",", ";", ":", " ", "quad", "qquad"}
UNWRAP = {"text", "textbf", "textit", "mathrm", "mathbf", "mathit", "mbox", "operatorname", "emph", "textnormal"}
FRACS = {"frac", "dfrac", "tfrac"}
_COMMAND = re.compile(r"\\([A-Za-z]+|.)")


def _group(s: str, i: int) -> tuple[str, int]:
    """The argument at `s[i:]` (spaces skipped): a braced group's inside, a command, or one character."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        return "", i
    if s[i] == "{":
        depth = 0
        for j in range(i, len(s)):
            depth += (s[j] == "{") - (s[j] == "}")
            if depth == 0:
                return s[i + 1 : j], j + 1
        return s[i + 1 :], len(s)  # unclosed: the rest
    m = _COMMAND.match(s, i) if s[i] == "\\" else None
    return (m.group(0), m.end()) if m else (s[i], i + 1)


def ascii_math(s: str) -> str:
    """`s` with its LaTeX math written as ASCII-math (prose is left as it is)."""
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c == "$":
            i += 1
        elif c == "\\":
            m = _COMMAND.match(s, i)
            name, i = m.group(1), m.end()
            if name in ("(", ")", "[", "]"):
                continue
            if name in FRACS:
                a, i = _group(s, i)
                b, i = _group(s, i)
                out.append(f"({ascii_math(a)})/({ascii_math(b)})")
            elif name == "sqrt":
                n = None
                if i < len(s) and s[i] == "[":
                    j = s.index("]", i) if "]" in s[i:] else len(s)
                    n, i = s[i + 1 : j], j + 1
                x, i = _group(s, i)
                out.append(f"sqrt({ascii_math(x)})" if n is None else f"root({ascii_math(n)})({ascii_math(x)})")
            elif name in ("boxed", "fbox"):
                x, i = _group(s, i)
                out.append(f"\\boxed{{{ascii_math(x)}}}")
            elif name in UNWRAP:
                x, i = _group(s, i)
                out.append(ascii_math(x))
            elif name in DROP:
                pass
            elif name in SPACE:
                out.append(" ")
            else:
                out.append(SYMBOLS.get(name, name))
        elif c in "^_":
            x, i = _group(s, i + 1)
            inner = ascii_math(x)
            if inner.strip() == "degrees":
                out.append(" degrees")
            else:
                out.append(f"{c}({inner})" if len(inner) != 1 else f"{c}{inner}")
        elif c in "{}":
            i += 1  # a bare group's braces
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _parens(s: str, i: int) -> int:
    """The index just past the parenthesis group opening at `s[i]`."""
    depth = 0
    for j in range(i, len(s)):
        depth += (s[j] == "(") - (s[j] == ")")
        if depth == 0:
            return j + 1
    return len(s)


_WORD = r"(?<![A-Za-z]){}(?![A-Za-z])"
_WORDS = [
    (r"infinity", r"\\infty"), (_WORD.format("pi"), r"\\pi"), (_WORD.format("theta"), r"\\theta"),
    (r"\+-", r"\\pm"), (r"<=", r"\\le "), (r">=", r"\\ge "), (r"!=", r"\\ne "), (r"\*", r"\\cdot "),
    (r" ?degrees\b", r"^\\circ"),
]  # fmt: skip


def latex_answer(a: str) -> str:
    """An ASCII-math answer (as `ascii_math` writes one) in LaTeX: sqrt(x), root(n)(x), (a)/(b),
    ^(x), _(x) and the symbols back, for a LaTeX judge."""
    text = _structure(a)
    for pattern, latex in _WORDS:
        text = re.sub(pattern, latex, text)
    return text


def _structure(a: str) -> str:
    """`latex_answer`'s groups: sqrt, root, fractions, exponents and subscripts."""
    out, i = [], 0
    while i < len(a):
        for head in ("sqrt(", "root("):
            if a.startswith(head, i):
                j = _parens(a, i + len(head) - 1)
                first = _structure(a[i + len(head) : j - 1])
                if head == "root(" and j < len(a) and a[j] == "(":
                    k = _parens(a, j)
                    out.append(f"\\sqrt[{first}]{{{_structure(a[j + 1 : k - 1])}}}")
                    i = k
                else:
                    out.append(f"\\sqrt{{{first}}}")
                    i = j
                break
        else:
            c = a[i]
            if c in "^_" and i + 1 < len(a) and a[i + 1] == "(":
                j = _parens(a, i + 1)
                out.append(f"{c}{{{_structure(a[i + 2 : j - 1])}}}")
                i = j
            elif c == "(":
                j = _parens(a, i)
                if a.startswith("/(", j):  # (a)/(b)
                    k = _parens(a, j + 1)
                    out.append(f"\\frac{{{_structure(a[i + 1 : j - 1])}}}{{{_structure(a[j + 2 : k - 1])}}}")
                    i = k
                else:
                    out.append(f"({_structure(a[i + 1 : j - 1])})")
                    i = j
            else:
                out.append(c)
                i += 1
    return "".join(out)
