"""The shape of the package: rooms of a bounded size, SQL in one registry, no import cycle.

docs/architecture.md describes the module map these tests keep honest.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from outbox import _queries

PACKAGE = Path(__file__).resolve().parents[2] / "outbox"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_MODULE_LINES = 450
MAX_RELAY_LINES = 250

# Words that only SQL text contains, as it would be written in a statement.
SQL_TEXT = re.compile(
    r"\b(SELECT\s+[\w*(]|INSERT\s+INTO|UPDATE\s+[\w{}\".]+(\s+AS\s+\w+)?\s+SET|DELETE\s+FROM|"
    r"(CREATE|DROP)\s+(TABLE|INDEX|SCHEMA|DATABASE)|^\s*(LISTEN|NOTIFY)\s|pg_notify|SET\s+LOCAL|"
    r"pg_advisory\w*|ON\s+CONFLICT|RETURNING\s+\w)",
    re.MULTILINE,
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _strings(tree: ast.AST) -> list[ast.Constant]:
    """String constants that are not docstrings."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def _runtime_imports(tree: ast.Module, module: str, known: set[str]) -> set[str]:
    """Modules of the package that ``module`` imports when it runs (not for type checking)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for child in ast.walk(node))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in known and name != module}


def test_no_module_is_a_big_room() -> None:
    sizes = {_module_name(path): len(path.read_text().splitlines()) for path in MODULES}
    assert {name: size for name, size in sizes.items() if size > MAX_MODULE_LINES} == {}


def test_the_relay_class_only_relays() -> None:
    tree = ast.parse((PACKAGE / "relay.py").read_text())
    [relay] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Relay"]
    assert relay.end_lineno is not None
    assert relay.end_lineno - relay.lineno + 1 < MAX_RELAY_LINES


@pytest.mark.parametrize("path", MODULES, ids=_module_name)
def test_no_sql_text_outside_the_registry(path: Path) -> None:
    found = [
        f"line {node.lineno}: {node.value.strip()[:60]!r}"
        for node in _strings(ast.parse(path.read_text()))
        if SQL_TEXT.search(node.value)
    ]
    assert found == []


def test_the_sql_check_recognises_sql() -> None:
    statements = _queries.statements()
    assert statements
    missed = [name for name, text in statements.items() if not SQL_TEXT.search(text)]
    # Every registered statement is recognised, so one left in a module would be found too.
    assert missed == []


def test_every_statement_says_what_it_does() -> None:
    text = (PACKAGE / "sql" / "queries.sql").read_text()
    blocks = re.findall(r"^-- (?:name|fragment): (\w+)\n(.*)$", text, flags=re.MULTILINE)
    assert blocks
    assert [name for name, first_line in blocks if not first_line.startswith("-- ")] == []


def test_no_import_cycle() -> None:
    trees = {_module_name(path): ast.parse(path.read_text()) for path in MODULES}
    known = set(trees)
    graph = {name: _runtime_imports(tree, name, known) for name, tree in trees.items()}
    # The package itself imports its public modules; a module importing the package (for
    # __version__, say) would close a loop through it.
    cycles = []
    for start in graph:
        stack = [(start, [start])]
        seen: set[str] = set()
        while stack:
            node, path = stack.pop()
            for target in graph[node]:
                if target == start:
                    cycles.append(" -> ".join([*path, target]))
                elif target not in seen:
                    seen.add(target)
                    stack.append((target, [*path, target]))
    assert cycles == []
