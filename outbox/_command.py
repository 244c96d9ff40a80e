"""What every ``outbox`` command shares: its errors mapped to a message and an exit code in
one place (:class:`Command`), the ``--config`` and ``--database-url`` options, the settings
they load, and a database connection to work on.

Exit codes: 0 ok, 1 operational failure (database unreachable, migration failed), 2 usage or
configuration error. A command states its own outcome by raising :class:`Failure`; it never
calls ``sys.exit``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import psycopg
from pydantic import BaseModel

from outbox import plugins, runtime
from outbox._urls import InvalidURL, check_database_url, libpq_url
from outbox.exceptions import (
    ConfigError,
    DatabaseError,
    MigrationError,
    MissingSetting,
    PluginError,
)
from outbox.secrets import literal_secret, secret_fields
from outbox.settings import (
    DEFAULT_CONFIG_FILE,
    ConfigCheck,
    Settings,
    check_configuration,
    line_of,
    load_settings,
)
from outbox.sinks import Sink
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

    try:
        return asyncio.run(run())
    except (psycopg.errors.UndefinedTable, DatabaseError) as error:
        missing = _undefined_table(error)
        if missing is None:
            raise
        # The driver's words name a relation; the operator needs to hear what to run.
        raise Failure(
            f"error: the outbox tables are missing in schema {settings.db_schema!r} of this "
            f"database ({str(missing).splitlines()[0]}): run `outbox migrate` first",
            1,
        ) from error


def _undefined_table(error: BaseException | None) -> BaseException | None:
    """The driver's "relation does not exist" behind ``error``, if that is what it is."""
    while error is not None and not isinstance(error, psycopg.errors.UndefinedTable):
        error = error.__cause__
    return error


def check_sink_name(settings: Settings, sink: str | None) -> None:
    """Refuse ``--sink NAME`` for a sink the configuration does not have, naming those it
    has: a misspelt name would otherwise match nothing, silently. Without any configured
    sink (only ``--database-url`` given) there is nothing to check against."""
    if sink is None or not settings.sinks or sink in settings.sinks:
        return
    configured = ", ".join(sorted(settings.sinks))
    raise Failure(
        f"error: --sink: no sink named {sink!r} is configured (configured: {configured})", 2
    )


@dataclasses.dataclass(frozen=True)
class ConfigReport:
    """``outbox config check``'s findings: errors (``where: what``) and warnings, each a
    line, and the settings when there is no error."""

    errors: list[str]
    warnings: list[str]
    settings: Settings | None
    unreachable: bool = False
    """The configuration is valid, but a sink could not connect (``--connect``)."""


def check_config(config: Path | None, *, connect: bool = False) -> ConfigReport:
    """Every problem of the configuration in one run: the settings' errors, each sink's
    options as its plugin validates them (even when other keys are wrong), a database URL
    that cannot work, no subscription (a relay would refuse to start), no file at all; and
    a warning for each secret written in the file itself. With ``connect``, once all that
    holds, each sink tries its connection (:meth:`~outbox.sinks.Sink.check`)."""
    check = check_configuration(config)
    errors = list(check.errors)
    if check.path is None:
        looked = Path.cwd() / DEFAULT_CONFIG_FILE
        errors.insert(0, ("no configuration file", f"looked for {looked}; pass --config FILE"))
    option_models: dict[str, type[BaseModel]] = {}
    sinks: dict[str, Sink] = {}
    try:
        types = plugins.sink_types(plugins.make_plugin_manager())
        option_models = {
            n: types[s.type].Options for n, s in check.sinks.items() if s.type in types
        }
        sinks = plugins.build_sinks(check.sinks, types)
    except ConfigError as error:
        errors += error.errors
    except PluginError as error:
        errors.append(("plugins", str(error)))
    if check.settings is not None:
        errors += _usable(check.settings)
    unreachable = []
    if connect and not errors:
        unreachable = _connect_quietly(sinks)
        errors += unreachable
    return ConfigReport(
        [f"{where}: {message}" for where, message in errors],
        _literal_secrets(check, option_models),
        check.settings if not errors else None,
        unreachable=bool(unreachable),
    )


CONNECT_TIMEOUT = 10.0


def _connect_quietly(sinks: dict[str, Sink]) -> list[tuple[str, str]]:
    """:func:`_connect` with logging off: the clients' own log lines (librdkafka's refused
    connections, a transport error) would repeat, unformatted, what the report says once."""
    logging.disable(logging.CRITICAL)
    try:
        return asyncio.run(_connect(sinks))
    finally:
        logging.disable(logging.NOTSET)


async def _connect(sinks: dict[str, Sink]) -> list[tuple[str, str]]:
    """Each sink's connection tried at once, each within :data:`CONNECT_TIMEOUT` seconds:
    what failed, where."""

    async def attempt(name: str, sink: Sink) -> tuple[str, str] | None:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await sink.check()
        except TimeoutError:
            return f"sinks.{name}", f"no answer within {CONNECT_TIMEOUT:g}s"
        except Exception as error:
            return f"sinks.{name}", f"cannot connect: {error or type(error).__name__}"
        finally:
            await sink.aclose()
        return None

    found = await asyncio.gather(*(attempt(name, sink) for name, sink in sinks.items()))
    return [problem for problem in found if problem is not None]


def _usable(settings: Settings) -> list[tuple[str, str]]:
    """What valid settings still lack for a relay to start with them."""
    found = []
    if not settings.subscriptions:
        found.append(runtime.NO_SUBSCRIPTIONS)
    url = settings.url()
    if url:
        try:
            check_database_url(url)
        except InvalidURL as error:
            found.append(("database_url", str(error)))
    return found


def _literal_secrets(check: ConfigCheck, option_models: dict[str, type[BaseModel]]) -> list[str]:
    """A warning, with the file and line, for each secret the file spells out."""
    if check.path is None or not check.raw:  # no file, or none that could be read
        return []
    written: list[tuple[tuple[str, ...], str, str]] = []
    if literal_secret(check.raw.get("database_url")):
        written.append(((), "database_url", "DATABASE_URL"))
    tables = check.raw.get("sinks") if isinstance(check.raw.get("sinks"), dict) else {}
    for name, model in option_models.items():
        table = tables.get(name) if isinstance(tables, dict) else None
        for key in secret_fields(model):
            if isinstance(table, dict) and literal_secret(table.get(key)):
                variable = f"{name}_{key}".upper().replace("-", "_")
                written.append((("sinks", name), key, variable))
    text = check.path.read_text(encoding="utf-8")
    return [_secret_warning(check.path, text, *found) for found in written]


def _secret_warning(path: Path, text: str, table: tuple[str, ...], key: str, variable: str) -> str:
    line = line_of(text, table, key)
    where = f"{path}:{line}" if line is not None else str(path)
    dotted = ".".join((*table, key))
    return (
        f"{where}: warning: {dotted} is written in the file, and secrets never belong in a "
        f'configuration file: write {key} = {{ env = "{variable}" }} (or {{ file = "PATH" }}) '
        f"and put the value in that variable (or file)"
    )
