"""pwlock's modules by layer, and the imports that break the layering.

    python -m pwlock.tools.layers        # exit 1 on a cycle, an upward import or an unexplained one

A module may import modules of its own layer or of lower ones, never of a higher layer, and the
imports between pwlock's modules form no cycle. Imports inside functions count like any other, and
each needs its reason beside it in a comment (deferring a heavy or optional dependency: seconds of
import for a CLI that must answer --help at once, a package only one task needs). Read from the
source with `ast`: nothing is imported.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]

# Lowest first. A name stands for the module and, for a package, everything in it.
LAYERS: list[tuple[str, list[str]]] = [
    (
        "foundation",
        [
            "pwlock",
            "config",
            "pypi",
            "model_source",
            "passwords",
            "store",
            "integrity",
            "lease",
            "localfs",
            "store_watch",
            "s3server",
            "logs",
            "runtime",
            "localcluster",
            "progress",
            "tune_names",
            "cost",
        ],
    ),
    ("tasks, models, sandbox", ["tasks", "models", "sandbox", "sandbox_launch"]),
    ("train, generate", ["train", "generate", "memory"]),
    ("lock, evaluate, guards", ["lock", "setting", "asciimath", "evaluate", "audit", "guards"]),
    ("artifacts", ["artifacts"]),
    ("elicit, policies, stages", ["elicit", "policies", "soft_labels", "control", "problem_filter", "stages"]),
    ("plan, analysis", ["plan", "pricing", "description", "analysis", "study_record"]),
    ("trial", ["trial", "tune_state"]),
    ("sweep", ["sweep"]),
    ("cli", ["cli", "__main__", "tools"]),
]


@dataclass
class Module:
    name: str  # dotted, without the package prefix ("elicit.sft"); the package itself is "pwlock"
    path: Path
    imports: set[str] = field(default_factory=set)  # pwlock's modules it imports, anywhere in it
    in_functions: list[tuple[int, str]] = field(default_factory=list)  # (line, what) of imports inside functions
    unexplained: list[int] = field(default_factory=list)  # lines of those with no reason (a comment) beside them


def modules(package: Path = PACKAGE) -> dict[str, Module]:
    """Every module of the package with what it imports of the package."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "pwlock"
        found[name] = Module(name, path)
    for m in found.values():
        source = m.path.read_text()
        lines = source.splitlines()
        for node, in_function in _imports(ast.parse(source, str(m.path))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [f"{_absolute(node, m)}.{a.name}" for a in node.names]
            )
            targets = {t for t in map(lambda n: _module_of(n, found), names) if t and t != m.name}
            m.imports |= targets
            if in_function:
                what = (
                    ", ".join(names)
                    if isinstance(node, ast.Import)
                    else f"{_absolute(node, m)}: " + ", ".join(a.name for a in node.names)
                )
                m.in_functions.append((node.lineno, what))
                if not _explained(lines, node):
                    m.unexplained.append(node.lineno)
    return found


def _explained(lines: list[str], node: ast.stmt) -> bool:
    """A reason for an import inside a function: a comment on it, on another import of its block, or
    on the line just above the block (a block of imports shares one reason)."""
    first = node.lineno - 1
    while first > 0 and lines[first - 1].strip().startswith(("import ", "from ")):
        first -= 1
    block = lines[first : node.end_lineno or node.lineno]
    return any("#" in line for line in block) or (first > 0 and lines[first - 1].strip().startswith("#"))


def _imports(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    def walk(node: ast.AST, in_function: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, inside
            yield from walk(child, inside)

    return walk(tree, False)


def _absolute(node: ast.ImportFrom, m: Module) -> str:
    if not node.level:
        return node.module or ""
    here = ["pwlock", *m.name.split(".")] if m.name != "pwlock" else ["pwlock"]
    package = here if m.path.name == "__init__.py" else here[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _module_of(dotted: str, found: dict[str, Module]) -> str | None:
    """The package module a dotted import names (`pwlock.elicit.sft.epochs` -> "elicit.sft")."""
    if dotted != "pwlock" and not dotted.startswith("pwlock."):
        return None
    parts = dotted.split(".")[1:]
    while parts:
        if ".".join(parts) in found:
            return ".".join(parts)
        parts.pop()
    return "pwlock"


def layer_of(name: str) -> int:
    for i, (_, members) in enumerate(LAYERS):
        if any(name == n or name.startswith(n + ".") for n in members):
            return i
    raise KeyError(f"pwlock/{name.replace('.', '/')}.py: in no layer of pwlock.tools.layers.LAYERS")


def cycles(found: dict[str, Module]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(found[v].imports):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                out.append(sorted([v, *component]))

    for v in sorted(found):
        if v not in index:
            visit(v)
    return out


def upward(found: dict[str, Module]) -> list[tuple[str, str]]:
    """(importer, imported) where the imported module's layer is above the importer's."""
    return sorted((m.name, t) for m in found.values() for t in m.imports if layer_of(t) > layer_of(m.name))


def report(found: dict[str, Module]) -> tuple[list[str], bool]:
    lines = []
    for i, (title, _) in enumerate(LAYERS):
        names = sorted(n for n in found if layer_of(n) == i)
        lines.append(f"{i} {title}: {', '.join(names) or '-'}")
    cyc, up = cycles(found), upward(found)
    own = [(m.name, line, what) for m in found.values() for line, what in m.in_functions if what.startswith("pwlock")]
    total = sum(len(m.in_functions) for m in found.values())
    bare = sorted((m.name, line) for m in found.values() for line in m.unexplained)
    lines.append(f"cycles: {len(cyc)}" + "".join(f"\n  {' <-> '.join(c)}" for c in cyc))
    lines.append(f"upward imports: {len(up)}" + "".join(f"\n  {a} imports {b}" for a, b in up))
    lines.append(
        f"imports inside functions: {total}, of pwlock's own modules: {len(own)}"
        + "".join(f"\n  {n}:{line} {what}" for n, line, what in sorted(own))
    )
    lines.append(
        f"imports inside functions without a reason beside them: {len(bare)}"
        + "".join(f"\n  {n}:{line}" for n, line in bare)
    )
    return lines, not cyc and not up and not bare


def main() -> int:
    lines, ok = report(modules())
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
