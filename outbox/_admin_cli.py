"""The operator's commands: ``status``, ``events list|show``, ``retry``, ``replay``, ``purge``.

Commands only: the work is in :mod:`outbox.admin`, the layout in :mod:`outbox._output`, the
errors' exit codes in :mod:`outbox._command`.

A repair (retry, replay, purge) says how many events it matches and asks before it touches
any: --yes skips the question; without --yes and without a terminal on stdin it stops with
exit 2. Answering no changes nothing and exits 1 (click's convention for an abort).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from outbox import _output, admin
from outbox._command import (
    BadOption,
    Command,
    Connection,
    Failure,
    Group,
    check_sink_name,
    on_database,
    with_settings,
)
from outbox.routing import validate_pattern
from outbox.settings import Settings

_F = TypeVar("_F", bound=Callable[..., Any])


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
        raise BadOption(str(error)) from error


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> dt.timedelta:
    try:
        return admin.parse_duration(value)
    except ValueError as error:
        raise BadOption(str(error)) from error


@click.command("status", cls=Command)
@with_settings
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status_command(settings: Settings, as_json: bool) -> None:
    """Events per topic and status, lag, parked keys, each sink (state, backlog, oldest
    waiting, failed), events no subscription matched, relays (holding leases, connected)."""
    schema = settings.db_schema
    configured = {name: sink.type for name, sink in settings.sinks.items()}
    report = on_database(settings, lambda conn: admin.status(conn, schema, configured))
    if as_json:
        _output.echo_json(dataclasses.asdict(report))
    else:
        _output.print_status(report)


@click.group("events", cls=Group)
def events_group() -> None:
    """Look at events."""


@events_group.command("list")
@with_settings
@click.option(
    "--topic", callback=_topic_pattern, help="Topic pattern ('*' one segment, '#' any number)."
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice((*admin.STATUSES, "cancelled")),
    help="Event status (repeatable; cancelled: done events that were cancelled, alone).",
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
    settings: Settings,
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
    check_sink_name(settings, sink)
    if "cancelled" in statuses and (len(statuses) > 1 or sink):
        raise click.UsageError("--status cancelled goes alone: no other --status, no --sink")
    selection = admin.EventFilter(
        statuses=statuses or None,
        topic=topic,
        key=key,
        sink=sink,
        sink_status=sink_status,
        since=since,
        until=until,
    )
    schema = settings.db_schema
    found = on_database(
        settings, lambda conn: admin.list_events(conn, schema, selection, limit=limit)
    )
    if as_json:
        _output.echo_json([dataclasses.asdict(event) for event in found])
    else:
        _output.print_events(found, limit)


@events_group.command("show")
@click.argument("event_id", type=click.IntRange(min=1))
@with_settings
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def events_show(event_id: int, settings: Settings, as_json: bool) -> None:
    """Everything about event EVENT_ID; exit 1 if there is no such event."""
    schema = settings.db_schema
    event = on_database(settings, lambda conn: admin.get_event(conn, schema, event_id))
    if event is None:
        raise Failure(f"error: no event {event_id}")
    if as_json:
        _output.echo_json(dataclasses.asdict(event))
    else:
        _output.print_event(event)


def _repair(
    settings: Settings,
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
            if as_json:
                _output.echo_json({"matched": plan.matched, "touched": 0})
            raise Failure("aborted: nothing changed")
        touched = _apply(settings, plan, batch_size)
        click.echo(f"{done} {touched} {what}", err=as_json)
    if as_json:
        _output.echo_json({"matched": plan.matched, "touched": touched})


def _apply(settings: Settings, plan: admin.Plan, batch_size: int) -> int:
    schema = settings.db_schema

    def progress(count: int) -> None:
        click.echo(f"{plan.action}: {count} of {plan.matched}", err=True)

    try:
        return on_database(
            settings,
            lambda conn: admin.apply(conn, schema, plan, batch_size=batch_size, on_batch=progress),
        )
    except KeyboardInterrupt:
        raise Failure("interrupted: the batches already done stay done", 130) from None


def _confirm(question: str, *, err: bool) -> bool:
    if sys.stdin is None or not sys.stdin.isatty():
        raise Failure(
            "error: confirmation needed but stdin is not a terminal: pass --yes to go ahead", 2
        )
    try:
        return click.confirm(question, default=False, err=err)
    except click.Abort:  # end of input or Ctrl-C at the prompt
        return False


@click.command("retry", cls=Command)
@with_settings
@click.option(
    "--id", "ids", multiple=True, type=click.IntRange(min=1), help="Event id (repeatable)."
)
@click.option("--topic", callback=_topic_pattern, help="Topic pattern ('*', '#').")
@click.option("--sink", help="Only events failed for this sink, and only its deliveries.")
@click.option(
    "--all", "everything", is_flag=True, help="Every failed event (with --sink: failed for it)."
)
@_repair_options
def retry_command(
    settings: Settings,
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
    delivered sinks stay delivered. With --sink, only that sink's failed deliveries:
    ``--sink NAME --all`` retries every one of them.
    """
    if everything and (ids or topic):
        raise click.UsageError("say which failed events: --id and/or --topic, or --all (not both)")
    if not (everything or ids or topic or sink):
        raise click.UsageError(
            "say which failed events: --id, --topic and/or --sink, or --all "
            "(--sink NAME --all: every failed delivery to that sink)"
        )
    check_sink_name(settings, sink)
    schema = settings.db_schema

    async def plan_it(conn: Connection) -> tuple[admin.Plan, list[str]]:
        plan = await admin.plan_retry(conn, schema, ids=ids, topic=topic, sink=sink)
        disabled = [d.sink for d in await admin.disabled_sinks(conn, schema)]
        return plan, disabled

    plan, disabled = on_database(settings, plan_it)
    if sink in disabled:
        click.echo(
            f"warning: sink {sink} is disabled, so relays fail its deliveries at once: "
            f"run `outbox sinks enable {sink}` first",
            err=True,
        )
    _repair(
        settings,
        plan,
        what="failed event(s)",
        question=f"Retry {plan.matched} failed event(s)?",
        done="retried",
        yes=yes,
        dry_run=dry_run,
        batch_size=batch_size,
        as_json=as_json,
    )


