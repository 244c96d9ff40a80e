"""The ``outbox`` command.

Exit codes: 0 ok, 1 operational failure (database unreachable, migration failed),
2 usage or configuration error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click

from outbox.migrate import DEFAULT_CHANNEL, DEFAULT_SCHEMA, migrate, migration_script
from outbox.plugins import build_sinks, make_plugin_manager, sink_types
from outbox.relay import Relay, RelayOptions
from outbox.settings import ConfigError, Settings, load_settings


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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(prog_name=os.path.basename(sys.argv[0])))
