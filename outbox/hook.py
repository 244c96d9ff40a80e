"""The session hook: entities record events, the flush that writes them writes the events.

Events recorded with :meth:`EventSource.record_event` wait on the entity until the session
flushes (``before_flush``; recording marks the entity dirty, so a session with nothing else to
write still flushes), with ``before_commit`` as the safety net. Events recorded during a flush
(in mapper events) are written by that flush. Ids follow the order of ``record_event`` calls
across entities. A savepoint or transaction that rolls back discards the events recorded
inside it, and so do ``Session.close()`` and ``reset()`` without a commit, so nothing recorded
in an abandoned unit of work is ever written.
"""

from __future__ import annotations

import datetime as dt
import itertools
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import Session, SessionTransaction, object_session, scoped_session, sessionmaker
from sqlalchemy.orm.attributes import flag_dirty

from outbox.publish import OutboxEvent, prepare_event, write_events_sqlalchemy

__all__ = ["EventSource", "install"]

_SOURCES = "outbox.sources"
_installed: weakref.WeakSet[Any] = weakref.WeakSet()
# Orders staged events across entities, so that ids follow the order of record_event calls.
_record_order = itertools.count()

# (record order, transaction or savepoint recorded in, event)
_Staged = tuple[int, SessionTransaction | None, OutboxEvent]


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
        staged = (next(_record_order), _current_transaction(session), outbox_event)
        _staged_events(self).append(staged)
        if session is not None:
            _register(session, self)
            # A session with nothing dirty skips its flush (and so the hook): flag the entity
            # so that session.flush() and autoflush write the event. No UPDATE results.
            flag_dirty(self)
        return outbox_event


def _staged_events(source: EventSource) -> list[_Staged]:
    staged: list[_Staged] | None = source.__dict__.get("_outbox_staged")
    if staged is None:
        staged = source.__dict__["_outbox_staged"] = []
    return staged


def _current_transaction(session: Session | None) -> SessionTransaction | None:
    if session is None:
        return None
    return session.get_nested_transaction() or session.get_transaction()


def _register(session: Session, source: EventSource) -> None:
    # Keyed by id(): entities may define __eq__ and __hash__; the dict holds them alive.
    sources: dict[int, EventSource] = session.info.setdefault(_SOURCES, {})
    sources.setdefault(id(source), source)


def _sources(session: Session) -> list[EventSource]:
    found: dict[int, EventSource] = dict(session.info.get(_SOURCES, {}))
    for obj in (*session.new, *session.dirty):
        if isinstance(obj, EventSource):
            found.setdefault(id(obj), obj)
    return list(found.values())


def _write_staged(session: Session) -> None:
    staged_here: list[_Staged] = []
    for source in _sources(session):
        # An entity that left this session (closed or expunged) keeps its events.
        if object_session(source) is session:
            staged = _staged_events(source)
            staged_here.extend(staged)
            staged.clear()
    session.info.pop(_SOURCES, None)
    if staged_here:
        staged_here.sort(key=lambda item: item[0])
        write_events_sqlalchemy(session.connection(), [item[2] for item in staged_here])


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
        staged[:] = [item for item in staged if not _is_within(item[1], ended)]
    if ended.parent is None:
        session.info.pop(_SOURCES, None)


def _sources_after_rollback(session: Session) -> Iterable[EventSource]:
    # A rollback has already expunged new objects; the registry still knows them.
    registered: dict[int, EventSource] = session.info.get(_SOURCES, {})
    return list(registered.values())


def _before_flush(session: Session, flush_context: object, instances: object) -> None:
    _write_staged(session)


def _after_flush_postexec(session: Session, flush_context: object) -> None:
    # Events recorded during the flush (in mapper events such as after_insert) are written
    # by that flush; the commit that ran it would otherwise end without them.
    _write_staged(session)


def _before_commit(session: Session) -> None:
    _write_staged(session)


def _after_soft_rollback(session: Session, previous_transaction: SessionTransaction) -> None:
    _discard_rolled_back(session, previous_transaction)


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    # Session.close() and reset() end the transaction without a rollback event; a commit has
    # written everything by now. Either way, nothing staged may leak into the next one.
    if transaction.parent is None:
        _discard_rolled_back(session, transaction)


def _before_attach(session: Session, instance: object) -> None:
    # Events recorded before the entity joined a session belong to the session's current
    # transaction or savepoint from now on, so that its rollback discards them too.
    if isinstance(instance, EventSource) and instance.__dict__.get("_outbox_staged"):
        joined = _current_transaction(session)
        staged = _staged_events(instance)
        staged[:] = [(order, joined, outbox_event) for order, _, outbox_event in staged]
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
    event.listen(listen_on, "after_flush_postexec", _after_flush_postexec)
    event.listen(listen_on, "before_commit", _before_commit)
    event.listen(listen_on, "after_soft_rollback", _after_soft_rollback)
    event.listen(listen_on, "after_transaction_end", _after_transaction_end)
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
