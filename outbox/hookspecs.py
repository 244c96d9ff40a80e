"""The hooks a plugin may implement. Project name ``outbox``; entry-point group ``outbox``.

A plugin is a module or object with functions marked ``@outbox.hookimpl`` and named like the
specs below. Hooks are synchronous and run once at start-up, never per event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from outbox.sinks import Sink

hookspec = pluggy.HookspecMarker("outbox")
hookimpl = pluggy.HookimplMarker("outbox")

RegisterSink = Callable[[str, "type[Sink]"], None]


@hookspec
def outbox_register_sinks(register: RegisterSink) -> None:
    """Register sink types: call ``register(type_name, sink_class)`` once per type.

    ``type_name`` is what ``type = "..."`` names in ``[sinks.NAME]`` of the configuration.
    ``sink_class`` subclasses :class:`outbox.sinks.Sink`; its ``Options`` attribute is the
    pydantic model that validates the sink's options (every key of ``[sinks.NAME]`` but
    ``type``), and ``sink_class(options)`` builds a sink from a validated model.
    """
