"""The composition root: settings in, plugins, sinks, relay options and a ready relay out.

The CLI, the demo, the dashboard and the benchmarks build relays here, so that every setting
reaches the relay by one path and the defaults are the settings' own. Errors are the
library's: :class:`~outbox.exceptions.ConfigError` for configuration that cannot work (each
problem with where it is), :class:`~outbox.exceptions.PluginError` for a plugin that cannot
load. Nothing here prints or exits; the caller decides what an error means to its user.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import signal
from typing import Any

from outbox import plugins
from outbox.exceptions import MissingSetting
from outbox.fanout import SinkLimits
from outbox.relay import Relay, RelayObserver, RelayOptions, RelayStats
from outbox.routing import Subscription
from outbox.settings import Settings
from outbox.sinks import Sink

NO_DATABASE = (
    "database_url",
    "no database configured: pass --database-url, set OUTBOX_DATABASE_URL, "
    "or set database_url in the configuration file",
)
NO_SUBSCRIPTIONS = (
    "subscriptions",
    "no subscriptions configured: add [[subscriptions]] to the configuration "
    "(config/outbox.toml, or --config FILE) so that events have somewhere to go",
)


def database_url(settings: Settings) -> str:
    """The configured database URL; :class:`~outbox.exceptions.MissingSetting` if none."""
    url = settings.url()
    if not url:
        raise MissingSetting([NO_DATABASE])
    return url


def subscriptions(settings: Settings) -> list[Subscription]:
    """The configured subscriptions; :class:`~outbox.exceptions.MissingSetting` if there
    are none, since a relay without any would mark every event done, delivered nowhere."""
    if not settings.subscriptions:
        raise MissingSetting([NO_SUBSCRIPTIONS])
    return settings.subscription_list()


def relay_options(settings: Settings | None = None, **overrides: Any) -> RelayOptions:
    """Every relay option from ``settings`` (the defaults when ``None``), then ``overrides``
    (``batch_size=10``, ``retry=RetryPolicy(...)``): for tests and benchmarks that build a
    relay around sinks of their own."""
    options = _default_options() if settings is None else _options_from(settings)
    return dataclasses.replace(options, **overrides) if overrides else options


@functools.cache
def _default_options() -> RelayOptions:
    return _options_from(Settings.from_values())


def _options_from(settings: Settings) -> RelayOptions:
    relay = settings.relay
    return RelayOptions(
        schema=settings.db_schema,
        channel=relay.channel,
        batch_size=relay.batch_size,
        concurrency=relay.concurrency,
        lease_seconds=relay.lease_seconds,
        delivery_timeout=relay.delivery_timeout,
        poll_interval=relay.poll_interval,
        listen=relay.listen,
        retry=relay.retry_policy(),
        retention_seconds=relay.retention_seconds,
        retention_batch=relay.retention_batch,
        maintenance_interval=relay.maintenance_interval,
        name="",  # no name configured: the relay names itself after its host and process
        claim_mode=relay.claim_mode,
        give_up_after=relay.give_up_after,
        shutdown_timeout=relay.shutdown_timeout,
        sinks=sink_limits(settings),
    )


def sink_limits(settings: Settings) -> dict[str, SinkLimits]:
    """The relay's settings of each sink that sets some of its own (``max_attempts``, the
    backoff, ``batch_size``, ``rate_limit`` under ``[sinks.NAME]``), whatever its type."""
    found = {}
    for name, sink in settings.sinks.items():
        limits = SinkLimits(
            retry=sink.retry_policy(settings.relay), batch_size=sink.batch_size, rate=sink.rate()
        )
        if limits != SinkLimits():
            found[name] = limits
    return found


def build_sinks(settings: Settings) -> dict[str, Sink]:
    """Each ``[sinks.NAME]`` built by the plugin that registered its type.

    Raises :class:`ConfigError` listing every invalid sink, :class:`PluginError` when a plugin
    fails to load."""
    return plugins.build_sinks(settings.sinks, plugins.sink_types(plugins.make_plugin_manager()))


def build_relay(
    settings: Settings, *, poll_only: bool = False, observer: RelayObserver | None = None
) -> Relay:
    """A relay ready to run: the database, sinks, subscriptions and options of ``settings``;
    ``poll_only`` never LISTENs (PgBouncer in transaction mode)."""
    url = database_url(settings)
    routes = subscriptions(settings)
    sinks = build_sinks(settings)
    options = relay_options(settings)
    if poll_only:
        options = dataclasses.replace(options, listen=False)
    return Relay(url, sinks, routes, options, observer=observer)


async def run_until_signalled(
    relay: Relay, *, once: bool = False, drain: bool = False, metrics_port: int | None = None
) -> RelayStats:
    """Run ``relay`` as a process does: the first SIGTERM/SIGINT stops it gracefully, a
    second cancels this task. With ``metrics_port``, serve the relay's metrics and health
    (its observer is a :class:`~outbox.metrics.PrometheusObserver`) while it runs. Returns
    the relay's counters."""
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    signals_seen = 0

    def on_signal() -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            logging.getLogger("outbox.relay").info("stopping: finishing the batches in flight")
            relay.stop()
        elif main_task is not None:
            main_task.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
    server = None
    if metrics_port is not None:
        from outbox.metrics import PrometheusObserver, serve

        assert isinstance(relay.observer, PrometheusObserver)
        server = await serve(relay, relay.observer, metrics_port)
    try:
        return await relay.run(once=once, drain=drain)
    finally:
        if server is not None:
            server.close()
            await server.wait_closed()
