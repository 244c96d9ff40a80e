"""The ``outbox`` command.

Exit codes: 0 ok, 1 operational failure (database unreachable, migration failed),
2 usage or configuration error.
"""

from __future__ import annotations

import os
import sys

import click

from outbox.migrate import DEFAULT_CHANNEL, DEFAULT_SCHEMA, migrate, migration_script


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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(prog_name=os.path.basename(sys.argv[0])))
