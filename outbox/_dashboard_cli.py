"""``outbox dashboard``: serve the web dashboard (extra ``[dashboard]``).

Command only: the application is :mod:`outbox.dashboard`, its safety rules (where it may
listen, basic auth, CSRF) :mod:`outbox.dashboard.security`.
"""

from __future__ import annotations

import click

from outbox import admin
from outbox._command import Command, Failure, on_database, with_settings
from outbox.settings import Settings


@click.command("dashboard", cls=Command)
@with_settings
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; any but loopback needs basic auth configured.",
)
@click.option("--port", default=8050, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--allow-actions",
    is_flag=True,
    help="Let the page retry, replay and cancel events and switch sinks (off: read-only).",
)
def dashboard_command(settings: Settings, host: str, port: int, allow_actions: bool) -> None:
    """Serve the dashboard: overview, events, sinks; read-only unless --allow-actions."""
    try:
        import uvicorn

        from outbox.dashboard import create_app
        from outbox.dashboard.security import check_bind, credentials
    except ModuleNotFoundError as error:
        raise Failure(f"error: {error}", 2) from None
    auth = credentials(settings)
    check_bind(host, auth)
    schema = settings.db_schema
    on_database(settings, lambda conn: admin.disabled_sinks(conn, schema))  # reachable, migrated
    app = create_app(settings, allow_actions=allow_actions, auth=auth)
    shown = f"[{host}]" if ":" in host else host
    mode = "actions on" if allow_actions else "read-only"
    click.echo(f"outbox dashboard: http://{shown}:{port}/ ({mode}); Ctrl-C stops it", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", server_header=False)
