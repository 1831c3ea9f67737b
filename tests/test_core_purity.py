"""The protocol core does no I/O: it imports no socket, ssl, asyncio, threading, select or time.

Scans the source of every module of ``pyvirtrpc.core`` and ``pyvirtrpc.sasl``
and, transitively, of every project module they import (errors, the codec,
the generated modules, framing...), and checks that none imports a module
that does I/O, threads or reads the clock.  Imports under ``if
TYPE_CHECKING:`` do not count (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "pyvirtrpc"
FORBIDDEN = {"socket", "_socket", "ssl", "asyncio", "threading", "_thread", "select", "selectors", "time",
             "logging", "subprocess"}
ENTRY = sorted(
    [f"pyvirtrpc.core.{p.stem}" for p in (PKG / "core").glob("*.py") if p.stem != "__init__"]
    + [f"pyvirtrpc.sasl.{p.stem}" for p in (PKG / "sasl").glob("*.py") if p.stem != "__init__"]
)


def _path(module: str) -> Path:
    rel = Path(*module.split("."))
    p = ROOT / rel.with_suffix(".py")
    return p if p.exists() else ROOT / rel / "__init__.py"


def _runtime_imports(module: str) -> set[str]:
    """Absolute names of the modules ``module`` imports at run time."""
    tree = ast.parse(_path(module).read_text())
    package = module if _path(module).name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(nodes: list[ast.stmt], function: bool = False) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                visit(node.orelse, function)
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([node.module] if node.module else []))
                found.add(base)
                for alias in node.names:  # "from . import x" may name a module
                    found.add(f"{base}.{alias.name}")
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    visit([child], function)
                elif hasattr(child, "body"):
                    pass

    visit(tree.body)
    # nested statements (function bodies, try/except) are walked by ast.walk
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and not _under_type_checking(tree, node):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            else:
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([node.module] if node.module else []))
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m}


def _under_type_checking(tree: ast.Module, target: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            if any(n is target for stmt in node.body for n in ast.walk(stmt)):
                return True
    return False


def _closure() -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {}
    todo = list(ENTRY)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        imports = _runtime_imports(module)
        seen[module] = imports
        for name in imports:
            # a package's __init__ runs on any import from it, but it is not
            # what the core module chose to import: follow modules only
            if name.startswith("pyvirtrpc") and _path(name).name != "__init__.py" and _path(name).exists():
                if name not in seen:
                    todo.append(name)
    return seen


def test_entry_points_exist() -> None:
    assert "pyvirtrpc.core.rpc" in ENTRY and "pyvirtrpc.core.handshake" in ENTRY
    assert "pyvirtrpc.core.keepalive" in ENTRY and "pyvirtrpc.sasl.digestmd5" in ENTRY


def test_core_imports_no_io_modules() -> None:
    closure = _closure()
    bad = {
        module: sorted(name for name in imports if name.split(".")[0] in FORBIDDEN)
        for module, imports in closure.items()
    }
    bad = {m: names for m, names in bad.items() if names}
    assert bad == {}, f"sans-I/O modules importing I/O, thread or clock modules: {bad}"
    # the scan really covered the layers below the core
    for module in ("pyvirtrpc.errors", "pyvirtrpc._xdr", "pyvirtrpc.packet", "pyvirtrpc._gen.remote"):
        assert module in closure
    # and the package's drivers are outside it (they are allowed I/O)
    assert "pyvirtrpc.client" not in closure and "pyvirtrpc.aio" not in closure