@click.command("replay", cls=Command)
@with_settings
@click.option(
    "--since", required=True, callback=_time_bound, help="Created at or after (ISO, or 7d ago)."
)
@click.option("--until", callback=_time_bound, help="Created before (ISO, or 1h ago).")
@click.option("--topic", callback=_topic_pattern, help="Topic pattern ('*', '#').")
@click.option("--sink", help="Deliver again to this sink only (events it had been delivered).")
@_repair_options
def replay_command(
    settings: Settings,
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
    check_sink_name(settings, sink)
    schema = settings.db_schema
    plan = on_database(
        settings,
        lambda conn: admin.plan_replay(
            conn, schema, since=since, until=until, topic=topic, sink=sink
        ),
    )
    target = f"sink {sink}" if sink else "every subscribed sink"
    _repair(
        settings,
        plan,
        what="done event(s)",
        question=f"Deliver {plan.matched} done event(s) again to {target}?",
        done="replayed",
        yes=yes,
        dry_run=dry_run,
        batch_size=batch_size,
        as_json=as_json,
    )


@click.command("purge", cls=Command)
@with_settings
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
    settings: Settings,
    older_than: dt.timedelta,
    statuses: tuple[str, ...],
    yes: bool,
    dry_run: bool,
    batch_size: int,
    as_json: bool,
) -> None:
    """Delete finished events whose done_at is older than --older-than, in batches."""
    schema = settings.db_schema
    plan = on_database(
        settings,
        lambda conn: admin.plan_purge(conn, schema, older_than=older_than, statuses=statuses),
    )
    kinds = " or ".join(sorted(statuses))
    _repair(
        settings,
        plan,
        what=f"{kinds} event(s)",
        question=f"Delete {plan.matched} {kinds} event(s)?",
        done="deleted",
        yes=yes,
        dry_run=dry_run,
        batch_size=batch_size,
        as_json=as_json,
    )


COMMANDS: tuple[click.Command, ...] = (
    status_command,
    events_group,
    retry_command,
    replay_command,
    purge_command,
)
