"""The pages' templates (``outbox/dashboard/templates``) and the filters they format with."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates


def render(
    request: Request, template: str, context: dict[str, Any], *, status_code: int = 200
) -> Response:
    state = request.app.state
    templates: Jinja2Templates = state.templates
    common = {"allow_actions": state.allow_actions, "csrf": request.scope["state"].get("csrf")}
    return templates.TemplateResponse(
        request, template, {**common, **context}, status_code=status_code
    )


def templates() -> Jinja2Templates:
    environment = Environment(
        loader=PackageLoader("outbox.dashboard", "templates"),
        autoescape=select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(
        age=format_age, when=format_when, number=format_number, pretty=format_json
    )
    return Jinja2Templates(env=environment)


def format_age(seconds: float | None) -> str:
    """``350ms``, ``42s``, ``3m 10s``, ``5h 2m``, ``2d 4h``; ``—`` for none."""
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    whole = int(seconds)
    for unit, size, smaller, smaller_size in (
        ("d", 86400, "h", 3600),
        ("h", 3600, "m", 60),
        ("m", 60, "s", 1),
    ):
        if whole >= size:
            rest = (whole % size) // smaller_size
            return f"{whole // size}{unit} {rest}{smaller}" if rest else f"{whole // size}{unit}"
    return f"{seconds:.1f}s" if seconds < 10 else f"{whole}s"


def format_when(moment: dt.datetime | None) -> str:
    if moment is None:
        return "—"
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_number(value: int | float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"


def format_json(value: Any) -> Markup:
    return Markup.escape(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False))
