"""What the dashboard changes, only when it was started with ``--allow-actions``: retry,
replay and cancel events, and switch sinks (pause, resume, disable, enable).

A repair goes in two steps, as on the CLI: ``GET /actions/retry?topic=...`` plans it (the
CLI's :func:`outbox.admin.plan_retry`, ``plan_replay``) and shows how many events it will
touch with a button to confirm; the ``POST`` of that form plans again and applies
(:func:`outbox.admin.apply`), never past the highest id the operator saw counted, so an event
published in between is not touched. Cancelling is :func:`outbox.cancel.cancel_events`, by id.
Every ``POST`` carries the CSRF token (:mod:`outbox.dashboard.security`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from outbox import admin
from outbox.cancel import cancel_events
from outbox.dashboard.filters import EventQuery, FilterError
from outbox.dashboard.security import check_csrf
from outbox.dashboard.templating import render
from outbox.settings import SINK_NAME_PATTERN, Settings
from outbox.sink_switches import Switches

ACTIONS = ("retry", "replay", "cancel")
SWITCHES = ("pause", "resume", "disable", "enable")
# What each action selects by, as ``outbox retry``, ``outbox replay`` and ``outbox cancel``.
USED_FILTERS = {
    "retry": {"id", "topic", "sink", "status"},
    "replay": {"since", "until", "topic", "sink", "status"},
    "cancel": {"id"},
}
IMPLIED_STATUS = {"retry": "failed", "replay": "done", "cancel": "pending"}


async def confirm(request: Request) -> Response:
    """Count what the action would touch and ask."""
    action = _allowed(request)
    query = EventQuery.from_items(request.query_params.multi_items())
    async with request.app.state.database.connection() as conn:
        proposal = await _propose(conn, request, action, query)
    context = {"action": action, "query": query, "proposal": proposal}
    return render(request, "confirm.html", context)


async def carry_out(request: Request) -> Response:
    """Plan again, bounded by what was confirmed, and apply."""
    action = _allowed(request)
    form = await request.form()
    check_csrf(request.scope, form)
    query = EventQuery.from_items(form.multi_items())
    settings: Settings = request.app.state.settings
    async with request.app.state.database.connection() as conn:
        if action == "cancel":
            result = await cancel_events(
                conn, settings.db_schema, query.ids(), reason=_text(form, "reason")
            )
            context: dict[str, Any] = {"cancelled": result.cancelled, "refused": result.refused}
        else:
            proposal = await _propose(conn, request, action, query)
            assert proposal.plan is not None
            plan = dataclasses.replace(
                proposal.plan, upto=min(proposal.plan.upto, _confirmed_upto(form))
            )
            touched = await admin.apply(conn, settings.db_schema, plan)
            context = {"touched": touched}
    return render(request, "done.html", {"action": action, "query": query, **context})


async def switch_sink(request: Request) -> Response:
    """Pause, resume, disable or enable one sink, then show the sinks again."""
    if not request.app.state.allow_actions:
        raise HTTPException(403, "actions are off: start the dashboard with --allow-actions")
    name, switch = request.path_params["name"], request.path_params["switch"]
    if switch not in SWITCHES:
        raise HTTPException(404, f"no switch {switch!r}: one of {', '.join(SWITCHES)}")
    if not re.fullmatch(SINK_NAME_PATTERN, name):
        raise HTTPException(404, f"no sink {name!r}")
    form = await request.form()
    check_csrf(request.scope, form)
    settings: Settings = request.app.state.settings
    switches = Switches(settings.db_schema, settings.relay.channel)
    reason = _text(form, "reason")
    async with request.app.state.database.connection() as conn:
        if switch == "pause":
            await switches.pause(conn, name, reason or "paused from the dashboard")
        elif switch == "resume":
            await switches.resume(conn, name)
        elif switch == "disable":
            await switches.disable(conn, name, reason or "disabled from the dashboard")
        else:
            await switches.enable(conn, name)
    return RedirectResponse(request.url_for("sinks"), status_code=303)


def _allowed(request: Request) -> str:
    if not request.app.state.allow_actions:
        raise HTTPException(403, "actions are off: start the dashboard with --allow-actions")
    action: str = request.path_params["action"]
    if action not in ACTIONS:
        raise HTTPException(404, f"no action {action!r}: one of {', '.join(ACTIONS)}")
    return action


@dataclasses.dataclass(frozen=True)
class Proposal:
    """What an action would do, as the confirmation page shows it."""

    count: int
    """Events it will touch."""
    plan: admin.Plan | None = None
    """A repair's plan (retry, replay); None for cancel."""
    events: list[admin.EventSummary] = dataclasses.field(default_factory=list)
    """The events named by id (cancel): only the pending ones can be cancelled."""
    warning: str | None = None


