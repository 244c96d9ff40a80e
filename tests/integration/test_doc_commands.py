"""Every ``outbox ...`` command that README.md and docs/ show in a shell block runs.

Each command found in a fenced ``sh``, ``bash``, ``shell`` or ``console`` block (``$ ``
prompts, ``\\`` continuations and trailing ``# comments`` handled) runs as a real process,
the way a reader would type it, in a directory holding the README's configuration file
(``config/outbox.toml``, its sinks made runnable here) against a fresh migrated database with
a few events in it: a done one (id 4711), one failed for ``billing``, one delivered long ago.

What differs from typing it, each for a reason:
- a ``--database-url`` the docs show is a placeholder: the test database is used instead;
- a relay run for ever (no ``--drain`` or ``--once``) runs with ``--drain``, and a metrics
  port is any free one (0), so that it ends and never collides;
- stdin is a terminal whose user answers ``y``, as the operator the docs address would;
- the commands in :data:`NOT_RUN` are not run here, each for the reason given.

Pages are found by a glob, so a new page's commands are checked without listing them here.
"""

from __future__ import annotations

import dataclasses
import os
import pty
import re
import shlex
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb

import outbox

ROOT = Path(__file__).resolve().parents[2]
PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")))
TIMEOUT = 90.0
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

NOT_RUN = {
    ("demo",): "starts its own embedded server and runs for a minute: CI runs it as the README "
    "writes it, and tests/acceptance/test_demo.py checks it",
    ("dashboard",): "serves until stopped: tests/acceptance/test_demo.py starts it as the demo "
    "prints it, and tests/browser drive it in Chromium",
}
"""Commands (by their leading words after ``outbox``) that are not run, and why."""

EXPECTED_EXIT: dict[str, tuple[int, str]] = {}
"""Documented commands whose documented outcome is a non-zero exit: command -> (code, why)."""

CONFIG = """
database_url = { env = "DATABASE_URL" }

[sinks.billing]
type = "webhook"
url = "https://billing.example.com/hooks/outbox"
secret = { env = "BILLING_WEBHOOK_SECRET" }

[sinks.audit]
type = "postgres"
schema = "audit"
table = "events"

[sinks.cache]
type = "callable"
target = "os:getcwd"

[[subscriptions]]
topics = ["order.*", "payment.#"]
sinks = ["billing", "audit"]

[[subscriptions]]
topics = ["order.*"]
sinks = ["cache"]
"""
"""The README's "typical file", with a callable target that imports here."""


# -- finding the commands -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DocCommand:
    page: str
    line: int
    text: str
    """The command as the page writes it (continuations joined, comment dropped)."""
    argv: tuple[str, ...]
    """From ``outbox`` on; ``outbox`` itself is argv[0]."""
    env: tuple[tuple[str, str], ...] = ()
    """``NAME=value`` words written before it."""

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


_FENCE = re.compile(r"^\s*(```|~~~)\s*(\w[\w-]*)?")
_SHELLS = {"sh", "bash", "shell", "console", "shell-session", "zsh"}
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_SEPARATORS = {"&&", "||", ";", "|", "&"}


def commands_in(page: str, text: str) -> list[DocCommand]:
    """Every ``outbox ...`` command of the shell blocks of markdown ``text``."""
    found = []
    for line, command in _shell_lines(text):
        found.extend(_outbox_commands(page, line, command))
    return found


def _shell_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, command line) for each command of each shell block."""
    language: str | None = None
    pending: tuple[int, str] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        fence = _FENCE.match(line)
        if fence is not None:
            language = None if language is not None else (fence[2] or "").lower()
            pending = None
            continue
        if language not in _SHELLS:
            continue
        stripped = line.strip()
        if pending is not None:
            start, so_far = pending
            stripped = so_far + " " + stripped
        elif stripped.startswith("$ "):
            start, stripped = number, stripped[2:]
        elif language == "console" or not stripped or stripped.startswith("#"):
            continue  # output, or a comment line
        else:
            start = number
        if stripped.endswith("\\"):
            pending = (start, stripped[:-1].rstrip())
            continue
        pending = None
        yield start, _without_comment(stripped)


def _without_comment(line: str) -> str:
    """``line`` without a trailing ``# comment``: a ``#`` that starts a word, outside quotes
    (``--topic 'payment.#'`` and ``payment.#`` keep theirs, as in a shell)."""
    quote: str | None = None
    for index, char in enumerate(line):
        if quote is not None:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index].rstrip()
    return line


def _outbox_commands(page: str, line: int, command: str) -> Iterator[DocCommand]:
    lexer = shlex.shlex(command, posix=True, punctuation_chars="|&;")
    lexer.whitespace_split = True
    lexer.commenters = ""
    words: list[str] = []
    for word in [*lexer, ";"]:
        if word not in _SEPARATORS:
            words.append(word)
            continue
        env = []
        while words and _ASSIGNMENT.match(words[0]):
            name, _, value = words.pop(0).partition("=")
            env.append((name, value))
        if words and (words[0] == "outbox" or words[0].endswith("/outbox")):
            text = shlex.join(["outbox", *words[1:]])
            yield DocCommand(page, line, text, ("outbox", *words[1:]), tuple(env))
        words = []


def documented_commands() -> list[DocCommand]:
    found = []
    for path in PAGES:
        page = path.relative_to(ROOT).as_posix()
        found.extend(commands_in(page, path.read_text(encoding="utf-8")))
    return found


