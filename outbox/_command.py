"""What every ``outbox`` command shares: its errors mapped to a message and an exit code in
one place (:class:`Command`), the ``--config`` and ``--database-url`` options, the settings
they load, and a database connection to work on.

Exit codes: 0 ok, 1 operational failure (database unreachable, migration failed), 2 usage or
configuration error. A command states its own outcome by raising :class:`Failure`; it never
calls ``sys.exit``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import psycopg

from outbox import runtime
from outbox._urls import InvalidURL, libpq_url
from outbox.exceptions import (
    ConfigError,
    DatabaseError,
    MigrationError,
    MissingSetting,
    PluginError,
)
from outbox.settings import Settings, load_settings
from outbox.store import driver_errors

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])

Connection = psycopg.AsyncConnection[Any]


class Failure(Exception):
    """Ends a command: ``message`` (one or more lines) on stderr as it stands, then exit
    ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class BadOption(click.BadParameter):
    """A bad option value, said in one line, ``error: --name: why``, with exit 2 (click's
    own message adds a usage line and a hint). Raised by an option's callback."""

    def show(self, file: Any = None) -> None:
        name = self.param.opts[0] if self.param is not None else self.param_hint
        click.echo(f"error: {name}: {self.message}", file=file, err=file is None)


class Command(click.Command):
    """A command whose errors become a message and an exit code here, and nowhere else."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return self._invoke_mapping_errors(ctx)
        except Failure as failure:
            click.echo(failure.message, err=True)
            ctx.exit(failure.exit_code)

    def _invoke_mapping_errors(self, ctx: click.Context) -> Any:
        try:
            with driver_errors():
                return super().invoke(ctx)
        except MissingSetting as error:  # a flag can supply it: a usage error
            message = "\n".join(message for _, message in error.errors)
            raise click.UsageError(message, ctx) from error
        except ConfigError as error:
            lines = [f"config error: {where}: {message}" for where, message in error.errors]
            raise Failure("\n".join(lines), 2) from error
        except (PluginError, InvalidURL) as error:
            raise Failure(f"error: {error}", 2) from error
        except DatabaseError as error:
            # The first line says it (connection refused, relation does not exist); the rest
            # is the driver's context, not the operator's.
            first = str(error).strip().splitlines() or [type(error).__name__]
            raise Failure(f"error: {first[0]}", 1) from error
        except (MigrationError, OSError) as error:  # OSError: say, the metrics port is taken
            raise Failure(f"error: {error}", 1) from error


class Group(click.Group):
    """A group whose commands are :class:`Command` and whose subgroups are groups like it."""

    command_class = Command
    group_class = type


def config_option(command: _F) -> _F:
    return click.option(
        "--config",
        "config",
        type=click.Path(path_type=Path),
        help="Configuration file (default: config/outbox.toml).",
    )(command)


def database_url_option(
    help: str = "PostgreSQL URL (env: OUTBOX_DATABASE_URL).",
) -> Callable[[_F], _F]:
    return click.option("--database-url", envvar="OUTBOX_DATABASE_URL", help=help)


def with_settings(command: Callable[..., _T]) -> Callable[..., _T]:
    """Adds ``--config`` and ``--database-url``; the command gets the ``settings`` they load
    instead (:class:`ConfigError` when the configuration is invalid)."""

    @config_option
    @database_url_option()
    @functools.wraps(command)
    def load(*args: Any, config: Path | None, database_url: str | None, **kwargs: Any) -> _T:
        settings = load_settings(config, database_url=database_url)
        return command(*args, settings=settings, **kwargs)

    return load


def on_database(settings: Settings, work: Callable[[Connection], Awaitable[_T]]) -> _T:
    """Run ``work`` on an autocommit connection to the configured database."""
    url = libpq_url(runtime.database_url(settings))

    async def run() -> _T:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
        async with conn:
            return await work(conn)

    return asyncio.run(run())
