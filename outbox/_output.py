"""What the ``outbox`` commands print: tables, JSON, times and durations, and the reports of
``status`` and ``events``. Times are shown in UTC."""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING

import click

from outbox import admin, sink_status

if TYPE_CHECKING:
    from outbox.plugins import PluginInfo


def echo_json(data: object) -> None:
    """``data`` as indented JSON on stdout; datetimes as ISO 8601 in UTC; text as it is
    (``é``, not ``\\u00e9``)."""
    click.echo(json.dumps(data, indent=2, default=_json_default, ensure_ascii=False))


def _json_default(value: object) -> object:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def when(value: dt.datetime | None) -> str:
    """A point in time, to the second, in UTC; ``-`` for none."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


def ago(seconds: float) -> str:
    """A duration in the largest unit that keeps it readable: 42.0s, 3.5m, 7.0h, 2.5d."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def table(rows: list[list[str]]) -> None:
    """Rows as left-aligned columns two spaces apart; the first row is the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        click.echo("  ".join(cells).rstrip())


# -- outbox status ------------------------------------------------------------------------------


def print_status(report: admin.Status) -> None:
    _print_counts(report)
    _print_health(report)


def _print_counts(report: admin.Status) -> None:
    header = ["TOPIC", *(status.upper() for status in admin.STATUSES)]
    rows = [
        [topic, *(str(counts[s]) for s in admin.STATUSES)]
        for topic, counts in report.topics.items()
    ]
    total = ["total", *(str(report.totals[s]) for s in admin.STATUSES)]
    table([header, *rows, total])
    lag = report.lag
    if lag is None:
        click.echo("\nlag: none (no event is due)")
    else:
        click.echo(
            f"\nlag: {ago(lag.seconds)} ({lag.due} due; longest waiting: event {lag.event_id}, "
            f"{lag.topic}, created {when(lag.created_at)})"
        )


def _print_health(report: admin.Status) -> None:
    click.echo(f"sinks: {len(report.sinks)}")
    _print_sinks(report.sinks)
    _print_unrouted(report.unrouted)
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
            f"  {disabled.sink}: since {when(disabled.disabled_at)}: {disabled.reason or '-'}"
        )
    _print_relays(report)


def _print_relays(report: admin.Status) -> None:
    click.echo(f"relays holding leases: {len(report.relays)}")
    for relay in report.relays:
        expired = f", {relay.expired} expired" if relay.expired else ""
        click.echo(
            f"  {relay.relay or '?'}: {relay.events} event(s), "
            f"leases until {when(relay.lease_until)}{expired}"
        )
    click.echo(f"relays connected: {len(report.connected)}")
    for connected in report.connected:
        transaction = (
            ""
            if connected.oldest_transaction is None
            else f", oldest transaction open {ago(connected.oldest_transaction)}"
        )
        click.echo(f"  {connected.relay}: {connected.connections} connection(s){transaction}")
    _print_fence_holder(report.fence_holder)


def _print_fence_holder(holder: admin.FenceHolder | None) -> None:
    # Keyed events wait for every older transaction of their database (decisions 2 and 9).
    if holder is None:
        click.echo("oldest transaction in this database: none")
        return
    who = "prepared transaction" if holder.prepared else f"pid {holder.pid}"
    click.echo(
        f"oldest transaction in this database: {who}, database {holder.database or '?'}, "
        f"user {holder.user or '?'}, open {ago(holder.age)}, {holder.state or '?'}; "
        f"holds back {holder.held_back} due keyed event(s)"
    )
    if holder.prepared:
        click.echo(f"  gid: {holder.query}")
    elif holder.query is not None:
        started = "" if holder.query_start is None else f" (started {when(holder.query_start)})"
        click.echo(f"  query{started}: {' '.join(holder.query.split())}")


# -- outbox sinks list --------------------------------------------------------------------------


def print_sinks(report: sink_status.SinksReport) -> None:
    """A row per sink, then why each held sink is held, then the events no sink counts."""
    if not report.sinks:
        click.echo("no sinks configured or known to the database")
    _print_sinks(report.sinks)
    _print_unrouted(report.unrouted)


def _print_sinks(sinks: list[sink_status.SinkStatus]) -> None:
    if not sinks:
        return
    header = ["SINK", "TYPE", "STATE", "BACKLOG", "OLDEST", "FAILED", "LAST ERROR"]
    rows = [
        [
            sink.name,
            sink.type or "-",
            sink.state,
            str(sink.backlog),
            "-" if sink.oldest_waiting_seconds is None else ago(sink.oldest_waiting_seconds),
            str(sink.failed),
            _short(sink.last_error),
        ]
        for sink in sinks
    ]
    table([header, *rows])
    for sink in sinks:
        if sink.held:
            also = " (and paused)" if sink.paused and sink.disabled else ""
            click.echo(
                f"  {sink.name}: {sink.state}{also} since {when(sink.since)}: {sink.reason or '-'}"
            )


def _print_unrouted(unrouted: sink_status.Unrouted) -> None:
    click.echo(
        f"not yet routed: {unrouted.not_routed} event(s) (never claimed: their sinks are not "
        "known yet)"
    )
    click.echo(
        f"events no subscription matched: {unrouted.no_subscription} "
        f"({unrouted.no_subscription_last_hour} in the last hour)"
    )


def _short(text: str | None, width: int = 60) -> str:
    flat = (text or "-").replace("\n", " ")
    return flat[:width] + ("..." if len(flat) > width else "")


# -- outbox events ------------------------------------------------------------------------------


def print_events(found: list[admin.EventSummary], limit: int) -> None:
    """One row per event, then how many (and whether ``limit`` cut the list short)."""
    if not found:
        click.echo("no events match")
        return
    header = ["ID", "STATUS", "ATTEMPTS", "CREATED", "TOPIC", "KEY", "SINKS", "LAST ERROR"]
    table([header, *(_event_row(event) for event in found)])
    more = f" (the newest {limit}; raise --limit for more)" if len(found) == limit else ""
    click.echo(f"{len(found)} event(s){more}")


def _event_row(event: admin.EventSummary) -> list[str]:
    sinks = ",".join(f"{name}:{state}" for name, state in event.sinks.items())
    error = (event.last_error or "").replace("\n", " ")
    return [
        str(event.id),
        event.status,
        str(event.attempts),
        when(event.created_at),
        event.topic,
        event.key or "-",
        sinks or "-",
        error[:60] + ("..." if len(error) > 60 else ""),
    ]


def print_event(event: admin.EventDetail) -> None:
    click.echo(f"event {event.id}")
    names = ("topic", "key", "status", "attempts", "crashes", "dedup_key", "txid", "last_error")
    for name in names:
        value = getattr(event, name)
        click.echo(f"  {name:<13} {'-' if value is None else value}")
    for name in ("created_at", "process_at", "done_at", "locked_until"):
        click.echo(f"  {name:<13} {when(getattr(event, name))}")
    click.echo(f"  {'locked_by':<13} {event.locked_by or '-'}")
    click.echo(f"  {'lease_token':<13} {event.lease_token or '-'}")
    if event.suspect:
        click.echo(f"  {'suspect':<13} yes: in flight when a relay died, retried alone")
    click.echo("deliveries:")
    for sink, state in event.deliveries.items():
        click.echo(f"  {sink}: {json.dumps(state, sort_keys=True, ensure_ascii=False)}")
    click.echo("errors:")
    for error in event.errors:
        click.echo(
            f"  {error.get('at', '?')} {error.get('sink') or 'relay'} "
            f"attempt {error.get('attempt', '?')}: {error.get('error', '')}"
        )
    click.echo("headers:")
    click.echo(json.dumps(event.headers, indent=2, sort_keys=True, ensure_ascii=False))
    click.echo("payload:")
    click.echo(json.dumps(event.payload, indent=2, ensure_ascii=False))


# -- outbox plugins -----------------------------------------------------------------------------


def print_plugins(described: list[PluginInfo]) -> None:
    for info in described:
        version = f" {info.version}" if info.version else ""
        types = ", ".join(info.sink_types) or "-"
        click.echo(f"{info.name}  ({info.package or '?'}{version})  sink types: {types}")
