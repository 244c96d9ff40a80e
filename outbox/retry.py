"""Retry policy and settle decisions: pure functions, no I/O, no sleeping.

The relay claims events, delivers them, and asks :func:`settle_event` what to write back.
Times are ``datetime`` values derived from the database clock (the claim's ``now()``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from outbox.exceptions import PermanentError, RetryableError, SinkGone
from outbox.records import Settlement

DELIVERED = "delivered"
RETRYING = "retrying"
FAILED = "failed"
WAITING = "waiting"
"""Not attempted by the last claim: the sink is held (paused, or disabled by a 410), or an
earlier event of the key has not reached it yet. No attempt is counted for it; its
``until`` says when a claim looks at it again."""
HELD_UNTIL = dt.datetime(9999, 12, 31, tzinfo=dt.UTC)
"""A waiting sink's ``until`` when nothing but an operator ends the wait (the sink is held,
or the event it waits behind failed there): never due by itself; resuming or enabling the
sink, or retrying that event, makes it due (decision 11)."""
PASSING = "passing"
"""A sink the event does not go to, noted because an earlier event of its key has not
reached that sink yet: a later event of the key learns it from here, the nearest unfinished
event before it, with no scan of the others (decision 11). Dropped once that earlier event
has reached the sink; never counted as a delivery."""
UNROUTED = "unrouted"
NO_SINK_KEY = "*"
MAX_ERROR_LENGTH = 2000
MAX_BEHIND_LOOK = dt.timedelta(hours=1)
"""The longest a sink waiting behind an earlier event of its key goes without looking again
by itself (see ``_behind_until``)."""
MAX_RETRY_AFTER = 30 * 24 * 3600.0
"""A sink's ``retry_after`` beyond this (seconds) is cut to it: far enough for any receiver,
near enough that the date stays representable (an infinite one would crash the settle)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with jitter and a cap; ``max_attempts`` per sink. Plain values:
    the settings hold the defaults and check the ranges (``[relay]`` in the configuration)."""

    max_attempts: int
    base_seconds: float
    cap_seconds: float
    jitter: float
    errors_kept: int


def backoff_seconds(attempt: int, policy: RetryPolicy, rng: random.Random | None = None) -> float:
    """Delay before retry number ``attempt`` (1 after the first failure): base * 2^(n-1),
    spread by +/- ``jitter``, never above the cap."""
    exponent = min(max(attempt, 1) - 1, 62)
    delay = min(policy.cap_seconds, policy.base_seconds * 2.0**exponent)
    spread = (rng or random).uniform(1 - policy.jitter, 1 + policy.jitter)
    return min(policy.cap_seconds, delay * spread)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one delivery attempt to one sink came to."""

    ok: bool
    permanent: bool = False
    error: str | None = None
    retry_after: float | None = None
    gone: bool = False
    """The sink said it is gone for good (:class:`~outbox.SinkGone`): the attempt counts,
    and the event waits for the sink to be enabled again, like every other of its events."""


SUCCESS = Outcome(ok=True)


def classify(error: BaseException | None) -> Outcome:
    """Turn what a sink raised into an :class:`Outcome`."""
    if error is None:
        return SUCCESS
    text = _describe(error)
    if isinstance(error, SinkGone):
        return Outcome(ok=False, error=text, gone=True)
    if isinstance(error, PermanentError):
        return Outcome(ok=False, permanent=True, error=text)
    if isinstance(error, RetryableError):
        return Outcome(ok=False, error=text, retry_after=error.retry_after)
    return Outcome(ok=False, error=text)


