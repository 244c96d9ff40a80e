"""The events page's filters, as they travel in its address: ``/events?status=failed&topic=
order.*&key=...&sink=...``. Parsed here into the :class:`~outbox.admin.EventFilter` the CLI's
``outbox events list`` builds, with a message per field when a value is wrong, and turned back
into a query string for the next page and the actions' links.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode

from outbox import admin
from outbox._event_filter import LISTED_STATUSES


class FilterError(ValueError):
    """A filter value the page cannot use: ``field`` names the query-string parameter."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclasses.dataclass(frozen=True)
class EventQuery:
    """The filters exactly as typed (empty string: not given), and the keyset cursor."""

    status: tuple[str, ...] = ()
    topic: str = ""
    key: str = ""
    sink: str = ""
    sink_status: str = ""
    since: str = ""
    until: str = ""
    id: tuple[str, ...] = ()
    before: str = ""

    @classmethod
    def from_items(cls, items: Iterable[tuple[str, Any]]) -> EventQuery:
        """From a query string's or a form's ``(name, value)`` pairs, names repeatable."""
        params: dict[str, list[str]] = {}
        for name, value in items:
            if isinstance(value, str):
                params.setdefault(name, []).append(value)

        def one(name: str) -> str:
            values = params.get(name) or [""]
            return values[-1].strip()

        def many(name: str) -> tuple[str, ...]:
            return tuple(v.strip() for v in params.get(name) or () if v.strip())

        return cls(
            status=many("status"),
            topic=one("topic"),
            key=one("key"),
            sink=one("sink"),
            sink_status=one("sink_status"),
            since=one("since"),
            until=one("until"),
            id=tuple(part for value in many("id") for part in value.replace(",", " ").split()),
            before=one("before"),
        )

    def ids(self) -> tuple[int, ...]:
        return tuple(_positive(value, "id") for value in self.id)

    def cursor(self) -> int | None:
        return _positive(self.before, "before") if self.before else None

    def selection(self) -> admin.EventFilter:
        """The filter the admin functions take; :class:`FilterError` names what is wrong."""
        for status in self.status:
            if status not in LISTED_STATUSES:
                raise FilterError("status", f"unknown status {status!r}")
        if self.sink_status and not self.sink:
            raise FilterError("sink_status", "a sink status needs a sink")
        try:
            return admin.EventFilter(
                ids=self.ids() or None,
                statuses=self.status or None,
                topic=self.topic or None,
                key=self.key or None,
                sink=self.sink or None,
                sink_status=self.sink_status or None,
                since=_time(self.since, "since"),
                until=_time(self.until, "until"),
            )
        except FilterError:
            raise
        except ValueError as error:
            raise FilterError(_field_of(str(error)), str(error)) from None

    def query_string(self, **changes: str | tuple[str, ...]) -> str:
        """This query with ``changes``, as ``?a=b&...`` (empty values left out)."""
        values = dataclasses.replace(self, **changes)  # type: ignore[arg-type]
        pairs: list[tuple[str, str]] = []
        for field in dataclasses.fields(values):
            value = getattr(values, field.name)
            pairs.extend((field.name, v) for v in (value if isinstance(value, tuple) else [value]))
        encoded = urlencode([(name, value) for name, value in pairs if value])
        return f"?{encoded}" if encoded else ""

    @property
    def filtered(self) -> bool:
        return any(getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "before")


def _positive(value: str, field: str) -> int:
    if not value.isdigit() or int(value) < 1 or int(value) > 2**63 - 1:
        raise FilterError(field, f"{value!r} is not an event id (a whole number from 1)")
    return int(value)


def _time(value: str, field: str) -> admin.TimeBound | None:
    if not value:
        return None
    try:
        return admin.parse_time(value)
    except ValueError as error:
        raise FilterError(field, str(error)) from None


def _field_of(message: str) -> str:
    """Which parameter an :class:`~outbox.admin.EventFilter` message is about."""
    for words, field in (("sink status", "sink_status"), ("topic", "topic"), ("status", "status")):
        if words in message:
            return field
    return "filters"
