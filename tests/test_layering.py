"""The seam and the layers, read from the source (issue 19 item 1; docs/architecture.md).

* The machine core (viridian/machine/*.py) never imports an engine (viridian.machine.unicorn/.reference), Unicorn
  or Capstone -- not even lazily or for type checking: engines.py names engines as strings and imports them on use.
* The core's modules import each other without a cycle (lazy imports count; TYPE_CHECKING-only ones do not).
* Nothing under viridian/machine imports the layers above it (reports, lab, fan-out, conformance, fuzz, the
  command line: checked file reading is viridian/inputs.py).
* The lab does not import the fan-out (the boot matrix's runner lives in cli/).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MACHINE = ROOT / "viridian" / "machine"
CORE = sorted(p for p in MACHINE.glob("*.py") if p.name != "__init__.py")
ENGINE_ROOTS = ("unicorn", "capstone", "viridian.machine.unicorn", "viridian.machine.reference")
ABOVE_MACHINE = ("viridian.report", "viridian.lab", "viridian.fanout", "viridian.conformance", "viridian.fuzz",
                 "viridian.cli", "viridian.pytest_plugin")
ALLOWED_UPWARD: set[str] = set()  # none: a name should go below the machine rather than here


def _imports(path: Path) -> list[tuple[str, bool, int]]:
    """Every imported module name in ``path`` as (name, only for type checking, line)."""
    found: list[tuple[str, bool, int]] = []

    def walk(node: ast.AST, type_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for b in child.body:
                    walk_one(b, True)
                for b in child.orelse:
                    walk_one(b, type_only)
                continue
            walk_one(child, type_only)

    def walk_one(node: ast.AST, type_only: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend((a.name, type_only, node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.module, type_only, node.lineno))
            found.extend((f"{node.module}.{a.name}", type_only, node.lineno) for a in node.names)
        else:
            walk(node, type_only)

    walk(ast.parse(path.read_text(encoding="utf-8")), False)
    return found


def _under(name: str, roots: tuple[str, ...]) -> bool:
    return any(name == r or name.startswith(r + ".") for r in roots)


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_the_core_never_imports_an_engine(path: Path) -> None:
    bad = [f"{path.name}:{line} imports {name}" for name, _t, line in _imports(path) if _under(name, ENGINE_ROOTS)]
    assert not bad, "the core reaches engines only through engines.py (by name, lazily): " + "; ".join(bad)


def test_engines_py_names_the_engines_it_loads() -> None:
    from viridian.machine import engines

    assert engines.DEFAULT in engines.ENGINES
    for entry in engines.ENGINES.values():
        assert entry.vcpu.startswith("viridian.machine.") and ":" in entry.vcpu


def _core_graph() -> dict[str, set[str]]:
    names = {p.stem for p in CORE}
    graph: dict[str, set[str]] = {}
    for p in CORE:
        deps = set()
        for name, type_only, _line in _imports(p):
            parts = name.split(".")
            if not type_only and parts[:2] == ["viridian", "machine"] and len(parts) > 2 and parts[2] in names:
                deps.add(parts[2])
        graph[p.stem] = deps - {p.stem}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as a path that returns to its start), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                return [*stack[stack.index(d):], d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_cycle_among_the_core_modules() -> None:
    cycle = _cycle(_core_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("path", sorted(MACHINE.rglob("*.py")), ids=lambda p: str(p.relative_to(MACHINE)))
def test_the_machine_never_imports_the_layers_above_it(path: Path) -> None:
    bad = [f"{name} (line {line})" for name, _t, line in _imports(path)
           if _under(name, ABOVE_MACHINE) and not _under(name, tuple(ALLOWED_UPWARD))]
    assert not bad, f"{path.relative_to(ROOT)} imports upward: {', '.join(bad)}"


@pytest.mark.parametrize("path", sorted((ROOT / "viridian" / "lab").glob("*.py")), ids=lambda p: p.name)
def test_the_lab_does_not_import_the_fan_out(path: Path) -> None:
    bad = [name for name, _t, _line in _imports(path) if _under(name, ("viridian.fanout", "viridian.cli.boot_matrix"))]
    assert not bad, f"{path.name} imports {bad} (the fan-out imports the lab's cells; runners live in cli/)"
