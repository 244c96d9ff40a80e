"""MkDocs hook: the Python API page, one mkdocstrings entry per name of ``outbox.__all__``.

A page that holds the marker below gets, in its place, a ``::: module.name`` directive for
every public name, grouped into functions, classes, exceptions and other names, so a name
added to ``__all__`` appears in the reference by itself. Each name is documented where it
is defined, found from the imports of ``outbox/__init__.py``: ``::: outbox`` alone would
lose ``publish`` and ``migrate``, which share their names with their modules.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from typing import Any

MARKER = "<!-- outbox-python-api -->"
GROUPS = ("Functions", "Classes", "Exceptions", "Other names")
# The docstrings cross-reference in Sphinx's style (:func:`publish`), which the Markdown
# renders as the role's text before the code: the role is dropped, the code kept.
SPHINX_ROLE = re.compile(r":(?:func|meth|class|attr|exc|data|mod|obj):(?=<code>)")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace the marker with the directives; other pages pass through."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render())


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    """Drop the Sphinx roles that the rendered docstrings still show."""
    return SPHINX_ROLE.sub("", html)


def render() -> str:
    """A section per group, a directive per public name, in ``__all__`` order."""
    import outbox

    homes = defining_modules(Path(outbox.__file__))
    grouped: dict[str, list[str]] = {group: [] for group in GROUPS}
    for name in outbox.__all__:
        if name.startswith("__"):  # __version__: said in the page's text
            continue
        obj = getattr(outbox, name)
        grouped[_group(obj)].append(f"::: {homes.get(name, 'outbox')}.{name}\n")
    return "\n".join(
        f"## {group}\n\n" + "\n".join(directives)
        for group, directives in grouped.items()
        if directives
    )


def defining_modules(init_file: Path) -> dict[str, str]:
    """Each name ``outbox/__init__.py`` imports, mapped to the module it comes from."""
    tree = ast.parse(init_file.read_text(encoding="utf-8"))
    return {
        alias.asname or alias.name: node.module
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module
        for alias in node.names
    }


def _group(obj: object) -> str:
    if isinstance(obj, type):
        return "Exceptions" if issubclass(obj, BaseException) else "Classes"
    return "Functions" if inspect.isfunction(obj) else "Other names"
