"""pwlock's modules keep their layers: no import cycle, no import of a higher layer, every module
in a layer (pwlock.tools.layers)."""

from __future__ import annotations

from pwlock.tools import layers


def test_no_cycle_and_no_upward_import():
    found = layers.modules()
    assert layers.cycles(found) == []
    assert layers.upward(found) == []
    assert all(layers.layer_of(name) >= 0 for name in found)  # raises for a module in no layer


def test_every_import_inside_a_function_says_why():
    found = layers.modules()
    assert [(m.name, line) for m in found.values() for line in m.unexplained] == []


def test_the_tool_sees_a_cycle_and_an_upward_import(tmp_path):
    """On a package made up here: a cycle between two modules, and a foundation module importing a
    module of a higher layer (relative imports and imports inside functions count too)."""
    pkg = tmp_path / "pwlock"
    (pkg / "elicit").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text("def f():\n    from pwlock import sweep\n\n\ndef g():\n    import json  # why\n")
    (pkg / "sweep.py").write_text("from pwlock.config import f\n")
    (pkg / "elicit" / "__init__.py").write_text("")
    (pkg / "elicit" / "sft.py").write_text("from . import dpo\n")
    (pkg / "elicit" / "dpo.py").write_text("from .sft import x\n")
    found = layers.modules(pkg)
    assert found["config"].in_functions == [(2, "pwlock: sweep"), (6, "json")]
    assert found["config"].unexplained == [2]
    assert layers.cycles(found) == [["config", "sweep"], ["elicit.dpo", "elicit.sft"]]
    assert layers.upward(found) == [("config", "sweep")]
    lines, ok = layers.report(found)
    assert not ok and "cycles: 2" in "\n".join(lines)
