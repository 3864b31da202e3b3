"""The layering holds: packages depend one way (flows -> tasks -> mlsys; infra -> mlsys),
no engine module imports Prefect, and no two modules import each other in a cycle, even
through imports inside functions; the engine (mlsys/) imports none of the local stack
(infra/), the tasks or the flows, not even by a module name in a string or at run time;
no engine module is a command line (the `mlsys` command lives in infra/cli/); and a
module over 600 lines says why it is one."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("mlsys", "flows", "tasks", "infra")
ALLOWED = {
    "mlsys": set(),
    "tasks": {"mlsys"},
    "flows": {"tasks", "mlsys"},
    "infra": {"mlsys"},
}
"""Which of the project's packages each may import."""


def modules() -> dict[str, Path]:
    """Every module of the project's packages by dotted name (a package by its own)."""
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imported(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports, anywhere in it."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the project's modules it imports (a module importing its own parent
    package, which Python runs first anyway, is left out)."""
    known = modules()

    def owner(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in known.items():
        targets = {owner(name) for name in imported(path)}
        graph[module] = {t for t in targets if t and t != module and not module.startswith(t + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_packages_depend_one_way() -> None:
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        for target in targets
        if target.split(".")[0] != module.split(".")[0]
        and target.split(".")[0] not in ALLOWED[module.split(".")[0]]
    )
    assert wrong == []


def test_no_import_cycle_between_modules() -> None:
    assert cycles(import_graph()) == []


def test_no_engine_imports_prefect() -> None:
    engines = {m: p for m, p in modules().items() if m.split(".")[0] == "mlsys"}
    found = sorted(
        m for m, p in engines.items() if any(n.split(".")[0] == "prefect" for n in imported(p))
    )
    assert found == []


NOT_FOR_THE_ENGINE = ("infra", "flows", "tasks")
"""Packages no module under mlsys/ may import: the engine reaches services through
mlsys.settings alone (infra.config.StackSettings builds on it, not the other way)."""


def named_modules(path: Path) -> set[str]:
    """String constants of ``path`` that name a module of the project's packages by its
    dotted name (``importlib.import_module`` and the lazy attribute maps of the engine's
    packages take module names as strings; a lone word such as "tasks" is not one)."""
    return {
        node.value
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and "." in node.value
        and node.value.split(".")[0] in PACKAGES
        and all(part.isidentifier() for part in node.value.split("."))
    }


def test_engine_imports_no_infra_flows_or_tasks() -> None:
    engines = {m: p for m, p in modules().items() if m.split(".")[0] == "mlsys"}
    found = sorted(
        f"{module} imports {name}"
        for module, path in engines.items()
        for name in imported(path) | named_modules(path)
        if name.split(".")[0] in NOT_FOR_THE_ENGINE
    )
    assert found == []


CLI = ROOT / "infra" / "cli"
"""The `mlsys` command line: above the engines, in infra/."""


def loaded_at_import(path: Path) -> set[str]:
    """The modules ``path`` imports at its top level (what importing it runs), not inside
    functions or under ``if TYPE_CHECKING:``."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def engine_modules_the_cli_loads() -> list[str]:
    """The engine modules the command line's modules import at their top level."""
    known = modules()
    return sorted(
        {
            name
            for path in CLI.glob("*.py")
            for name in loaded_at_import(path)
            if name.split(".")[0] == "mlsys" and name in known
        }
    )


def test_engine_settings_and_the_modules_the_cli_loads_load_no_infra_flows_or_tasks() -> None:
    """The engine modules that read the settings or that the command line loads, imported
    in a fresh interpreter, load none of those packages (an import the source does not
    spell out counts too)."""
    engines = ["mlsys.settings", *engine_modules_the_cli_loads()]
    assert {"mlsys.data.definition", "mlsys.data.propose", "mlsys.data.s3"} <= set(engines)
    code = (
        "import sys\n"
        f"import {', '.join(engines)}\n"
        f"print(sorted({{m for m in sys.modules if m.split('.')[0] in {NOT_FOR_THE_ENGINE!r}}}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def commands(group: typer.Typer) -> list[Callable[..., Any]]:
    """The functions behind every command and group callback of ``group``, its groups'
    included."""
    found = [info.callback for info in group.registered_commands if info.callback]
    if group.registered_callback and group.registered_callback.callback:
        found.append(group.registered_callback.callback)
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            found += commands(sub.typer_instance)
    return found


def test_no_engine_module_is_a_command_line() -> None:
    """The command line lives in infra/cli/: no module under mlsys/ imports typer or click,
    and every command of `mlsys` is a function of infra/cli/."""
    from infra.cli import app

    engines = {m: p for m, p in modules().items() if m.split(".")[0] == "mlsys"}
    found = sorted(
        f"{module} imports {name}"
        for module, path in engines.items()
        for name in imported(path)
        if name.split(".")[0] in ("typer", "click")
    )
    assert found == []
    defined = {f"{f.__module__}.{f.__qualname__}" for f in commands(app)}
    assert len(defined) > 10
    assert sorted(d for d in defined if not d.startswith("infra.cli.")) == []


def test_the_cycle_finder_finds_one() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


MAX_LINES = 600
"""A module longer than this says in its docstring why it is one module."""
SCRIPTS = ("benchmarks",)
"""Folders of scripts, not packages, whose modules that rule covers too."""


def test_long_modules_say_why_they_are_one() -> None:
    scripts = {
        str(path.relative_to(ROOT)): path
        for folder in SCRIPTS
        for path in (ROOT / folder).rglob("*.py")
    }
    unexplained = sorted(
        f"{module} ({lines} lines)"
        for module, path in {**modules(), **scripts}.items()
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
        and "Why one module:" not in (ast.get_docstring(ast.parse(path.read_text())) or "")
    )
    assert unexplained == []
