"""The public API is what ``outbox.__all__`` lists, the package is typed, and every hook is
documented (in its docstring and in docs/plugins.md)."""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import outbox
from outbox import hookspecs

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(outbox.__file__).parent
PLUGINS_DOC = ROOT / "docs" / "plugins.md"


def names_defined_in_init() -> set[str]:
    """Names bound at the top level of outbox/__init__.py (imports, assignments, defs)."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            names.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
    return names


def is_public(name: str) -> bool:
    return not name.startswith("_") or name == "__version__"


def test_all_lists_every_public_name() -> None:
    public = {name for name in names_defined_in_init() if is_public(name)}
    missing = public - set(outbox.__all__)
    assert not missing, f"defined in outbox/__init__.py but not in __all__: {sorted(missing)}"


def test_every_listed_name_exists() -> None:
    absent = [name for name in outbox.__all__ if not hasattr(outbox, name)]
    assert not absent, f"listed in __all__ but not defined: {absent}"


def test_all_has_no_duplicates_and_is_sorted() -> None:
    assert len(set(outbox.__all__)) == len(outbox.__all__)
    assert list(outbox.__all__) == sorted(outbox.__all__)


def test_the_names_a_sink_author_needs_are_public() -> None:
    expected = {"Sink", "Event", "RetryableError", "PermanentError", "SinkGone", "hookimpl"}
    assert expected <= set(outbox.__all__)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, Any] = {}
    exec("from outbox import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(outbox.__all__)


def test_py_typed_ships() -> None:
    marker = PACKAGE / "py.typed"
    assert marker.is_file()
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'packages = ["outbox"]' in pyproject  # the wheel takes the whole package directory
    assert "Typing :: Typed" in pyproject


# -- hooks ------------------------------------------------------------------------------------


def hook_functions() -> dict[str, Callable[..., Any]]:
    return {
        name: function
        for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("outbox_") and function.__module__ == hookspecs.__name__
    }


HOOKS = sorted(hook_functions())


def signature_text(function: Callable[..., Any]) -> str:
    """``name(arg: Type) -> Return`` as written in the source (annotations are strings)."""
    return f"{function.__name__}{inspect.signature(function)}".replace("'", "")


def test_there_are_hooks() -> None:
    assert "outbox_register_sinks" in HOOKS


@pytest.mark.parametrize("name", HOOKS)
def test_hook_is_a_spec(name: str) -> None:
    assert getattr(hook_functions()[name], "outbox_spec", None) is not None, (
        f"{name} in hookspecs.py is not marked @hookspec"
    )


@pytest.mark.parametrize("name", HOOKS)
def test_hook_has_a_docstring(name: str) -> None:
    doc = inspect.getdoc(hook_functions()[name])
    assert doc, f"{name} has no docstring"
    assert len(doc.split()) >= 5, f"{name}'s docstring says too little: {doc!r}"


@pytest.mark.parametrize("name", HOOKS)
def test_hook_is_documented_in_plugins_md(name: str) -> None:
    text = PLUGINS_DOC.read_text(encoding="utf-8")
    heading = f"### `{signature_text(hook_functions()[name])}`"
    assert heading in text, f"docs/plugins.md has no section {heading}"


def test_plugins_md_documents_no_hook_that_does_not_exist() -> None:
    text = PLUGINS_DOC.read_text(encoding="utf-8")
    documented = set(re.findall(r"^### `(outbox_\w+)\(", text, flags=re.MULTILINE))
    assert documented == set(HOOKS)


def test_plugins_md_covers_what_a_plugin_author_needs() -> None:
    text = PLUGINS_DOC.read_text(encoding="utf-8")
    for topic in (
        "Options",
        "deliver_batch",
        "aclose",
        "concurrency",
        "transactional",
        "deliver_in_transaction",
        "RetryableError",
        "retry_after",
        "PermanentError",
        "SinkGone",
        "outbox.hookimpl",
        "[project.entry-points.outbox]",
        "exercise_sink",
        "plugins/outbox-jsonl",
    ):
        assert topic in text, f"docs/plugins.md does not mention {topic}"