def _describe(error: BaseException) -> str:
    """``Type: message``, and where an unexpected exception was raised (`` (at
    package/module.py:12 in function)``, its innermost frame), within MAX_ERROR_LENGTH:
    the message is cut, never the place. A sink's own RetryableError, PermanentError or
    SinkGone says what went wrong by itself."""
    message = str(error)
    text = f"{type(error).__name__}: {message}" if message else type(error).__name__
    deliberate = isinstance(error, RetryableError | PermanentError | SinkGone)
    where = "" if deliberate else _raised_at(error)
    # Postgres text and jsonb hold neither NUL nor lone surrogates: one such message in a
    # sink's exception must not make the settle statement fail.
    text = text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    where = where.encode("utf-8", "replace").decode("utf-8")[: MAX_ERROR_LENGTH // 4]
    return text[: MAX_ERROR_LENGTH - len(where)] + where


def _raised_at(error: BaseException) -> str:
    """`` (at dir/file.py:LINE in function)`` for the innermost frame of the traceback."""
    tb = error.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    path = tb.tb_frame.f_code.co_filename.replace("\\", "/")
    short = "/".join(path.split("/")[-2:])
    return f" (at {short}:{tb.tb_lineno} in {tb.tb_frame.f_code.co_name})"


def sinks_due(
    subscribed: Sequence[str], deliveries: Mapping[str, Mapping[str, Any]], now: dt.datetime
) -> list[str]:
    """The subscribed sinks this claim may deliver to: not yet acknowledged, not failed,
    and not asked to wait past ``now`` (a waiting sink is looked at again by every claim)."""
    due = []
    for name in subscribed:
        state = deliveries.get(name) or {}
        status = state.get("status")
        if status in (None, WAITING, PASSING) or (status == RETRYING and _not_before(state) <= now):
            due.append(name)
    return due


def _not_before(state: Mapping[str, Any]) -> dt.datetime:
    value = state.get("not_before")
    if value is None:
        return dt.datetime.min.replace(tzinfo=dt.UTC)
    return dt.datetime.fromisoformat(value)


def settle_event(
    *,
    subscribed: Sequence[str],
    deliveries: Mapping[str, Mapping[str, Any]],
    errors: Sequence[Mapping[str, Any]],
    outcomes: Mapping[str, Outcome],
    now: dt.datetime,
    policy: RetryPolicy,
    rng: random.Random | None = None,
    waits: Mapping[str, dt.datetime] | None = None,
    policies: Mapping[str, RetryPolicy] | None = None,
    blocked: Iterable[str] = (),
) -> Settlement:
    """Decide an event's next state from this claim's outcomes, one per sink attempted, and
    ``waits``: sinks due but not attempted, each with when to look again (:data:`HELD_UNTIL`
    for a held sink: when it is resumed), which wait with no attempt counted; those in
    ``blocked`` wait behind an earlier event of the key.

    ``now`` is the database time at settle. Sinks keep their own attempts and wait times, so
    a retry goes only to sinks that have not acknowledged, each when it is due. A sink in
    ``policies`` retries by its own policy (its ``max_attempts`` and backoff), the others by
    ``policy``, which also says how many errors the event keeps.
    """
    if not subscribed:
        kept = [dict(error) for error in errors]
        return Settlement("done", None, {NO_SINK_KEY: {"status": UNROUTED}}, kept, None)
    waits = waits or {}
    passed = [n for n, state in deliveries.items() if state.get("status") == PASSING]
    new_deliveries = {n: dict(state) for n, state in deliveries.items() if n not in passed}
    new_errors = [dict(error) for error in errors]
    for name, until in waits.items():
        if name not in subscribed:
            new_deliveries[name] = {"status": PASSING, "until": until.isoformat()}
            continue
        state = new_deliveries.setdefault(name, {"attempts": 0})
        state.pop("not_before", None)
        if name in blocked:
            until = _behind_until(state, until, now)
        state.update(status=WAITING, until=until.isoformat())
    for name, outcome in outcomes.items():
        state = new_deliveries.setdefault(name, {"attempts": 0})
        state["attempts"] = int(state.get("attempts", 0)) + 1
        _apply_outcome(state, outcome, now, (policies or {}).get(name, policy), rng)
        if outcome.error is not None:
            new_errors.append(
                {
                    "at": now.isoformat(),
                    "sink": name,
                    "attempt": state["attempts"],
                    "error": outcome.error,
                }
            )
    new_errors = new_errors[-policy.errors_kept :]
    settlement = _summarise(subscribed, new_deliveries, new_errors, now)
    freed = tuple(
        name
        for name, outcome in outcomes.items()
        if outcome.ok and deliveries.get(name, {}).get("status") in (WAITING, RETRYING, PASSING)
    ) + tuple(name for name in passed if name not in waits)
    held_back = tuple(name for name in blocked if name in waits)
    if freed or held_back or not outcomes:
        settlement = dataclasses.replace(
            settlement, attempted=bool(outcomes), freed=freed, blocked=held_back
        )
    return settlement


def _behind_until(state: dict[str, Any], until: dt.datetime, now: dt.datetime) -> dt.datetime:
    """When a sink waiting behind an earlier event of its key looks again by itself: not
    before ``until`` (the claim's bound), and not before it has waited as long again as it
    has waited so far (up to :data:`MAX_BEHIND_LOOK`), so that a long outage's backlog is
    not read again every few seconds. The delivery of the event it waits behind wakes it at once
    anyway (decision 11). ``state`` keeps when the wait began (``since``)."""
    if until <= now:  # the relay saw the way clear in this batch: look now
        return until
    if state.get("status") != WAITING or "since" not in state:
        state["since"] = now.isoformat()
    waited = now - dt.datetime.fromisoformat(state["since"])
    return max(until, now + min(waited, MAX_BEHIND_LOOK))


def _apply_outcome(
    state: dict[str, Any],
    outcome: Outcome,
    now: dt.datetime,
    policy: RetryPolicy,
    rng: random.Random | None,
) -> None:
    state.pop("not_before", None)
    state.pop("until", None)
    state.pop("since", None)
    if outcome.ok:
        state.update(status=DELIVERED, delivered_at=now.isoformat(), last_error=None)
        return
    state["last_error"] = outcome.error
    if outcome.gone:
        state.update(status=WAITING, until=HELD_UNTIL.isoformat())
        return
    if outcome.permanent or state["attempts"] >= policy.max_attempts:
        state["status"] = FAILED
        return
    if outcome.retry_after is not None and not math.isnan(outcome.retry_after):
        delay = min(max(outcome.retry_after, 0.0), MAX_RETRY_AFTER)
    else:
        delay = backoff_seconds(state["attempts"], policy, rng)
    state.update(status=RETRYING, not_before=(now + dt.timedelta(seconds=delay)).isoformat())


def _summarise(
    subscribed: Iterable[str],
    deliveries: dict[str, dict[str, Any]],
    errors: list[dict[str, Any]],
    now: dt.datetime,
) -> Settlement:
    waiting = [deliveries.get(name, {}) for name in subscribed if _unfinished(deliveries.get(name))]
    last_error = errors[-1]["error"] if errors else None
    if waiting:
        process_at = min(_next_look(state, now) for state in waiting)
        return Settlement("pending", process_at, deliveries, errors, last_error)
    if not any(state.get("status") == FAILED for state in deliveries.values()):
        # Delivered everywhere: no error stands (the history in ``errors`` keeps them).
        return Settlement("done", None, deliveries, errors, None)
    return Settlement("failed", None, deliveries, errors, last_error)


def _next_look(state: Mapping[str, Any], now: dt.datetime) -> dt.datetime:
    """When a claim should look at this sink of the event again: a retry when it is due, a
    waiting sink at its ``until`` (never by itself for a held sink: when it is resumed)."""
    if state.get("status") == WAITING:
        return max(dt.datetime.fromisoformat(state["until"]), now) if "until" in state else now
    return _not_before(state) if "not_before" in state else now


def _unfinished(state: Mapping[str, Any] | None) -> bool:
    return state is None or state.get("status") not in (DELIVERED, FAILED)
