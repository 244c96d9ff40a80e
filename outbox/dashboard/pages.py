"""The pages: overview (``/``), events (``/events``), one event (``/events/ID``), sinks
(``/sinks``). Each reads through the admin functions the CLI uses and renders on the server;
the only script is htmx, which refreshes the overview and the sinks in place.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from markupsafe import Markup
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from outbox import admin
from outbox.dashboard.actions import offered
from outbox.dashboard.charts import bar_chart, line_chart
from outbox.dashboard.filters import EventQuery, FilterError
from outbox.dashboard.overview import WINDOW_MINUTES, Overview, overview
from outbox.dashboard.templating import render
from outbox.settings import Settings
from outbox.sink_status import statuses

PAGE_SIZE = 50
REFRESH_SECONDS = 5


async def overview_page(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    async with request.app.state.database.connection() as conn:
        figures = await overview(conn, settings.db_schema, configured_sinks(settings))
    context = {"o": figures, "refresh": REFRESH_SECONDS, **_charts(figures)}
    return render(request, "overview.html", context)


def _charts(figures: Overview) -> dict[str, Markup]:
    start, step = figures.window_start, dt.timedelta(minutes=1)
    end = start + WINDOW_MINUTES * step
    settled = {minute.start: float(minute.settled) for minute in figures.minutes}
    lag = {minute.start: minute.mean_lag for minute in figures.minutes}
    throughput = bar_chart(
        settled,
        start=start,
        end=end,
        step=step,
        label="Events settled per minute",
        unit="events/min",
    )
    latency = line_chart(
        lag, start=start, end=end, step=step, label="Mean publish-to-settled time", unit="mean lag"
    )
    return {"throughput_chart": Markup(throughput), "lag_chart": Markup(latency)}


async def events_page(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    query = EventQuery.from_items(request.query_params.multi_items())
    context: dict[str, Any] = {
        "query": query,
        "sinks": sorted(configured_sinks(settings)),
        "error": None,
        "events": [],
        "next_page": None,
        "offered": offered(query) if request.app.state.allow_actions else [],
    }
    try:
        selection, cursor = query.selection(), query.cursor()
    except FilterError as error:
        return render(request, "events.html", {**context, "error": error}, status_code=400)
    async with request.app.state.database.connection() as conn:
        found = await admin.list_events(
            conn, settings.db_schema, selection, limit=PAGE_SIZE + 1, before=cursor
        )
    if len(found) > PAGE_SIZE:
        found = found[:PAGE_SIZE]
        context["next_page"] = query.query_string(before=str(found[-1].id))
    return render(request, "events.html", {**context, "events": found})


async def event_page(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    event_id: int = request.path_params["event_id"]
    if not 1 <= event_id < 2**63:
        raise HTTPException(404, f"no event {event_id}")
    async with request.app.state.database.connection() as conn:
        event = await admin.get_event(conn, settings.db_schema, event_id)
    if event is None:
        raise HTTPException(404, f"no event {event_id}")
    return render(request, "event.html", {"event": event})


async def sinks_page(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    async with request.app.state.database.connection() as conn:
        found = await statuses(conn, settings.db_schema, configured_sinks(settings))
    return render(request, "sinks.html", {"sinks": found, "refresh": REFRESH_SECONDS})


def configured_sinks(settings: Settings) -> dict[str, str | None]:
    """Each configured sink's type, by name: never its options, which may hold secrets."""
    return {name: sink.type for name, sink in settings.sinks.items()}
