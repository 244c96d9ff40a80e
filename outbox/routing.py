"""Which sinks an event goes to: topic patterns matched against topics.

A pattern is dot-separated like a topic; ``*`` matches exactly one segment and ``#`` any
number of segments, none included (``order.#`` matches ``order``, ``order.paid`` and
``order.paid.late``; ``#`` matches everything).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable, Sequence

_SEGMENT = re.compile(r"^[A-Za-z0-9_-]+$")


def validate_pattern(pattern: str) -> str:
    """Return ``pattern`` if valid, else raise ``ValueError`` saying why."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError("a topic pattern must be a non-empty string")
    for segment in pattern.split("."):
        if segment not in ("*", "#") and not _SEGMENT.fullmatch(segment):
            raise ValueError(
                f"invalid topic pattern {pattern!r}: segments are letters, digits, '_', '-', "
                "or a whole-segment wildcard '*' (one segment) or '#' (any number)"
            )
    return pattern


def topic_matches(pattern: str, topic: str) -> bool:
    """True if ``topic`` matches ``pattern``."""
    return _match(tuple(pattern.split(".")), tuple(topic.split(".")))


@functools.lru_cache(maxsize=4096)
def _match(pattern: tuple[str, ...], topic: tuple[str, ...]) -> bool:
    if not pattern:
        return not topic
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, topic[skip:]) for skip in range(len(topic) + 1))
    if not topic:
        return False
    return (head == "*" or head == topic[0]) and _match(rest, topic[1:])


@dataclasses.dataclass(frozen=True)
class Subscription:
    """Events whose topic matches any of ``topics`` go to every sink in ``sinks``."""

    topics: tuple[str, ...]
    sinks: tuple[str, ...]


class Router:
    """Resolves a topic to its sinks once, then answers from a cache."""

    def __init__(self, subscriptions: Iterable[Subscription]) -> None:
        self._subscriptions = tuple(subscriptions)
        for subscription in self._subscriptions:
            for pattern in subscription.topics:
                validate_pattern(pattern)
        self._cache: dict[str, tuple[str, ...]] = {}

    def sinks_for(self, topic: str) -> tuple[str, ...]:
        """Names of the sinks subscribed to ``topic``, in subscription order, without repeats."""
        found = self._cache.get(topic)
        if found is None:
            found = self._cache[topic] = self._resolve(topic)
        return found

    def _resolve(self, topic: str) -> tuple[str, ...]:
        names: dict[str, None] = {}
        for subscription in self._subscriptions:
            if any(topic_matches(pattern, topic) for pattern in subscription.topics):
                names.update(dict.fromkeys(subscription.sinks))
        return tuple(names)

    @property
    def sink_names(self) -> Sequence[str]:
        names: dict[str, None] = {}
        for subscription in self._subscriptions:
            names.update(dict.fromkeys(subscription.sinks))
        return tuple(names)
