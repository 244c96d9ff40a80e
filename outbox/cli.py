"""The ``outbox`` command: setting up and running relays.

Commands only: errors become messages and exit codes in :mod:`outbox._command` (0 ok, 1
operational failure, 2 usage or configuration error), relays are built by
:mod:`outbox.runtime`, output is laid out by :mod:`outbox._output`. The operator's commands
(status, events, retry, replay, purge) are in :mod:`outbox._admin_cli`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import click

from outbox import (
    _admin_cli,
    _config_show,
    _dashboard_cli,
    _output,
    _publish_cli,
    runtime,
    sink_status,
)
from outbox._command import (
    Connection,
    Failure,
    Group,
    check_config,
    config_option,
    database_url_option,
    on_database,
    with_settings,
)
from outbox._identifiers import validate_identifier
from outbox._logging import configure_logging
from outbox.exceptions import PluginError
from outbox.migrate import DEFAULT_SCHEMA, migrate, migration_script
from outbox.plugins import describe_plugins, make_plugin_manager
from outbox.relay import RelayObserver
from outbox.settings import Settings, load_settings
from outbox.sink_switches import Switches


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="outbox-relay")
def main() -> None:
    """outbox-relay: one PostgreSQL table as a reliable event bus."""


for command in _admin_cli.COMMANDS:
    main.add_command(command)
main.add_command(_publish_cli.publish_command)
main.add_command(_dashboard_cli.dashboard_command)
_admin_cli.events_group.add_command(_publish_cli.cancel_command)


def _schema(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    try:
        return None if value is None else validate_identifier(value, "schema")
    except ValueError as error:
        raise click.BadParameter(str(error)) from error


@main.command("migrate")
@config_option
@database_url_option()
@click.option(
    "--schema",
    callback=_schema,
    help=f"Schema of the outbox table (default: the configuration's, else {DEFAULT_SCHEMA}).",
)
@click.option("--sql", "print_sql", is_flag=True, help="Print the SQL instead of applying it.")
def migrate_command(
    config: Path | None, database_url: str | None, schema: str | None, print_sql: bool
) -> None:
    """Create or upgrade the outbox table (safe to run from several processes at once).

    The database and schema come from the flags, else the environment, else the
    configuration file, as for every command; --sql --schema NAME reads no configuration."""
    if print_sql and schema:
        click.echo(migration_script(schema=schema), nl=False)
        return
    settings = load_settings(config, database_url=database_url, db_schema=schema)
    if print_sql:
        click.echo(migration_script(schema=settings.db_schema), nl=False)
        return
    applied = migrate(runtime.database_url(settings), schema=settings.db_schema)
    for migration in applied:
        click.echo(f"applied {migration.version:04d}_{migration.name}")
    if not applied:
        click.echo("up to date")


DRAIN_INCOMPLETE = 3
"""``outbox relay --drain``: events it handled failed, or wait for a retry."""


@main.command("relay")
@with_settings
@click.option("--once", is_flag=True, help="Process one batch, then exit.")
@click.option("--drain", is_flag=True, help="Exit once nothing is due.")
@click.option(
    "--poll-only", is_flag=True, help="Do not LISTEN (for PgBouncer in transaction mode)."
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@click.option(
    "--log-format",
    default="text",
    show_default=True,
    type=click.Choice(["text", "json"]),
    help="Plain text, or one JSON object per line.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help="Serve /metrics, /healthz and /readyz on this port (needs the metrics extra).",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address the metrics port listens on (0.0.0.0: every interface).",
)
def relay_command(
    settings: Settings,
    once: bool,
    drain: bool,
    poll_only: bool,
    log_level: str,
    log_format: str,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Deliver events to their sinks until stopped (SIGTERM/SIGINT: graceful).

    Exit codes: 0 stopped or drained, 1 the database could not be used (with --drain or
    --once: for relay.give_up_after seconds), 2 configuration error, 3 --drain handled
    events that failed or wait for a retry."""
    configure_logging(log_level, log_format)
    observer = None if metrics_port is None else _prometheus_observer(metrics_host)
    relay = runtime.build_relay(settings, poll_only=poll_only, observer=observer)
    running = runtime.run_until_signalled(relay, once=once, drain=drain, metrics_port=metrics_port)
    try:
        stats = asyncio.run(running)
    except asyncio.CancelledError:  # a second signal: stopped without finishing the batches
        raise click.exceptions.Exit(1) from None
    if drain:
        waiting = len(stats.waiting)
        click.echo(f"delivered {stats.done}, retrying {waiting}, failed {stats.failed}")
        if waiting or stats.failed:
            raise click.exceptions.Exit(DRAIN_INCOMPLETE)


def _prometheus_observer(host: str) -> RelayObserver:
    from outbox.metrics import PrometheusObserver

    try:
        return PrometheusObserver(host)
    except RuntimeError as error:  # the metrics extra is not installed
        raise click.UsageError(str(error)) from error


@main.group("config")
def config_group() -> None:
    """Inspect the configuration."""


config_group.add_command(_config_show.config_show)


