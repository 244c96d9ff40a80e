"""The session hook: entities record events, the flush that writes them writes the events.

The hook listens on SQLAlchemy's ``Session`` class itself, so every session writes the events
staged on it: sessions of any ``sessionmaker``, ``scoped_session`` or ``Session`` subclass, and
the sync session inside every ``AsyncSession``, whether or not :func:`install` was given their
factory. It starts listening when :func:`install` is called, when a class using
:class:`EventSource` is defined, or at the first :func:`outbox.publish` on a session, whichever
comes first. A session with nothing staged writes nothing: the listeners find nothing to do.

Events recorded with :meth:`EventSource.record_event` wait on the entity until the session
flushes (``before_flush``; recording marks the entity dirty, so a session with nothing else to
write still flushes), with ``before_commit`` as the safety net; events given to
:func:`outbox.publish` with a session wait on the session the same way. Events recorded during
a flush (in mapper events) are written by that flush. Ids follow the order of the calls
across entities and the session. A savepoint or transaction that rolls back discards the
events recorded inside it, and so do ``Session.close()`` and ``reset()`` without a commit,
so nothing recorded in an abandoned unit of work is ever written.

On psycopg (3) connections the events of a flush are written by its first
``INSERT ... RETURNING`` executed once (not ``executemany``), usually the business row's: the
statement gets the events' insert as a data-modifying CTE and their ids as one more returned
column, so writing them costs no statement and no round trip of its own
(:mod:`outbox._flush_insert`, docs/decisions/0006-the-cost-of-publishing.md). A flush without
such an INSERT, events with a dedup key, and other drivers write the events as one statement
of their own.
"""

from __future__ import annotations

import datetime as dt
import itertools
import operator
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import Session, SessionTransaction, object_session, scoped_session, sessionmaker
from sqlalchemy.orm.attributes import flag_dirty

from outbox._flush_insert import finish_flush, forget_flush, write_with_first_insert
from outbox._validation import OutboxEvent, prepare_event
from outbox._writer import write_events_sqlalchemy

__all__ = ["EventSource", "install"]

_SOURCES = "outbox.sources"  # session.info: entities holding staged events
_PUBLISHED = "outbox.published"  # session.info: events given to publish() on the session
# Set once the hook listens on Session (every session); the lock makes that happen once.
_listening = threading.Event()
_listening_lock = threading.Lock()
# Orders staged events across entities, so that ids follow the order of record_event calls.
_record_order = itertools.count()

# (record order, transaction or savepoint recorded in, event)
_Staged = tuple[int, SessionTransaction | None, OutboxEvent]
_RECORD_ORDER = operator.itemgetter(0)  # of a _Staged


