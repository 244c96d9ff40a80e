"""The ``outbox`` command.

Exit codes: 0 ok, 1 operational failure (database unreachable, migration failed),
2 usage or configuration error.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click
import psycopg

from outbox._urls import libpq_url
from outbox.migrate import DEFAULT_CHANNEL, DEFAULT_SCHEMA, migrate, migration_script
from outbox.plugins import (
    PluginError,
    build_sinks,
    describe_plugins,
    make_plugin_manager,
    sink_types,
)
from outbox.relay import Relay, RelayOptions
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
@click.option(
    "--channel", default=DEFAULT_CHANNEL, show_default=True, help="LISTEN/NOTIFY channel."
)
@click.option("--sql", "print_sql", is_flag=True, help="Print the SQL instead of applying it.")
def migrate_command(database_url: str | None, schema: str, channel: str, print_sql: bool) -> None:
    """Create or upgrade the outbox table (safe to run from several processes at once)."""
    try:
        if print_sql:
            click.echo(migration_script(schema=schema, channel=channel), nl=False)
            return
        if not database_url:
            raise click.UsageError("--database-url (or OUTBOX_DATABASE_URL) is required")
        applied = migrate(database_url, schema=schema, channel=channel)
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


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s %(message)s",
        stream=sys.stderr,
    )


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


def build_relay(settings: Settings, *, poll_only: bool = False) -> Relay:
    """The composition root: settings and plugins in, a ready relay out."""
    url = _require_url(settings)
    try:
        sinks = build_sinks(settings.sinks, sink_types(make_plugin_manager()))
    except ConfigError as error:
        for where, message in error.errors:
            click.echo(f"config error: {where}: {message}", err=True)
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
    )
    return Relay(url, sinks, settings.subscription_list(), options)


async def _run_until_signalled(relay: Relay, *, once: bool, drain: bool) -> None:
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
    await relay.run(once=once, drain=drain)


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
def relay_command(
    config: Path | None,
    database_url: str | None,
    once: bool,
    drain: bool,
    poll_only: bool,
    log_level: str,
) -> None:
    """Deliver events to their sinks until stopped (SIGTERM/SIGINT: graceful)."""
    _configure_logging(log_level)
    settings = _load(config, database_url=database_url)
    relay = build_relay(settings, poll_only=poll_only)
    try:
        asyncio.run(_run_until_signalled(relay, once=once, drain=drain))
    except asyncio.CancelledError:
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
def demo_command(database_url: str | None, data_dir: Path | None, orders: int) -> None:
    """See it work: an app, a relay and three sinks, on an embedded PostgreSQL."""
    from outbox.demo import default_data_dir, run_demo

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    sys.exit(run_demo(database_url, data_dir or default_data_dir(), orders))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(prog_name=os.path.basename(sys.argv[0])))
