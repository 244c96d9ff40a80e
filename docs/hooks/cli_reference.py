"""MkDocs hook: the CLI reference page, rendered from the ``outbox`` command itself.

A page that holds the marker below gets, in its place, the ``--help`` of every command and
subcommand of :data:`outbox.cli.main`, so a new command appears in the documentation by
being written, and an option's documentation cannot drift from the option.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import click

MARKER = "<!-- outbox-cli-reference -->"
WIDTH = 100  # help text laid out at this width, as a wide terminal would show it


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace the marker with the rendered reference; other pages pass through."""
    if MARKER not in markdown:
        return markdown
    from outbox.cli import main  # imported here: MkDocs loads hooks before any page

    return markdown.replace(MARKER, render(main, "outbox"))


def render(command: click.Command, name: str) -> str:
    """Every command under ``command``, each as a heading and its help text."""
    sections = []
    for path, ctx, level in _walk(command, name, None, 2):
        heading = "#" * level
        sections.append(f"{heading} `{path}`\n\n```text\n{ctx.command.get_help(ctx)}\n```\n")
    return "\n".join(sections)


def _walk(
    command: click.Command, name: str, parent: click.Context | None, level: int
) -> Iterator[tuple[str, click.Context, int]]:
    """``command`` and its subcommands, depth first, in the order ``--help`` lists them."""
    # As ``make_context`` would build it, with the command's own settings (``-h``), but
    # without parsing any argument.
    settings = {**command.context_settings, "terminal_width": WIDTH, "max_content_width": WIDTH}
    ctx = click.Context(command, info_name=name, parent=parent, **settings)
    yield ctx.command_path, ctx, min(level, 6)
    if isinstance(command, click.Group):
        for child_name in command.list_commands(ctx):
            child = command.get_command(ctx, child_name)
            if child is not None and not child.hidden:
                yield from _walk(child, child_name, ctx, level + 1)