async def _propose(
    conn: admin.Connection, request: Request, action: str, query: EventQuery
) -> Proposal:
    _check_filters(action, query)
    settings: Settings = request.app.state.settings
    schema = settings.db_schema
    try:
        if action == "cancel":
            ids = query.ids()
            if not ids:
                raise FilterError("id", "cancel takes event ids: id=12&id=13")
            found = await admin.list_events(
                conn, schema, admin.EventFilter(ids=ids), limit=len(ids)
            )
            pending = sum(event.status == "pending" for event in found)
            return Proposal(pending, events=found)
        if action == "retry":
            plan = await admin.plan_retry(
                conn, schema, ids=query.ids(), topic=query.topic or None, sink=query.sink or None
            )
        else:
            selection = query.selection()
            if selection.since is None:
                raise FilterError("since", "replay needs a start: since=7d or an ISO time")
            plan = await admin.plan_replay(
                conn,
                schema,
                since=selection.since,
                until=selection.until,
                topic=selection.topic,
                sink=selection.sink,
            )
    except FilterError as error:
        raise HTTPException(400, str(error)) from None
    return Proposal(plan.matched, plan=plan, warning=await _warning(conn, schema, action, query))


async def _warning(
    conn: admin.Connection, schema: str, action: str, query: EventQuery
) -> str | None:
    if action != "retry" or not query.sink:
        return None
    disabled = {sink.sink for sink in await admin.disabled_sinks(conn, schema)}
    if query.sink not in disabled:
        return None
    return (
        f"sink {query.sink} is disabled, so relays fail its deliveries at once: "
        "enable it on the sinks page first"
    )


def _check_filters(action: str, query: EventQuery) -> None:
    """Refuse filters the action cannot honour: the count would not mean what the page says."""
    given = {f.name for f in dataclasses.fields(query) if getattr(query, f.name)} - {"before"}
    ignored = sorted(given - USED_FILTERS[action])
    if ignored:
        raise HTTPException(
            400,
            f"{action} selects by {', '.join(sorted(USED_FILTERS[action] - {'status'}))} only, "
            f"not by {', '.join(ignored)}: remove those filters first",
        )
    wrong = [status for status in query.status if status != IMPLIED_STATUS[action]]
    if wrong:
        raise HTTPException(
            400, f"{action} applies to {IMPLIED_STATUS[action]} events only, not {wrong[0]}"
        )


def _confirmed_upto(form: FormData) -> int:
    value = form.get("upto")
    if not isinstance(value, str) or not value.isdigit():
        raise HTTPException(400, "the confirmation is missing its upto bound: confirm again")
    return int(value)


def _text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    return value.strip()[:500] or None if isinstance(value, str) else None


def offered(query: EventQuery) -> list[str]:
    """The repairs the events list can offer for its filters: retry when it shows failed
    events by filters retry takes, replay when it shows done events from a start time."""
    given = {f.name for f in dataclasses.fields(query) if getattr(query, f.name)} - {"before"}
    return [
        action
        for action in ("retry", "replay")
        if query.status == (IMPLIED_STATUS[action],)
        and given <= USED_FILTERS[action]
        and (action != "replay" or query.since)
    ]
