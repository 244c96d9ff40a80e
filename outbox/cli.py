"""The ``outbox`` command.

Exit codes: 0 ok, 1 operational failure (database unreachable, migration failed),
2 usage or configuration error.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import psycopg

from outbox import admin
from outbox._logging import configure_logging
from outbox._urls import libpq_url
from outbox.exceptions import MigrationError
from outbox.migrate import DEFAULT_SCHEMA, migrate, migration_script
from outbox.plugins import (
    PluginError,
    build_sinks,
    describe_plugins,
    make_plugin_manager,
    sink_types,
)
from outbox.relay import Relay, RelayObserver, RelayOptions
from outbox.routing import validate_pattern
from outbox.settings import ConfigError, Settings, load_settings
from outbox.store import Store


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="outbox-relay")
def main() -> None:
    """outbox-relay: one PostgreSQL table as a reliable event bus."""


@main.command("migrate")
@click.option(
    "--database-url",
    envvar="OUTBOX_DATABASE_URL",
    help="PostgreSQL URL (env: OUTBOX_DATABASE_URL).",
)
@click.option(
    "--schema", default=DEFAULT_SCHEMA, show_default=True, help="Schema of the outbox table."
)
@click.option("--sql", "print_sql", is_flag=True, help="Print the SQL instead of applying it.")
def migrate_command(database_url: str | None, schema: str, print_sql: bool) -> None:
    """Create or upgrade the outbox table (safe to run from several processes at once)."""
    if not database_url and not print_sql:
        raise click.UsageError("--database-url (or OUTBOX_DATABASE_URL) is required")
    try:
        if print_sql:
            click.echo(migration_script(schema=schema), nl=False)
            return
        assert database_url is not None
        applied = migrate(database_url, schema=schema)
    except ValueError as error:
        raise click.UsageError(str(error)) from error
    except Exception as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    if applied:
        for migration in applied:
            click.echo(f"applied {migration.version:04d}_{migration.name}")
    else:
        click.echo("up to date")


def _configure_logging(level: str, log_format: str = "text") -> None:
    configure_logging(level, log_format)


def _load(config: Path | None, **flags: Any) -> Settings:
    try:
        return load_settings(config, **flags)
    except ConfigError as error:
        for where, message in error.errors:
            click.echo(f"config error: {where}: {message}", err=True)
        sys.exit(2)


def _require_url(settings: Settings) -> str:
    url = settings.url()
    if not url:
        raise click.UsageError(
            "no database configured: pass --database-url, set OUTBOX_DATABASE_URL, "
            "or set database_url in the configuration file"
        )
    return url


def build_relay(
    settings: Settings, *, poll_only: bool = False, observer: RelayObserver | None = None
) -> Relay:
    """The composition root: settings and plugins in, a ready relay out."""
    url = _require_url(settings)
    if not settings.subscriptions:
        # A relay with no subscriptions would mark every event done, delivered nowhere.
        raise click.UsageError(
            "no subscriptions configured: add [[subscriptions]] to the configuration "
            "(config/outbox.toml, or --config FILE) so that events have somewhere to go"
        )
    try:
        sinks = build_sinks(settings.sinks, sink_types(make_plugin_manager()))
    except ConfigError as error:
        for where, message in error.errors:
            click.echo(f"config error: {where}: {message}", err=True)
        sys.exit(2)
    except PluginError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
    relay_settings = settings.relay
    options = RelayOptions(
        schema=settings.db_schema,
        channel=relay_settings.channel,
        batch_size=relay_settings.batch_size,
        concurrency=relay_settings.concurrency,
        lease_seconds=relay_settings.lease_seconds,
        delivery_timeout=relay_settings.delivery_timeout,
        poll_interval=relay_settings.poll_interval,
        listen=relay_settings.listen and not poll_only,
        retry=relay_settings.retry_policy(),
        retention_seconds=relay_settings.retention_seconds,
        retention_batch=relay_settings.retention_batch,
        maintenance_interval=relay_settings.maintenance_interval,
        claim_mode=relay_settings.claim_mode,
    )
    return Relay(url, sinks, settings.subscription_list(), options, observer=observer)


async def _run_until_signalled(
    relay: Relay, *, once: bool, drain: bool, metrics_port: int | None = None
) -> None:
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    signals_seen = 0

    def on_signal() -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            logging.getLogger("outbox.relay").info("stopping: finishing the batches in flight")
            relay.stop()
        elif main_task is not None:
            main_task.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
    server = None
    if metrics_port is not None:
        from outbox.metrics import PrometheusObserver, serve

        assert isinstance(relay.observer, PrometheusObserver)
        server = await serve(relay, relay.observer, metrics_port)
    try:
        await relay.run(once=once, drain=drain)
    finally:
        if server is not None:
            server.close()
            await server.wait_closed()


@main.command("relay")
@click.option(
    "--config",
    "config",
    type=click.Path(path_type=Path),
    help="Configuration file (default: config/outbox.toml).",
)
@click.option(
    "--database-url",
    envvar="OUTBOX_DATABASE_URL",
    help="PostgreSQL URL (env: OUTBOX_DATABASE_URL).",
)
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
def relay_command(
    config: Path | None,
    database_url: str | None,
    once: bool,
    drain: bool,
    poll_only: bool,
    log_level: str,
    log_format: str,
    metrics_port: int | None,
) -> None:
    """Deliver events to their sinks until stopped (SIGTERM/SIGINT: graceful)."""
    _configure_logging(log_level, log_format)
    settings = _load(config, database_url=database_url)
    observer = None
    if metrics_port is not None:
        from outbox.metrics import PrometheusObserver

        try:
            observer = PrometheusObserver()
        except RuntimeError as error:
            raise click.UsageError(str(error)) from error
    relay = build_relay(settings, poll_only=poll_only, observer=observer)
    try:
        asyncio.run(_run_until_signalled(relay, once=once, drain=drain, metrics_port=metrics_port))
    except asyncio.CancelledError:
        sys.exit(1)
    except MigrationError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    except OSError as error:  # the metrics port is taken
        click.echo(f"error: {error}", err=True)
        sys.exit(1)


@main.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("check")
@click.option(
    "--config",
    "config",
    type=click.Path(path_type=Path),
    help="Configuration file (default: config/outbox.toml).",
)
def config_check(config: Path | None) -> None:
    """Validate everything, resolving each sink type through the plugins; exit 2 on errors."""
    errors: list[tuple[str, str]] = []
    try:
        settings = load_settings(config)
    except ConfigError as error:
        errors = error.errors
    else:
        try:
            build_sinks(settings.sinks, sink_types(make_plugin_manager()))
        except ConfigError as error:
            errors = error.errors
        except PluginError as error:
            errors = [("plugins", str(error))]
    if errors:
        for where, message in errors:
            click.echo(f"{where}: {message}", err=True)
        click.echo(f"{len(errors)} error(s)", err=True)
        sys.exit(2)
    click.echo(f"ok: {len(settings.sinks)} sink(s), {len(settings.subscriptions)} subscription(s)")


@main.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins_command(as_json: bool) -> None:
    """List the loaded plugins and the sink types they bring."""
    try:
        described = describe_plugins(make_plugin_manager())
    except PluginError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(info) for info in described], indent=2))
        return
    for info in described:
        version = f" {info.version}" if info.version else ""
        types = ", ".join(info.sink_types) or "-"
        click.echo(f"{info.name}  ({info.package or '?'}{version})  sink types: {types}")


@main.group("sinks")
def sinks_group() -> None:
    """Switch sinks on and off (a sink answering 410 Gone is switched off by the relay)."""


def _sink_switch(config: Path | None, database_url: str | None, name: str, *, enable: bool) -> None:
    settings = _load(config, database_url=database_url)
    url = _require_url(settings)
    if settings.sinks and name not in settings.sinks:
        raise click.UsageError(f"no sink named {name!r} in the configuration")
    store = Store(settings.db_schema)

    async def switch() -> bool:
        conn = await psycopg.AsyncConnection.connect(libpq_url(url), autocommit=True)
        async with conn:
            if enable:
                return await store.enable_sink(conn, name)
            await store.disable_sink(conn, name, "disabled by an operator")
            return True

    try:
        changed = asyncio.run(switch())
    except psycopg.Error as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    state = "enabled" if enable else "disabled"
    click.echo(f"sink {name} {state}" if changed else f"sink {name} was not disabled")


@sinks_group.command("enable")
@click.argument("name")
@click.option("--config", "config", type=click.Path(path_type=Path))
@click.option("--database-url", envvar="OUTBOX_DATABASE_URL")
def sinks_enable(name: str, config: Path | None, database_url: str | None) -> None:
    """Switch sink NAME back on; its failed events can then be retried."""
    _sink_switch(config, database_url, name, enable=True)


@sinks_group.command("disable")
@click.argument("name")
@click.option("--config", "config", type=click.Path(path_type=Path))
@click.option("--database-url", envvar="OUTBOX_DATABASE_URL")
def sinks_disable(name: str, config: Path | None, database_url: str | None) -> None:
    """Switch sink NAME off: relays fail its deliveries at once until it is enabled."""
    _sink_switch(config, database_url, name, enable=False)


@main.command("demo")
@click.option(
    "--database-url",
    envvar="OUTBOX_DATABASE_URL",
    help="Use this database instead of an embedded one.",
)
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
def demo_command(database_url: str | None, data_dir: Path | None, orders: int, stop: bool) -> None:
    """See it work: an app, a relay and three sinks, on an embedded PostgreSQL."""
    from outbox.demo import default_data_dir, run_demo, stop_embedded

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    if stop:
        sys.exit(stop_embedded(data_dir or default_data_dir()))
    sys.exit(run_demo(database_url, data_dir or default_data_dir(), orders))


# -- operator commands: status, events, retry, replay, purge (their SQL is in outbox.admin) --
#
# A repair (retry, replay, purge) says how many events it matches and asks before it touches
# any: --yes skips the question; without --yes and without a terminal on stdin it stops with
# exit 2. Answering no changes nothing and exits 1 (click's convention for an abort).

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])


def _db_options(command: _F) -> _F:
    command = click.option(
        "--database-url",
        envvar="OUTBOX_DATABASE_URL",
        help="PostgreSQL URL (env: OUTBOX_DATABASE_URL).",
    )(command)
    return click.option(
        "--config",
        "config",
        type=click.Path(path_type=Path),
        help="Configuration file (default: config/outbox.toml).",
    )(command)


def _repair_options(command: _F) -> _F:
    command = click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")(command)
    command = click.option(
        "--batch-size",
        default=admin.DEFAULT_BATCH,
        show_default=True,
        type=click.IntRange(1, 100_000),
        help="Rows per statement; each batch commits by itself.",
    )(command)
    command = click.option(
        "--dry-run", is_flag=True, help="Only say how many events match; change nothing."
    )(command)
    return click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")(command)


def _topic_pattern(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return validate_pattern(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from error


def _time_bound(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> admin.TimeBound | None:
    if value is None:
        return None
    try:
        return admin.parse_time(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from error


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> dt.timedelta:
    try:
        return admin.parse_duration(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from error


def _admin_target(config: Path | None, database_url: str | None) -> tuple[str, str]:
    settings = _load(config, database_url=database_url)
    return libpq_url(_require_url(settings)), settings.db_schema


def _with_db(url: str, work: Callable[[admin.Connection], Awaitable[_T]]) -> _T:
    """Run ``work`` on an autocommit connection; a database error ends the command with
    exit 1 and its first line, no traceback."""

    async def run() -> _T:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
        async with conn:
            return await work(conn)

    try:
        return asyncio.run(run())
    except psycopg.Error as error:
        lines = str(error).strip().splitlines() or [type(error).__name__]
        click.echo(f"error: {lines[0]}", err=True)
        sys.exit(1)


def _json_default(value: object) -> object:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _echo_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, default=_json_default))


def _when(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


def _ago(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        click.echo("  ".join(cells).rstrip())


@main.command("status")
@_db_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status_command(config: Path | None, database_url: str | None, as_json: bool) -> None:
    """Events per topic and status, lag, parked keys, failing sinks, relays (holding leases,
    connected)."""
    url, schema = _admin_target(config, database_url)
    report = _with_db(url, lambda conn: admin.status(conn, schema))
    if as_json:
        _echo_json(dataclasses.asdict(report))
        return
    _print_counts(report)
    _print_health(report)


def _print_counts(report: admin.Status) -> None:
    header = ["TOPIC", *(status.upper() for status in admin.STATUSES)]
    rows = [
        [topic, *(str(counts[s]) for s in admin.STATUSES)]
        for topic, counts in report.topics.items()
    ]
    total = ["total", *(str(report.totals[s]) for s in admin.STATUSES)]
    _table([header, *rows, total])
    lag = report.lag
    if lag is None:
        click.echo("\nlag: none (no event is due)")
    else:
        click.echo(
            f"\nlag: {_ago(lag.seconds)} ({lag.due} due; longest waiting: event {lag.event_id}, "
            f"{lag.topic}, created {_when(lag.created_at)})"
        )


def _print_health(report: admin.Status) -> None:
    click.echo(f"parked keys: {report.parked_keys}")
    for parked in report.parked:
        click.echo(
            f"  {parked.key}: event {parked.failed_id} ({parked.topic}) failed, "
            f"{parked.waiting} waiting behind it: {parked.error or '-'}"
        )
    if report.parked_keys > len(report.parked):
        click.echo(f"  ... and {report.parked_keys - len(report.parked)} more")
    click.echo(f"failing sinks: {len(report.failing_sinks)}")
    for sink in report.failing_sinks:
        click.echo(
            f"  {sink.sink}: {sink.retrying} retrying, {sink.failed} failed; "
            f"latest error (event {sink.last_event_id}): {sink.last_error or '-'}"
        )
    click.echo(f"disabled sinks: {len(report.disabled_sinks)}")
    for disabled in report.disabled_sinks:
        click.echo(
            f"  {disabled.sink}: since {_when(disabled.disabled_at)}: {disabled.reason or '-'}"
        )
    click.echo(f"relays holding leases: {len(report.relays)}")
    for relay in report.relays:
        expired = f", {relay.expired} expired" if relay.expired else ""
        click.echo(
            f"  {relay.relay or '?'}: {relay.events} event(s), "
            f"leases until {_when(relay.lease_until)}{expired}"
        )
    click.echo(f"relays connected: {len(report.connected)}")
    for connected in report.connected:
        transaction = (
            ""
            if connected.oldest_transaction is None
            else f", oldest transaction open {_ago(connected.oldest_transaction)}"
        )
        click.echo(f"  {connected.relay}: {connected.connections} connection(s){transaction}")


@main.group("events")
def events_group() -> None:
    """Look at events."""


@events_group.command("list")
@_db_options
@click.option(
    "--topic", callback=_topic_pattern, help="Topic pattern ('*' one segment, '#' any number)."
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(admin.STATUSES),
    help="Event status (repeatable).",
)
@click.option("--key", help="Ordering key.")
@click.option("--sink", help="Only events with a delivery entry for this sink.")
@click.option(
    "--sink-status", type=click.Choice(admin.SINK_STATUSES), help="That sink's delivery status."
)
@click.option("--since", callback=_time_bound, help="Created at or after (ISO time, or 10m, 7d).")
@click.option("--until", callback=_time_bound, help="Created before (ISO time, or 10m, 7d).")
@click.option(
    "--limit", default=admin.LIST_LIMIT, show_default=True, type=click.IntRange(1, 100_000)
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def events_list(
    config: Path | None,
    database_url: str | None,
    topic: str | None,
    statuses: tuple[str, ...],
    key: str | None,
    sink: str | None,
    sink_status: str | None,
    since: admin.TimeBound | None,
    until: admin.TimeBound | None,
    limit: int,
    as_json: bool,
) -> None:
    """Events matching the filters, newest first. Times without an offset are UTC."""
    if sink_status and not sink:
        raise click.UsageError("--sink-status needs --sink")
    selection = admin.EventFilter(
        statuses=statuses or None,
        topic=topic,
        key=key,
        sink=sink,
        sink_status=sink_status,
        since=since,
        until=until,
    )
    url, schema = _admin_target(config, database_url)
    found = _with_db(url, lambda conn: admin.list_events(conn, schema, selection, limit=limit))
    if as_json:
        _echo_json([dataclasses.asdict(event) for event in found])
        return
    if not found:
        click.echo("no events match")
        return
    header = ["ID", "STATUS", "ATTEMPTS", "CREATED", "TOPIC", "KEY", "SINKS", "LAST ERROR"]
    _table([header, *(_event_row(event) for event in found)])
    more = f" (the newest {limit}; raise --limit for more)" if len(found) == limit else ""
    click.echo(f"{len(found)} event(s){more}")


def _event_row(event: admin.EventSummary) -> list[str]:
    sinks = ",".join(f"{name}:{state}" for name, state in event.sinks.items())
    error = (event.last_error or "").replace("\n", " ")
    return [
        str(event.id),
        event.status,
        str(event.attempts),
        _when(event.created_at),
        event.topic,
        event.key or "-",
        sinks or "-",
        error[:60] + ("..." if len(error) > 60 else ""),
    ]


@events_group.command("show")
@click.argument("event_id", type=click.IntRange(min=1))
@_db_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def events_show(
    event_id: int, config: Path | None, database_url: str | None, as_json: bool
) -> None:
    """Everything about event EVENT_ID; exit 1 if there is no such event."""
    url, schema = _admin_target(config, database_url)
    event = _with_db(url, lambda conn: admin.get_event(conn, schema, event_id))
    if event is None:
        click.echo(f"error: no event {event_id}", err=True)
        sys.exit(1)
    if as_json:
        _echo_json(dataclasses.asdict(event))
        return
    _print_event(event)


def _print_event(event: admin.EventDetail) -> None:
    click.echo(f"event {event.id}")
    for name in ("topic", "key", "status", "attempts", "dedup_key", "txid", "last_error"):
        value = getattr(event, name)
        click.echo(f"  {name:<13} {'-' if value is None else value}")
    for name in ("created_at", "process_at", "done_at", "locked_until"):
        click.echo(f"  {name:<13} {_when(getattr(event, name))}")
    click.echo(f"  {'locked_by':<13} {event.locked_by or '-'}")
    click.echo(f"  {'lease_token':<13} {event.lease_token or '-'}")
    click.echo("deliveries:")
    for sink, state in event.deliveries.items():
        click.echo(f"  {sink}: {json.dumps(state, sort_keys=True)}")
    click.echo("errors:")
    for error in event.errors:
        click.echo(
            f"  {error.get('at', '?')} {error.get('sink', '?')} "
            f"attempt {error.get('attempt', '?')}: {error.get('error', '')}"
        )
    click.echo("headers:")
    click.echo(json.dumps(event.headers, indent=2, sort_keys=True))
    click.echo("payload:")
    click.echo(json.dumps(event.payload, indent=2))


def _repair(
    url: str,
    schema: str,
    plan: admin.Plan,
    *,
    what: str,
    question: str,
    done: str,
    yes: bool,
    dry_run: bool,
    batch_size: int,
    as_json: bool,
) -> None:
    """Say what ``plan`` matches, ask, carry it out in batches, say what it touched."""
    click.echo(f"{plan.matched} {what} match", err=as_json)
    touched = 0
    if plan.matched and not dry_run:
        if not yes and not _confirm(question, err=as_json):
            click.echo("aborted: nothing changed", err=True)
            if as_json:
                _echo_json({"matched": plan.matched, "touched": 0})
            sys.exit(1)

        def progress(count: int) -> None:
            click.echo(f"{plan.action}: {count} of {plan.matched}", err=True)

        try:
            touched = _with_db(
                url,
                lambda conn: admin.apply(
                    conn, schema, plan, batch_size=batch_size, on_batch=progress
                ),
            )
        except KeyboardInterrupt:
            click.echo("interrupted: the batches already done stay done", err=True)
            sys.exit(130)
        click.echo(f"{done} {touched} {what}", err=as_json)
    if as_json:
        _echo_json({"matched": plan.matched, "touched": touched})


def _confirm(question: str, *, err: bool) -> bool:
    if sys.stdin is None or not sys.stdin.isatty():
        click.echo(
            "error: confirmation needed but stdin is not a terminal: pass --yes to go ahead",
            err=True,
        )
        sys.exit(2)
    try:
        return click.confirm(question, default=False, err=err)
    except click.Abort:  # end of input or Ctrl-C at the prompt
        return False


@main.command("retry")
@_db_options
@click.option(
    "--id", "ids", multiple=True, type=click.IntRange(min=1), help="Event id (repeatable)."
)
@click.option("--topic", callback=_topic_pattern, help="Topic pattern ('*', '#').")
@click.option("--sink", help="Only events failed for this sink, and only its deliveries.")
@click.option("--all", "everything", is_flag=True, help="Every failed event.")
@_repair_options
def retry_command(
    config: Path | None,
    database_url: str | None,
    ids: tuple[int, ...],
    topic: str | None,
    sink: str | None,
    everything: bool,
    yes: bool,
    dry_run: bool,
    batch_size: int,
    as_json: bool,
) -> None:
    """Hand failed events back to the relay, due now.

    Only the sinks that had not acknowledged are delivered again, with their attempts reset;
    delivered sinks stay delivered. With --sink, only that sink's failed deliveries.
    """
    chosen = bool(ids or topic or sink)
    if everything == chosen:
        raise click.UsageError(
            "say which failed events: --id, --topic and/or --sink, or --all (not both)"
        )
    url, schema = _admin_target(config, database_url)

    async def plan_it(conn: admin.Connection) -> tuple[admin.Plan, list[str]]:
        plan = await admin.plan_retry(conn, schema, ids=ids, topic=topic, sink=sink)
        disabled = [d.sink for d in await admin.disabled_sinks(conn, schema)]
        return plan, disabled

    plan, disabled = _with_db(url, plan_it)
    if sink in disabled:
        click.echo(
            f"warning: sink {sink} is disabled, so relays fail its deliveries at once: "
            f"run `outbox sinks enable {sink}` first",
            err=True,
        )
    _repair(
        url,
        schema,
        plan,
        what="failed event(s)",
        question=f"Retry {plan.matched} failed event(s)?",
        done="retried",
        yes=yes,
        dry_run=dry_run,
        batch_size=batch_size,
        as_json=as_json,
    )


@main.command("replay")
@_db_options
@click.option(
    "--since", required=True, callback=_time_bound, help="Created at or after (ISO, or 7d ago)."
)
@click.option("--until", callback=_time_bound, help="Created before (ISO, or 1h ago).")
@click.option("--topic", callback=_topic_pattern, help="Topic pattern ('*', '#').")
@click.option("--sink", help="Deliver again to this sink only (events it had been delivered).")
@_repair_options
def replay_command(
    config: Path | None,
    database_url: str | None,
    since: admin.TimeBound,
    until: admin.TimeBound | None,
    topic: str | None,
    sink: str | None,
    yes: bool,
    dry_run: bool,
    batch_size: int,
    as_json: bool,
) -> None:
    """Deliver done events again: to every sink subscribed now, or to --sink only.

    Sinks see the same event id again: idempotent sinks ignore it, which is what they are for.
    Times without an offset are UTC.
    """
    url, schema = _admin_target(config, database_url)
    plan = _with_db(
        url,
        lambda conn: admin.plan_replay(
            conn, schema, since=since, until=until, topic=topic, sink=sink
        ),
    )
    target = f"sink {sink}" if sink else "every subscribed sink"
    _repair(
        url,
        schema,
        plan,
        what="done event(s)",
        question=f"Deliver {plan.matched} done event(s) again to {target}?",
        done="replayed",
        yes=yes,
        dry_run=dry_run,
        batch_size=batch_size,
        as_json=as_json,
    )


@main.command("purge")
@_db_options
@click.option(
    "--older-than",
    required=True,
    callback=_duration,
    help="Finished longer ago than this (90m, 2h, 7d).",
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    default=("done",),
    show_default=True,
    type=click.Choice(["done", "failed"]),
    help="Which finished events (repeatable). Deleting a failed event unparks its key.",
)
@_repair_options
def purge_command(
    config: Path | None,
    database_url: str | None,
    older_than: dt.timedelta,
    statuses: tuple[str, ...],
    yes: bool,
    dry_run: bool,
    batch_size: int,
    as_json: bool,
) -> None:
    """Delete finished events whose done_at is older than --older-than, in batches."""
    url, schema = _admin_target(config, database_url)
    plan = _with_db(
        url,
        lambda conn: admin.plan_purge(conn, schema, older_than=older_than, statuses=statuses),
    )
    kinds = " or ".join(sorted(statuses))
    _repair(
        url,
        schema,
        plan,
        what=f"{kinds} event(s)",
        question=f"Delete {plan.matched} {kinds} event(s)?",
        done="deleted",
        yes=yes,
        dry_run=dry_run,
        batch_size=batch_size,
        as_json=as_json,
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(prog_name=os.path.basename(sys.argv[0])))