@config_group.command("check")
@config_option
@click.option(
    "--connect", is_flag=True, help="Also have each sink try its connection (exit 1 if one fails)."
)
def config_check(config: Path | None, connect: bool) -> None:
    """Validate everything, resolving each sink type through the plugins, and report every
    error in one run; exit 2 on errors, and without a configuration file or subscriptions
    (a relay would refuse to start). Secrets written in the file are warned about. With
    --connect, each sink then tries its connection, login and destination."""
    report = check_config(config, connect=connect)
    for warning in report.warnings:
        click.echo(warning, err=True)
    if report.settings is None:
        code = 1 if report.unreachable else 2
        raise Failure("\n".join([*report.errors, f"{len(report.errors)} error(s)"]), code)
    sinks, subscriptions = len(report.settings.sinks), len(report.settings.subscriptions)
    connected = ", each connected" if connect else ""
    click.echo(f"ok: {sinks} sink(s){connected}, {subscriptions} subscription(s)")


@main.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins_command(as_json: bool) -> None:
    """List the loaded plugins and the sink types they bring."""
    try:
        described = describe_plugins(make_plugin_manager())
    except PluginError as error:  # listing is how an operator finds the broken plugin: exit 1
        raise Failure(f"error: {error}") from error
    if as_json:
        _output.echo_json([dataclasses.asdict(info) for info in described])
    else:
        _output.print_plugins(described)


@main.group("sinks")
def sinks_group() -> None:
    """Pause, resume, disable and enable sinks. A held sink (paused, or disabled by an
    operator or a 410 Gone) receives nothing; its deliveries wait, counting no attempt, and
    every other sink goes on (docs/decisions/0011-sinks-held-independently.md)."""


@sinks_group.command("list")
@with_settings
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def sinks_list(settings: Settings, as_json: bool) -> None:
    """Every sink (configured, or named by the database): type, state (active, paused,
    disabled, and why), backlog, oldest waiting delivery, failed events, last error."""
    schema, configured = settings.db_schema, {n: s.type for n, s in settings.sinks.items()}
    report = on_database(settings, lambda conn: sink_status.sinks(conn, schema, configured))
    if as_json:
        _output.echo_json(dataclasses.asdict(report))
    else:
        _output.print_sinks(report)


@sinks_group.command("pause")
@click.argument("name")
@click.option("--reason", help="Why, shown by `outbox status`.")
@with_settings
def sinks_pause(name: str, reason: str | None, settings: Settings) -> None:
    """Pause sink NAME: its deliveries wait, none attempted, until it is resumed."""
    changed = _sink_switch(settings, name, lambda s, c: s.pause(c, name, reason))
    click.echo(f"sink {name} paused" if changed else f"sink {name} was already paused")


@sinks_group.command("resume")
@click.argument("name")
@with_settings
def sinks_resume(name: str, settings: Settings) -> None:
    """Resume sink NAME: its waiting deliveries flow, in per-key order."""
    changed = _sink_switch(settings, name, lambda s, c: s.resume(c, name))
    click.echo(f"sink {name} resumed" if changed else f"sink {name} was not paused")


@sinks_group.command("enable")
@click.argument("name")
@with_settings
def sinks_enable(name: str, settings: Settings) -> None:
    """Switch sink NAME back on: its waiting deliveries flow, with no retry needed."""
    changed = _sink_switch(settings, name, lambda s, c: s.enable(c, name))
    click.echo(f"sink {name} enabled" if changed else f"sink {name} was not disabled")


@sinks_group.command("disable")
@click.argument("name")
@with_settings
def sinks_disable(name: str, settings: Settings) -> None:
    """Switch sink NAME off: its deliveries wait, none attempted, until it is enabled."""
    _sink_switch(settings, name, lambda s, c: s.disable(c, name))
    click.echo(f"sink {name} disabled")


def _sink_switch(
    settings: Settings,
    name: str,
    switch: Callable[[Switches, Connection], Awaitable[bool | None]],
) -> bool | None:
    runtime.database_url(settings)  # no database is a usage error, before the name is checked
    if settings.sinks and name not in settings.sinks:
        raise click.UsageError(f"no sink named {name!r} in the configuration")
    switches = Switches(settings.db_schema, settings.relay.channel)
    return on_database(settings, lambda conn: switch(switches, conn))


@main.command("demo")
@database_url_option(help="Use this database instead of an embedded one.")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where the embedded server keeps its data (reused between runs).",
)
@click.option(
    "--orders",
    default=10,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Orders the demo app commits (two events each).",
)
@click.option("--stop", is_flag=True, help="Stop the embedded server a demo left running.")
@click.pass_context
def demo_command(
    ctx: click.Context, database_url: str | None, data_dir: Path | None, orders: int, stop: bool
) -> None:
    """See it work: an app, a relay and three sinks, on an embedded PostgreSQL."""
    from outbox.demo import default_data_dir, run_demo, stop_embedded

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    if stop:
        ctx.exit(stop_embedded(data_dir or default_data_dir()))
    ctx.exit(run_demo(database_url, data_dir or default_data_dir(), orders))


if __name__ == "__main__":  # pragma: no cover
    main(prog_name=os.path.basename(sys.argv[0]))
