"""``outbox publish`` and ``outbox events cancel``: sending a test event, and making sure one
never goes out.

Commands only: ``publish`` validates exactly as :func:`outbox.publish` does (it calls it),
cancelling is :mod:`outbox.cancel`; exit codes as in :mod:`outbox._command` (2 for bad input,
1 when an event could not be cancelled).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import click

from outbox import _output, cancel
from outbox._command import BadOption, Command, Connection, Failure, on_database, with_settings
from outbox.exceptions import PublishError
from outbox.publish import OutboxEvent, configure, publish
from outbox.settings import Settings


def _payload(ctx: click.Context, param: click.Parameter, value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise BadOption(
            f"invalid JSON at line {error.lineno} column {error.colno}: {error.msg} "
            """(quote it for the shell: '{"order_id": 1}')"""
        ) from None


def _headers(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for item in value:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise BadOption(f"{item!r}: write it as name=value")
        headers[name] = text
    return headers


@click.command("publish", cls=Command)
@click.argument("topic")
@click.argument("payload", metavar="JSON", callback=_payload)
@click.option("--key", help="Ordering key: events with the same key reach each sink in order.")
@click.option(
    "--header", "headers", multiple=True, callback=_headers, help="name=value (repeatable)."
)
@click.option(
    "--delay", type=click.FloatRange(min=0), help="Seconds before it is due (database clock)."
)
@click.option("--dedup-key", help="A second publish with the same key writes nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_settings
def publish_command(
    topic: str,
    payload: Any,
    key: str | None,
    headers: dict[str, str],
    delay: float | None,
    dedup_key: str | None,
    as_json: bool,
    settings: Settings,
) -> None:
    """Publish one event on TOPIC with the JSON payload, as ``outbox.publish()`` would, and
    print its id. Bad input is refused before anything is written (exit 2)."""
    configure(schema=settings.db_schema, channel=settings.relay.channel)

    async def write(conn: Connection) -> OutboxEvent:
        return await publish(
            conn, topic, payload, key=key, headers=headers, delay=delay, dedup_key=dedup_key
        )

    try:
        event = on_database(settings, write)
    except PublishError as error:
        raise Failure(f"error: {error}", 2) from None
    if as_json:
        _output.echo_json({"id": event.id, "topic": topic, "duplicate": bool(event.duplicate)})
    elif event.duplicate:
        click.echo(f"{event.id}")
        click.echo(
            f"event {event.id} already has dedup key {dedup_key!r}: nothing written", err=True
        )
    else:
        click.echo(f"{event.id}")


@click.command("cancel", cls=Command)
@click.argument("event_ids", metavar="ID...", nargs=-1, required=True, type=click.IntRange(min=1))
@click.option("--reason", help="Why, kept with the event.")
@click.option("--by", help="Who cancels it (default: the database role).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_settings
def cancel_command(
    event_ids: tuple[int, ...],
    reason: str | None,
    by: str | None,
    as_json: bool,
    settings: Settings,
) -> None:
    """Cancel pending events so that they never go out: kept as done with who, when and why
    (see `outbox events show`), later events of their keys go on. Events in flight, done or
    failed are refused (exit 1)."""
    schema = settings.db_schema
    result = on_database(
        settings, lambda conn: cancel.cancel_events(conn, schema, event_ids, by=by, reason=reason)
    )
    if as_json:
        _output.echo_json(dataclasses.asdict(result))
    for event_id in result.cancelled if not as_json else ():
        click.echo(f"event {event_id} cancelled")
    if result.refused:
        lines = [f"error: event {r.event_id} not cancelled: {r.reason}" for r in result.refused]
        raise Failure("\n".join(lines), 1)
