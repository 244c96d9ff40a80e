"""The session hook: entities record events, the flush that writes them writes the events.

Events recorded with :meth:`EventSource.record_event` wait on the entity until the session
flushes (``before_flush``) or, when nothing else is dirty, commits (``before_commit``). A
savepoint or transaction that rolls back discards the events recorded inside it, so
nothing recorded in a rolled-back unit of work is ever written.
"""

from __future__ import annotations

import datetime as dt
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import Session, SessionTransaction, object_session, scoped_session, sessionmaker

from outbox.publish import OutboxEvent, prepare_event, write_events_sqlalchemy

__all__ = ["EventSource", "install"]

_SOURCES = "outbox.sources"
_installed: weakref.WeakSet[Any] = weakref.WeakSet()


class EventSource:
    """Mixin for mapped classes whose instances record domain events.

    ``outbox.install()`` must have been called on the session class or factory.
    """

    def record_event(
        self,
        topic: str,
        payload: Any,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        process_at: dt.datetime | None = None,
        delay: dt.timedelta | float | None = None,
        dedup_key: str | None = None,
    ) -> OutboxEvent:
        """Record an event, validated now, written by the flush that writes this entity.

        The event is written if and only if the transaction (or savepoint) it was recorded in
        commits. Returns the event; its ``id`` is set once it is written.
        """
        outbox_event = prepare_event(
            topic,
            payload,
            key=key,
            headers=headers,
            process_at=process_at,
            delay=delay,
            dedup_key=dedup_key,
        )
        session = object_session(self)
        _staged_events(self).append((_current_transaction(session), outbox_event))
        if session is not None:
            _register(session, self)
        return outbox_event


def _staged_events(source: EventSource) -> list[tuple[SessionTransaction | None, OutboxEvent]]:
    staged: list[tuple[SessionTransaction | None, OutboxEvent]] | None
    staged = source.__dict__.get("_outbox_staged")
    if staged is None:
        staged = source.__dict__["_outbox_staged"] = []
    return staged


def _current_transaction(session: Session | None) -> SessionTransaction | None:
    if session is None:
        return None
    return session.get_nested_transaction() or session.get_transaction()


def _register(session: Session, source: EventSource) -> None:
    sources: list[EventSource] = session.info.setdefault(_SOURCES, [])
    if not any(known is source for known in sources):
        sources.append(source)


def _sources(session: Session) -> list[EventSource]:
    registered: list[EventSource] = session.info.get(_SOURCES, [])
    found = list(registered)
    for obj in (*session.new, *session.dirty):
        if isinstance(obj, EventSource) and not any(known is obj for known in found):
            found.append(obj)
    return found


def _write_staged(session: Session) -> None:
    events: list[OutboxEvent] = []
    for source in _sources(session):
        staged = _staged_events(source)
        events.extend(outbox_event for _, outbox_event in staged)
        staged.clear()
    session.info.pop(_SOURCES, None)
    if events:
        write_events_sqlalchemy(session.connection(), events)


def _is_within(transaction: SessionTransaction | None, ended: SessionTransaction) -> bool:
    """True if ``transaction`` is ``ended`` or was begun inside it."""
    if transaction is None:
        return ended.parent is None
    current: SessionTransaction | None = transaction
    while current is not None:
        if current is ended:
            return True
        current = current.parent
    return False


def _discard_rolled_back(session: Session, ended: SessionTransaction) -> None:
    for source in _sources_after_rollback(session):
        staged = _staged_events(source)
        staged[:] = [item for item in staged if not _is_within(item[0], ended)]
    if ended.parent is None:
        session.info.pop(_SOURCES, None)


def _sources_after_rollback(session: Session) -> Iterable[EventSource]:
    # A rollback has already expunged new objects; the registry still knows them.
    registered: list[EventSource] = session.info.get(_SOURCES, [])
    return list(registered)


def _before_flush(session: Session, flush_context: object, instances: object) -> None:
    _write_staged(session)


def _before_commit(session: Session) -> None:
    _write_staged(session)


def _after_soft_rollback(session: Session, previous_transaction: SessionTransaction) -> None:
    _discard_rolled_back(session, previous_transaction)


def _before_attach(session: Session, instance: object) -> None:
    # Events recorded before the entity joined a session belong to the session from now on,
    # so that a rollback discards them too.
    if isinstance(instance, EventSource) and instance.__dict__.get("_outbox_staged"):
        _register(session, instance)


def install(target: Any) -> Any:
    """Install the session hook on a ``Session`` class, ``sessionmaker``, ``scoped_session``
    or ``async_sessionmaker``; return ``target``. Installing twice is harmless.

    For an ``async_sessionmaker`` the hook goes on its ``sync_session_class`` (SQLAlchemy
    cannot listen on async sessions); a dedicated subclass of ``Session`` is made for it if it
    uses the plain ``Session``, so other sessions are not affected.
    """
    listen_on = _listen_target(target)
    if listen_on in _installed:
        return target
    event.listen(listen_on, "before_flush", _before_flush)
    event.listen(listen_on, "before_commit", _before_commit)
    event.listen(listen_on, "after_soft_rollback", _after_soft_rollback)
    event.listen(listen_on, "before_attach", _before_attach)
    _installed.add(listen_on)
    return target


def _listen_target(target: Any) -> Any:
    if isinstance(target, scoped_session):
        return target.session_factory
    if isinstance(target, sessionmaker):
        return target
    if isinstance(target, async_sessionmaker):
        sync_class = target.kw.get("sync_session_class", Session)
        if sync_class is Session:
            sync_class = type("OutboxSession", (Session,), {})
            target.configure(sync_session_class=sync_class)
        return sync_class
    if isinstance(target, type) and issubclass(target, Session):
        return target
    raise TypeError(
        "install() takes a Session subclass, sessionmaker, scoped_session or "
        f"async_sessionmaker; got {target!r}"
    )
