"""How many deliveries per second the ``webhook`` sink makes to a fast local receiver.

The receiver is a minimal HTTP/1.1 server on 127.0.0.1 (an asyncio protocol answering every
request ``204 No Content`` on a kept-alive connection, verifying nothing) running in its own
process, so it shares neither the event loop nor the interpreter lock with the sink. For
each concurrency the sink delivers ``--events`` events (a small JSON payload each, signed
with one secret) through ``deliver_batch``, after a warm-up batch that opens the
connections. Every delivery must succeed. Besides the rate it prints the CPU time the sink's
process spent per delivery, a figure that other load on the machine disturbs less.

    python bench/webhook_throughput.py [--events 5000] [--concurrency 1,16,64]
        [--repeat 3] [--profile CONCURRENCY]

``--profile N`` runs the sink at concurrency N under cProfile and prints the top functions.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import multiprocessing
import os
import platform
import pstats
import shlex
import sys
import time
from collections.abc import Sequence

from outbox.testing import make_event
from outbox.webhook_sink import WebhookOptions, WebhookSink

_ANSWER = b"HTTP/1.1 204 No Content\r\nserver: bench\r\n\r\n"


class _Receiver(asyncio.Protocol):
    """Answers each complete request with 204; requests are framed by content-length."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        answers = 0
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            length = _content_length(self.buffer[:end])
            if len(self.buffer) < end + 4 + length:
                break
            self.buffer = self.buffer[end + 4 + length :]
            answers += 1
        if answers and self.transport is not None:
            self.transport.write(_ANSWER * answers)


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def _serve(port_pipe: multiprocessing.connection.Connection) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Receiver, "127.0.0.1", 0, backlog=1024)
        port_pipe.send(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(main())


async def _run(url: str, concurrency: int, events: int) -> tuple[float, float]:
    """Deliveries per second, and the sink's CPU microseconds per delivery."""
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    options = WebhookOptions(
        url=url,
        secret=secret,  # type: ignore[arg-type]
        concurrency=concurrency,
        allowed_networks=["127.0.0.1/32"],  # type: ignore[list-item]
    )
    payload = {"order": 1234, "status": "paid", "text": "x" * 100}
    async with WebhookSink(options) as sink:
        warm_up = [make_event("bench.event", payload) for _ in range(concurrency * 2)]
        batch = [make_event("bench.event", payload) for _ in range(events)]
        _check(await sink.deliver_batch(warm_up))
        started, cpu = time.perf_counter(), time.process_time()
        _check(await sink.deliver_batch(batch))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return events / elapsed, cpu / events * 1e6


def _check(results: Sequence[BaseException | None]) -> None:
    failures = [result for result in results if result is not None]
    if failures:
        raise SystemExit(f"{len(failures)} deliveries failed, e.g. {failures[0]!r}")


def _profile(url: str, concurrency: int, events: int) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    rate, _ = asyncio.run(_run(url, concurrency, events))
    profiler.disable()
    print(f"\nprofile at concurrency {concurrency}: {rate:,.0f}/s (slowed by the profiler)")
    stats = pstats.Stats(profiler).strip_dirs().sort_stats("tottime")
    stats.print_stats(25)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--repeat", type=int, default=3, help="runs per concurrency; best kept")
    parser.add_argument("--profile", type=int, metavar="CONCURRENCY")
    args = parser.parse_args(argv)
    levels = [int(level) for level in args.concurrency.split(",")]

    receive, send = multiprocessing.Pipe(duplex=False)
    server = multiprocessing.Process(target=_serve, args=(send,), daemon=True)
    server.start()
    try:
        url = f"http://127.0.0.1:{receive.recv()}/hook"
        print(
            f"python {platform.python_version()}, {os.cpu_count()} CPUs, receiver pid {server.pid}"
        )
        print("$ python " + shlex.join(["bench/webhook_throughput.py", *sys.argv[1:]]))
        print(f"{'concurrency':>11}  {'deliveries/s':>12}  {'sink CPU us/delivery':>20}")
        for level in levels:
            runs = [asyncio.run(_run(url, level, args.events)) for _ in range(args.repeat)]
            rate, cpu = max(runs)
            print(f"{level:>11}  {rate:>12,.0f}  {cpu:>20,.0f}")
        if args.profile:
            _profile(url, args.profile, args.events)
    finally:
        server.terminate()
        server.join()


if __name__ == "__main__":
    main()