class EventSource:
    """Mixin for mapped classes whose instances record domain events.

    Recorded events are written by the session the entity belongs to, whichever factory made
    it: defining a class with this mixin starts the session hook if :func:`install` has not.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Classes are defined at import time, before sessions flush in other threads:
        # SQLAlchemy's listener lists are not safe to extend while another thread runs them.
        super().__init_subclass__(**kwargs)
        _listen()

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
    # record_event() and before_attach register every entity that holds events.
    registered: dict[int, EventSource] = session.info.get(_SOURCES, {})
    return list(registered.values())


def stage_published(session: Session, outbox_event: OutboxEvent) -> None:
    """Stage an event given to :func:`outbox.publish` for the session's next flush or commit,
    starting the session hook if nothing started it yet. The session's transaction must have
    begun, so that its rollback takes the event away."""
    _listen()
    staged = (next(_record_order), _current_transaction(session), outbox_event)
    session.info.setdefault(_PUBLISHED, []).append(staged)


def _take_staged(session: Session) -> list[OutboxEvent]:
    """The events staged for this session, in record order, no longer staged."""
    staged_here: list[_Staged] = session.info.pop(_PUBLISHED, [])
    for source in _sources(session):
        # An entity that left this session (closed or expunged) keeps its events.
        if object_session(source) is session:
            staged = _staged_events(source)
            staged_here.extend(staged)
            staged.clear()
    session.info.pop(_SOURCES, None)
    staged_here.sort(key=_RECORD_ORDER)
    return [item[2] for item in staged_here]


def _write_staged(session: Session) -> None:
    events = _take_staged(session)
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
        staged[:] = [item for item in staged if not _is_within(item[1], ended)]
    published: list[_Staged] = session.info.get(_PUBLISHED, [])
    published[:] = [item for item in published if not _is_within(item[1], ended)]
    if ended.parent is None:
        session.info.pop(_SOURCES, None)
        session.info.pop(_PUBLISHED, None)


def _sources_after_rollback(session: Session) -> Iterable[EventSource]:
    # A rollback has already expunged new objects; the registry still knows them.
    registered: dict[int, EventSource] = session.info.get(_SOURCES, {})
    return list(registered.values())


def _before_flush(session: Session, flush_context: object, instances: object) -> None:
    finish_flush(session)  # events left by a flush that found nothing to do
    events = _take_staged(session)
    if events:
        write_with_first_insert(session, events)


def _after_flush_postexec(session: Session, flush_context: object) -> None:
    finish_flush(session)
    # Events recorded during the flush (in mapper events such as after_insert) are written
    # by that flush; the commit that ran it would otherwise end without them.
    _write_staged(session)


def _before_commit(session: Session) -> None:
    if session.new or session.dirty or session.deleted:
        return  # the commit flushes next, and that flush writes the events
    finish_flush(session)
    _write_staged(session)


def _after_soft_rollback(session: Session, previous_transaction: SessionTransaction) -> None:
    forget_flush(session)
    _discard_rolled_back(session, previous_transaction)


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    # A flush that failed ends its own transaction here: its events went with the rollback.
    # A successful flush has finished with its events before its transaction ends.
    forget_flush(session)
    # Session.close() and reset() end the transaction without a rollback event; a commit has
    # written everything by now. Either way, nothing staged may leak into the next one.
    if transaction.parent is None:
        _discard_rolled_back(session, transaction)


def _before_attach(session: Session, instance: object) -> None:
    # Events recorded before the entity joined a session belong to the session's current
    # transaction or savepoint from now on, so that its rollback discards them too.
    if not isinstance(instance, EventSource):
        return
    staged: list[_Staged] | None = instance.__dict__.get("_outbox_staged")
    if staged:
        joined = _current_transaction(session)
        staged[:] = [(order, joined, outbox_event) for order, _, outbox_event in staged]
        _register(session, instance)


def install(target: Any) -> Any:
    """Start the session hook, checking that ``target`` is a ``Session`` class,
    ``sessionmaker``, ``scoped_session`` or ``async_sessionmaker``; return ``target``.

    The hook listens on ``Session`` itself, so it serves every session, of this factory and
    of any other: an event recorded or published on a session is never dropped because its
    factory was not installed. :class:`EventSource` classes and :func:`outbox.publish` start
    the hook themselves; calling ``install`` at start-up says so where the sessions are made,
    checks the factory early, and starts the hook before any thread runs a session.
    Installing twice is harmless.
    """
    _check_target(target)
    _listen()
    return target


def _listen() -> None:
    """Listen on ``Session``, once per process; every session class inherits the listeners."""
    if _listening.is_set():
        return
    with _listening_lock:
        if _listening.is_set():
            return
        event.listen(Session, "before_flush", _before_flush)
        event.listen(Session, "after_flush_postexec", _after_flush_postexec)
        event.listen(Session, "before_commit", _before_commit)
        event.listen(Session, "after_soft_rollback", _after_soft_rollback)
        event.listen(Session, "after_transaction_end", _after_transaction_end)
        event.listen(Session, "before_attach", _before_attach)
        _listening.set()


def _check_target(target: Any) -> None:
    if isinstance(target, scoped_session | sessionmaker | async_sessionmaker):
        return
    if isinstance(target, type) and issubclass(target, Session):
        return
    raise TypeError(
        "install() takes a Session subclass, sessionmaker, scoped_session or "
        f"async_sessionmaker; got {target!r}"
    )
