"""What makes a valid subject to publish to, and a valid stream name.

The server accepts a publish to ``orders.*`` or ``orders.>`` and stores it, yet no consumer
can ask for that subject alone, and a space or an empty token is a protocol error; so a
subject rendered from a template is checked before it is sent.
"""

from __future__ import annotations

from outbox.exceptions import PermanentError

_FORBIDDEN_IN_STREAM_NAMES = frozenset(" \t\r\n.*>/\\")


def subject_error(subject: str) -> str | None:
    """Why ``subject`` cannot be published to, or None if it can."""
    if not subject:
        return "it is empty"
    if any(character.isspace() for character in subject):
        return "it contains white space"
    tokens = subject.split(".")
    if any(not token for token in tokens):
        return "it has an empty token (a leading, trailing or double '.')"
    if any("*" in token or ">" in token for token in tokens):
        return "it contains a wildcard ('*' or '>')"
    return None


def check_subject(subject: str, event_id: int) -> None:
    """PermanentError, naming the event and the subject, if ``subject`` is not valid."""
    problem = subject_error(subject)
    if problem:
        raise PermanentError(f"event {event_id}: {subject!r} is not a NATS subject: {problem}")


def check_stream_name(name: str) -> None:
    """ValueError if ``name`` cannot be a JetStream stream's name."""
    if not name or _FORBIDDEN_IN_STREAM_NAMES & set(name):
        raise ValueError(f"{name!r} is not a stream name (no spaces, '.', '*', '>', '/' or '\\')")