def test_the_extractor_reads_commands_as_a_shell_would() -> None:
    page = textwrap.dedent(
        """\
        ```console
        $ outbox plugins --json           # the same, for scripts
        jsonl  (outbox-jsonl 0.1.0)  sink types: jsonl
        ```

        ```sh
        # a comment line
        outbox events list --topic 'payment.#' --sink billing  # filtered
        OUTBOX_RELAY__BATCH_SIZE=500 .venv/bin/outbox relay \\
            --drain
        python3 -m venv .venv && .venv/bin/outbox demo
        outbox status --json | jq .lag
        ```

        ```python
        outbox.publish(session, "x", {})
        ```
        """
    )
    found = [(c.line, c.argv, c.env) for c in commands_in("page.md", page)]
    assert found == [
        (2, ("outbox", "plugins", "--json"), ()),
        (8, ("outbox", "events", "list", "--topic", "payment.#", "--sink", "billing"), ()),
        (9, ("outbox", "relay", "--drain"), (("OUTBOX_RELAY__BATCH_SIZE", "500"),)),
        (11, ("outbox", "demo"), ()),
        (12, ("outbox", "status", "--json"), ()),
    ]


def test_the_readme_has_commands_to_check() -> None:
    readme = [c for c in documented_commands() if c.page == "README.md"]
    assert len(readme) >= 15
    assert any(c.argv[:2] == ("outbox", "retry") for c in readme)


# -- running them ---------------------------------------------------------------------------------


def _not_run(command: DocCommand) -> str | None:
    for words, reason in NOT_RUN.items():
        if command.argv[1 : 1 + len(words)] == words:
            return reason
    return None


def _params() -> list[object]:
    params: list[object] = []
    for command in documented_commands():
        reason = _not_run(command)
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        params.append(pytest.param(command, id=f"{command.where} {command.text}", marks=marks))
    return params


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A directory with the configuration file where commands look for it."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "outbox.toml").write_text(CONFIG.lstrip(), encoding="utf-8")
    return tmp_path


@pytest.fixture
def seeded(database_url: str) -> str:
    """The test database with events for the documented commands to find: 4711 pending,
    scheduled for tomorrow (so a relay leaves it, and it can be shown or cancelled), 4712
    failed for billing, 4713 done an hour ago, 4714 done 40 days ago."""
    delivered = {"status": "delivered", "attempts": 1}
    failed = {"status": "failed", "attempts": 10, "last_error": "HTTP 503"}
    states = [
        ("failed", {"billing": failed, "audit": delivered}, "1 hour"),
        ("done", {"billing": delivered, "audit": delivered}, "1 hour"),
        ("done", {"billing": delivered, "audit": delivered}, "40 days"),
    ]
    with psycopg.connect(database_url) as conn:
        conn.execute("ALTER TABLE outbox_events ALTER COLUMN id RESTART WITH 4711")
        scheduled = outbox.publish(conn, "order.confirmed", {"order_id": 1}, delay=86400)
        for n, (status, deliveries, ago) in enumerate(states, start=2):
            event = outbox.publish(conn, "order.paid", {"order_id": n}, key=f"order-{n}")
            conn.execute(
                "UPDATE outbox_events SET status = %s, attempts = 1, deliveries = %s, "
                "done_at = now() - %s::interval WHERE id = %s",
                [status, Jsonb(deliveries), ago, event.id],
            )
    assert scheduled.id == 4711
    return database_url


def _argv(command: DocCommand, database_url: str) -> list[str]:
    """The command as run here (see the module docstring for each difference)."""
    args = list(command.argv[1:])
    for index, word in enumerate(args):
        if word.startswith("--database-url="):
            args[index] = f"--database-url={database_url}"
        elif index and args[index - 1] == "--database-url":
            args[index] = database_url
        elif index and args[index - 1] == "--metrics-port":
            args[index] = "0"
    if args[:1] == ["relay"] and not {"--drain", "--once", "--help", "-h"} & set(args):
        args.append("--drain")
    entry_point = Path(sys.executable).with_name("outbox")
    start = [str(entry_point)] if entry_point.exists() else [sys.executable, "-m", "outbox.cli"]
    return [*start, *(os.path.expandvars(arg) for arg in args)]


def _environment(command: DocCommand, database_url: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("OUTBOX_")}
    env.update(DATABASE_URL=database_url, BILLING_WEBHOOK_SECRET=SECRET)
    env.update({name: os.path.expandvars(value) for name, value in command.env})
    return env


def _run_at_a_terminal(
    argv: list[str], cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run with a terminal as stdin whose user has typed ``y``: the answer to a prompt."""
    controller, terminal = pty.openpty()
    try:
        os.write(controller, b"y\n")
        return subprocess.run(
            argv,
            cwd=cwd,
            env=env,
            stdin=terminal,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    finally:
        os.close(terminal)
        os.close(controller)


@pytest.mark.parametrize("command", _params())
def test_documented_command_runs(command: DocCommand, seeded: str, workdir: Path) -> None:
    argv = _argv(command, seeded)
    result = _run_at_a_terminal(argv, workdir, _environment(command, seeded))
    expected, why = EXPECTED_EXIT.get(command.text, (0, ""))
    assert result.returncode == expected, (
        f"{command.where}: `{command.text}` exited {result.returncode}, expected {expected}"
        f"{f' ({why})' if why else ''}\n"
        f"ran: {shlex.join(argv)}\n"
        f"stderr:\n{result.stderr}\nstdout:\n{result.stdout[-2000:]}"
    )
    assert "Traceback" not in result.stderr, f"{command.where}: {result.stderr}"
