"""The ``webhook`` sink against a real HTTP server on 127.0.0.1, and ``httpx.MockTransport``
for what a real server makes awkward. No traffic leaves the loopback interface: the address
checks refuse before connecting, and the tests that exercise them make connecting fail."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import email.utils
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from standardwebhooks import Webhook

from outbox import webhook_sink
from outbox.exceptions import PermanentError, RetryableError, SinkGone
from outbox.plugins import make_plugin_manager, sink_types
from outbox.retry import classify
from outbox.sinks import Sink
from outbox.testing import Behaviour, SinkHarness, exercise_sink, make_event
from outbox.webhook_sink import MAX_RETRY_AFTER, WebhookOptions, WebhookSink


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


SECRET = new_secret()
LOOPBACK = ["127.0.0.1/32"]


# -- a small HTTP/1.1 server -----------------------------------------------------------------


@dataclasses.dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Handler = Callable[[Received, asyncio.StreamWriter], Awaitable[None]]


def reply(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Handler:
    """A handler answering ``status`` with ``body``, keeping the connection open."""

    async def handle(request: Received, writer: asyncio.StreamWriter) -> None:
        fields = {"content-length": str(len(body)), **(headers or {})}
        head = f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
        writer.write(head.encode() + b"\r\n" + body)
        await writer.drain()

    return handle


class Receiver:
    """Records every request and answers with ``handler`` (204 unless told otherwise)."""

    def __init__(self) -> None:
        self.handler: Handler = reply(204)
        self.requests: list[Received] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.url = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self, tls: ssl.SSLContext | None = None) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=tls)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/hook"

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._converse(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client hung up, or the server is closing
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while request := await _read_request(reader):
            self.requests.append(request)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                await self.handler(request, writer)
            finally:
                self.in_flight -= 1


async def _read_request(reader: asyncio.StreamReader) -> Received | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    request_line, *lines = head.decode("latin-1").split("\r\n")
    method, path, _ = request_line.split(" ", 2)
    headers = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Received(method, path, headers, body)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.close()


def options(url: str, **values: Any) -> WebhookOptions:
    values.setdefault("secret", SECRET)
    values.setdefault("allowed_networks", LOOPBACK)
    return WebhookOptions(url=url, **values)


@contextlib.asynccontextmanager
async def webhook(url: str, **values: Any) -> AsyncIterator[WebhookSink]:
    async with WebhookSink(options(url, **values)) as sink:
        yield sink


async def outcome(sink: Sink, **fields: Any) -> BaseException | None:
    [result] = await sink.deliver_batch([make_event(**fields)])
    return result


def verify(secret: str, request: Received) -> Any:
    return Webhook(secret).verify(request.body, request.headers)


# -- signing and the request -----------------------------------------------------------------


async def test_request_is_signed_and_verifies(receiver: Receiver) -> None:
    event = make_event("order.paid", {"total": 12, "note": "café ✓"}, key="order-7")
    async with webhook(receiver.url) as sink:
        await sink.deliver(event)
    [request] = receiver.requests
    assert request.method == "POST"
    assert request.path == "/hook"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["webhook-id"] == str(event.id)
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
    body = verify(SECRET, request)
    assert body == {
        "type": "order.paid",
        "timestamp": event.created_at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
        "data": {"total": 12, "note": "café ✓"},
        "id": str(event.id),
        "key": "order-7",
    }


async def test_a_wrong_secret_does_not_verify(receiver: Receiver) -> None:
    async with webhook(receiver.url) as sink:
        await sink.deliver(make_event())
    with pytest.raises(Exception, match="No matching signature"):
        verify(new_secret(), receiver.requests[0])


async def test_rotation_signs_with_every_secret(receiver: Receiver) -> None:
    old, new = new_secret(), new_secret()
    async with webhook(receiver.url, secret=[old, new]) as sink:
        await sink.deliver(make_event())
    [request] = receiver.requests
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    assert all(part.startswith("v1,") for part in request.headers["webhook-signature"].split())
    verify(old, request)
    verify(new, request)


async def test_secrets_from_the_environment(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", SECRET)
    async with webhook(receiver.url, secret={"env": "TEST_WEBHOOK_SECRET"}) as sink:
        await sink.deliver(make_event())
    verify(SECRET, receiver.requests[0])


async def test_webhook_id_is_stable_across_attempts(receiver: Receiver) -> None:
    event = make_event()
    async with webhook(receiver.url) as sink:
        receiver.handler = reply(503)
        [first] = await sink.deliver_batch([event])
        receiver.handler = reply(200)
        await sink.deliver(dataclasses.replace(event, attempt=2))
    assert isinstance(first, RetryableError)
    ids = [request.headers["webhook-id"] for request in receiver.requests]
    assert ids == [str(event.id), str(event.id)]
    for request in receiver.requests:
        verify(SECRET, request)


async def test_headers_trace_context_and_extras(receiver: Receiver) -> None:
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    event_headers = {"Traceparent": trace, "tracestate": "a=1", "x-internal": "secret"}
    async with webhook(receiver.url, headers={"Authorization": "Bearer t"}) as sink:
        await sink.deliver(make_event(headers=event_headers))
    headers = receiver.requests[0].headers
    assert headers["traceparent"] == trace
    assert headers["tracestate"] == "a=1"
    assert headers["x-internal"] == "secret"  # every event header travels
    assert headers["authorization"] == "Bearer t"
    assert headers["user-agent"].startswith("outbox-relay/")


# -- answers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, None),
        (201, None),
        (204, None),
        (400, PermanentError),
        (401, PermanentError),
        (404, PermanentError),
        (422, PermanentError),
        (408, RetryableError),
        (409, RetryableError),
        (425, RetryableError),
        (429, RetryableError),
        (410, SinkGone),
        (500, RetryableError),
        (502, RetryableError),
        (503, RetryableError),
    ],
)
async def test_status_codes(
    receiver: Receiver, status: int, expected: type[Exception] | None
) -> None:
    body = b"" if status == 204 else b"the receiver says\n  why"
    receiver.handler = reply(status, body)
    async with webhook(receiver.url) as sink:
        result = await outcome(sink)
    if expected is None:
        assert result is None
        return
    assert type(result) is expected
    # The path may hold a token: an error shows the origin and hides the path.
    origin = receiver.url.removesuffix("hook")
    assert f"HTTP {status} from {origin}…: the receiver says why" in str(result)
    if expected is RetryableError:
        assert isinstance(result, RetryableError)
        assert result.retry_after is None


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_redirects_are_permanent_and_not_followed(receiver: Receiver, status: int) -> None:
    target = Receiver()
    await target.start()
    try:
        receiver.handler = reply(status, headers={"location": target.url})
        async with webhook(receiver.url) as sink:
            result = await outcome(sink)
    finally:
        await target.close()
    assert type(result) is PermanentError
    assert f"redirect to {target.url} not followed" in str(result)
    assert len(receiver.requests) == 1
    assert target.requests == []


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_seconds(receiver: Receiver, status: int) -> None:
    receiver.handler = reply(status, headers={"retry-after": "120"})
    async with webhook(receiver.url) as sink:
        result = await outcome(sink)
    assert isinstance(result, RetryableError)
    assert result.retry_after == 120


async def test_retry_after_http_date(receiver: Receiver) -> None:
    when = email.utils.format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=90), True)
    receiver.handler = reply(503, headers={"retry-after": when})
    async with webhook(receiver.url) as sink:
        result = await outcome(sink)
    assert isinstance(result, RetryableError)
    assert result.retry_after is not None
    assert 80 <= result.retry_after <= 90


async def test_retry_after_is_capped(receiver: Receiver) -> None:
    receiver.handler = reply(429, headers={"retry-after": "999999999"})
    async with webhook(receiver.url) as sink:
        result = await outcome(sink)
    assert isinstance(result, RetryableError)
    assert result.retry_after == MAX_RETRY_AFTER


async def test_credentials_and_query_stay_out_of_errors(receiver: Receiver) -> None:
    receiver.handler = reply(400)
    url = receiver.url.replace("http://", "http://user:hunter2@") + "?token=hunter2"
    async with webhook(url) as sink:
        result = await outcome(sink)
    assert isinstance(result, PermanentError)
    assert "hunter2" not in str(result)
    assert receiver.url.removesuffix("hook") + "…" in str(result)
    [request] = receiver.requests
    assert request.path == "/hook?token=hunter2"
    assert request.headers["authorization"] == "Basic " + base64.b64encode(b"user:hunter2").decode()


async def test_success_keeps_the_connection(receiver: Receiver) -> None:
    peers = []

    async def handle(request: Received, writer: asyncio.StreamWriter) -> None:
        peers.append(writer.get_extra_info("peername"))
        await reply(200, b'{"ok": true}')(request, writer)

    receiver.handler = handle
    async with webhook(receiver.url, concurrency=1) as sink:
        for _ in range(3):
            await sink.deliver(make_event())
    assert len(set(peers)) == 1


async def test_connections_closed_by_the_server_are_not_reused(receiver: Receiver) -> None:
    async def answer_and_hang_up(request: Received, writer: asyncio.StreamWriter) -> None:
        await reply(200)(request, writer)
        writer.close()

    receiver.handler = answer_and_hang_up
    async with webhook(receiver.url, concurrency=1) as sink:
        for _ in range(3):
            await sink.deliver(make_event())
            await asyncio.sleep(0.05)  # the server's FIN arrives while the connection idles
    assert len(receiver.requests) == 3


# -- deadlines, body caps, network failures --------------------------------------------------


async def test_slow_drip_hits_the_overall_deadline(receiver: Receiver) -> None:
    async def drip(request: Received, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
        for _ in range(1000):
            writer.write(b".")
            await writer.drain()
            await asyncio.sleep(0.2)

    receiver.handler = drip
    async with webhook(receiver.url, timeout=1, connect_timeout=1) as sink:
        started = time.monotonic()
        result = await outcome(sink)
        elapsed = time.monotonic() - started
    assert isinstance(result, RetryableError)
    assert "within 1s" in str(result)
    assert elapsed < 5  # far less than the 200 s the body would take


async def test_the_batch_deadline_cuts_off_slow_deliveries(receiver: Receiver) -> None:
    async def stall(request: Received, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)
        await reply(204)(request, writer)

    receiver.handler = stall
    async with webhook(receiver.url, concurrency=2) as sink:
        started = time.monotonic()
        results = await sink.deliver_batch([make_event() for _ in range(3)], timeout=0.5)
        elapsed = time.monotonic() - started
    assert [type(result) for result in results] == [RetryableError] * 3
    assert all("timed out after 0.5s" in str(result) for result in results)
    assert elapsed < 5  # far less than the sink's own 15 s timeout


async def test_endless_body_is_read_only_up_to_the_cap(receiver: Receiver) -> None:
    async def endless(request: Received, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 500 Oops\r\ntransfer-encoding: chunked\r\n\r\n")
        chunk = b"x" * 8192
        while True:  # until the client hangs up
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()

    receiver.handler = endless
    async with webhook(receiver.url, max_response_bytes=1024) as sink:
        result = await outcome(sink)
    assert isinstance(result, RetryableError)
    assert "HTTP 500" in str(result)


async def test_body_read_stops_at_the_cap() -> None:
    pulled = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(10_000):
            pulled += 1
            yield b"y" * 1024

    transport = httpx.MockTransport(lambda request: httpx.Response(500, content=chunks()))
    sink = WebhookSink(
        options("https://hooks.example.com/", max_response_bytes=4096), transport=transport
    )
    async with sink:
        result = await outcome(sink)
    assert isinstance(result, RetryableError)
    assert pulled <= 5
    assert str(result).endswith("y" * 200 + "…")


async def test_connection_refused_is_retryable() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    async with webhook(f"http://127.0.0.1:{port}/") as sink:
        result = await outcome(sink)
    assert type(result) is RetryableError
    assert f"127.0.0.1:{port}" in str(result)


async def test_connection_reset_is_retryable(receiver: Receiver) -> None:
    async def hang_up(request: Received, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()

    receiver.handler = hang_up
    async with webhook(receiver.url) as sink:
        result = await outcome(sink)
    assert type(result) is RetryableError


async def test_transport_timeouts_are_retryable() -> None:
    def time_out(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    sink = WebhookSink(
        options("https://hooks.example.com/"), transport=httpx.MockTransport(time_out)
    )
    async with sink:
        result = await outcome(sink)
    assert type(result) is RetryableError


async def test_unencodable_payload_is_permanent() -> None:
    sent = []
    transport = httpx.MockTransport(lambda request: sent.append(request) or httpx.Response(200))
    async with WebhookSink(options("https://hooks.example.com/"), transport=transport) as sink:
        result = await outcome(sink, payload={"when": object()})
    assert isinstance(result, PermanentError)
    assert sent == []


# -- TLS -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for the name ``localhost`` (not for 127.0.0.1), and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost"
    command += " -addext subjectAltName=DNS:localhost"
    subprocess.run(
        [*command.split(), "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True
    )
    return cert, key


@pytest.fixture
async def tls_receiver(certificate: tuple[Path, Path]) -> AsyncIterator[Receiver]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    server = Receiver()
    await server.start(tls=context)
    yield server
    await server.close()


@pytest.fixture
def trust_test_certificate(certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Make sinks built from now on trust the test certificate (and only it)."""

    def create_ssl_context(**_: Any) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(certificate[0]))

    monkeypatch.setattr(httpx, "create_ssl_context", create_ssl_context)


async def test_tls_without_verification(tls_receiver: Receiver) -> None:
    async with webhook(tls_receiver.url, verify_tls=False) as sink:
        for _ in range(2):
            assert await outcome(sink) is None
    assert len(tls_receiver.requests) == 2
    verify(SECRET, tls_receiver.requests[0])


async def test_tls_verifies_certificates_by_default(tls_receiver: Receiver) -> None:
    async with webhook(tls_receiver.url) as sink:
        result = await outcome(sink)
    assert type(result) is RetryableError
    assert "CERTIFICATE_VERIFY_FAILED" in str(result)
    assert tls_receiver.requests == []


@pytest.mark.usefixtures("trust_test_certificate")
async def test_tls_checks_the_host_name_not_the_address(tls_receiver: Receiver) -> None:
    by_name = tls_receiver.url.replace("127.0.0.1", "localhost")
    loopback = ["127.0.0.1/32", "::1/128"]
    async with webhook(by_name, allowed_networks=loopback) as sink:
        named = await outcome(sink)  # SNI and the check say localhost; the socket goes to
    async with webhook(tls_receiver.url, allowed_networks=loopback) as sink:  # 127.0.0.1
        numeric = await outcome(sink)
    assert named is None
    assert tls_receiver.requests[0].headers["host"] == by_name.split("/")[2]
    assert type(numeric) is RetryableError
    assert "127.0.0.1" in str(numeric)
    assert len(tls_receiver.requests) == 1


# -- addresses -------------------------------------------------------------------------------


@pytest.fixture
async def no_connections(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Record and refuse every outgoing connection the event loop would open."""
    attempts: list[tuple[Any, ...]] = []

    async def create_connection(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args)
        raise OSError("connections are disabled in this test")

    monkeypatch.setattr(asyncio.get_running_loop(), "create_connection", create_connection)
    return attempts


@pytest.mark.parametrize(
    ("host", "refusal"),
    [
        ("127.0.0.1", "127.0.0.1 is not a public address (loopback)"),
        ("10.0.0.1", "10.0.0.1 is not a public address (private)"),
        ("172.16.0.1", "172.16.0.1 is not a public address (private)"),
        ("192.168.1.1", "192.168.1.1 is not a public address (private)"),
        ("169.254.169.254", "169.254.169.254 is not a public address (link-local)"),
        ("[::1]", "::1 is not a public address (loopback)"),
        ("[::ffff:127.0.0.1]", "(IPv4 127.0.0.1) is not a public address (loopback)"),
        ("[::ffff:10.0.0.1]", "(IPv4 10.0.0.1) is not a public address (private)"),
        ("[fe80::1]", "fe80::1 is not a public address (link-local)"),
        ("[fec0::1]", "fec0::1 is not a public address (site-local)"),
        ("[fc00::1]", "fc00::1 is not a public address (private)"),
        ("[2002:a00:1::1]", "2002:a00:1::1 tunnels to 10.0.0.1, not a public address (private)"),
        ("224.0.0.1", "224.0.0.1 is not a public address (multicast)"),
        ("[ff02::1]", "ff02::1 is not a public address (multicast)"),
        ("0.0.0.0", "0.0.0.0 is not a public address (unspecified)"),
        ("100.64.0.1", "100.64.0.1 is not a public address (special-purpose)"),
        ("240.0.0.1", "240.0.0.1 is not a public address (reserved)"),
    ],
)
async def test_non_public_addresses_are_refused_before_connecting(
    no_connections: list[tuple[Any, ...]], host: str, refusal: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A URL naming such an address is refused with the configuration; a name resolving to
    # one is refused here, retryably: allowing it is a configuration change away.
    fake_dns(monkeypatch, "hooks.example.com", host.strip("[]"))
    url = "https://hooks.example.com/hook"
    async with WebhookSink(options(url, allowed_networks=[])) as sink:
        result = await outcome(sink)
    assert type(result) is RetryableError
    assert refusal in str(result)
    assert no_connections == []


async def test_host_names_are_checked_once_resolved(no_connections: list[Any]) -> None:
    # Allowing only ::1 lets the URL through the configuration; localhost resolves to
    # 127.0.0.1 as well, which is refused when it does.
    url = "http://localhost:9/"
    async with WebhookSink(options(url, allowed_networks=["::1/128"])) as sink:
        result = await outcome(sink)
    assert type(result) is RetryableError
    assert "is not a public address (loopback) (localhost resolves to it)" in str(result)
    assert no_connections == []


def fake_dns(monkeypatch: pytest.MonkeyPatch, name: str, *addresses: str) -> None:
    """Make ``name`` resolve to ``addresses``, in that order, on the running loop."""
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo

    async def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        if host != name:
            return await real(host, port, *args, **kwargs)
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in addresses
        ]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)


async def test_one_non_public_address_refuses_the_host(
    no_connections: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dns(monkeypatch, "hooks.example.com", "93.184.215.14", "10.0.0.1")
    async with WebhookSink(options("https://hooks.example.com/", allowed_networks=[])) as sink:
        result = await outcome(sink)
    assert type(result) is RetryableError
    assert "10.0.0.1 is not a public address (private) (hooks.example.com resolves to it)" in str(
        result
    )
    assert no_connections == []


async def test_the_next_address_is_tried_when_one_refuses(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = receiver.url.split(":")[2].split("/")[0]
    fake_dns(monkeypatch, "receiver.test", "127.0.0.2", "127.0.0.1")  # nothing on .2
    url = f"http://receiver.test:{port}/hook"
    async with webhook(url, allowed_networks=["127.0.0.0/8"]) as sink:
        assert await outcome(sink) is None
    assert receiver.requests[0].headers["host"] == f"receiver.test:{port}"


async def test_public_addresses_pass_the_check(
    no_connections: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dns(monkeypatch, "hooks.example.com", "192.0.2.1")
    url = "https://hooks.example.com/"
    async with WebhookSink(options(url, allowed_networks=[])) as sink:
        documentation = await outcome(sink)  # TEST-NET-1 is not public either
    async with WebhookSink(
        WebhookOptions(url="https://192.0.2.1/", secret=SECRET, allowed_networks=["192.0.2.0/24"])
    ) as sink:
        allowed = await outcome(sink)
    assert type(documentation) is RetryableError
    assert "192.0.2.1 is not a public address" in str(documentation)
    assert type(allowed) is RetryableError  # got past the check; the connect was refused
    assert "not a public address" not in str(allowed)
    assert [call[1:3] for call in no_connections] == [("192.0.2.1", 443)]


async def test_allow_list_lets_loopback_through(receiver: Receiver) -> None:
    async with webhook(receiver.url, allowed_networks=["127.0.0.0/8"]) as sink:
        assert await outcome(sink) is None
    mapped = receiver.url.replace("127.0.0.1", "[::ffff:127.0.0.1]")
    async with webhook(mapped, allowed_networks=["127.0.0.1/32"]) as sink:
        assert await outcome(sink) is None  # reached over IPv4
    assert len(receiver.requests) == 2


# -- concurrency and the sink contract -------------------------------------------------------


async def test_concurrency_is_bounded(receiver: Receiver) -> None:
    async def slow(request: Received, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.05)
        await reply(204)(request, writer)

    receiver.handler = slow
    async with webhook(receiver.url, concurrency=4) as sink:
        events = [make_event() for _ in range(20)]
        halves = await asyncio.gather(
            sink.deliver_batch(events[:10]),
            sink.deliver(events[10]),
            sink.deliver_batch(events[11:]),
        )
    assert halves[0] == [None] * 10
    assert halves[2] == [None] * 9
    assert len(receiver.requests) == 20
    assert receiver.max_in_flight == 4


ANSWERS: dict[Behaviour, Handler] = {
    "ok": reply(204),
    "retryable": reply(503),
    "permanent": reply(422),
    "retry_after": reply(429, headers={"retry-after": "7"}),
}


class WebhookHarness(SinkHarness):
    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.accepted: list[int] = []

    async def make_sink(self, behaviour: Behaviour = "ok") -> Sink | None:
        answer = ANSWERS[behaviour]

        async def handle(request: Received, writer: asyncio.StreamWriter) -> None:
            if behaviour == "ok":
                self.accepted.append(int(request.headers["webhook-id"]))
            await answer(request, writer)

        self.receiver.handler = handle
        return WebhookSink(options(self.receiver.url))

    async def received_ids(self) -> Sequence[int]:
        return self.accepted


async def test_conformance(receiver: Receiver) -> None:
    ran = await exercise_sink(WebhookHarness(receiver))
    assert ran == [
        "acks",
        "repeat_is_harmless",
        "retryable",
        "permanent",
        "retry_after",
        "concurrency",
    ]


async def test_retryable_errors_classify_as_retries(receiver: Receiver) -> None:
    receiver.handler = reply(429, headers={"retry-after": "30"})
    async with webhook(receiver.url) as sink:
        result = await outcome(sink)
    assert classify(result).retry_after == 30


def test_registered_as_a_builtin_sink_type() -> None:
    manager = make_plugin_manager(entry_points=False)
    if not manager.is_registered(webhook_sink):  # until it is listed in BUILTIN_PLUGINS
        manager.register(webhook_sink)
    assert sink_types(manager)["webhook"] is WebhookSink


# -- options ---------------------------------------------------------------------------------


def error_locations(**values: Any) -> list[tuple[Any, ...]]:
    with pytest.raises(ValidationError) as caught:
        WebhookOptions.model_validate(values)
    return [tuple(item["loc"]) for item in caught.value.errors()]


@pytest.mark.parametrize("url", ["ftp://example.com/", "file:///etc/passwd", "example.com/x"])
def test_url_must_be_http(url: str) -> None:
    assert error_locations(url=url, secret=SECRET) == [("url",)]


@pytest.mark.parametrize(
    "secret",
    [
        "not-a-secret",
        base64.b64encode(os.urandom(32)).decode(),  # base64 without the prefix
        "whsec_not*base64!",
        "whsec_" + base64.b64encode(os.urandom(8)).decode(),  # too short a key
    ],
)
def test_secret_format(secret: str) -> None:
    assert error_locations(url="https://example.com/", secret=secret) == [("secret", 0)]


def test_bad_secret_in_a_rotation_list_is_located() -> None:
    locations = error_locations(url="https://example.com/", secret=[SECRET, "whsec_!!"])
    assert locations == [("secret", 1)]


def test_secret_is_required() -> None:
    assert ("secret",) in error_locations(url="https://example.com/")


def test_secret_errors_do_not_show_the_secret() -> None:
    leaked = "whsec_" + base64.b64encode(b"k" * 8).decode()
    with pytest.raises(ValidationError) as caught:
        WebhookOptions(url="https://example.com/", secret=leaked)  # type: ignore[arg-type]
    assert leaked not in str(caught.value)


@pytest.mark.parametrize(
    "name", ["webhook-id", "Webhook-Signature", "Content-Type", "host", "x-a\n", "x a"]
)
def test_sink_headers_cannot_be_overridden(name: str) -> None:
    locations = error_locations(url="https://example.com/", secret=SECRET, headers={name: "x"})
    assert locations == [("headers", name, "[key]")]


@pytest.mark.parametrize("value", ["acme\r\nx-evil: 1", "acme\n", "caf\u00e9", "a\x00b"])
def test_header_values_are_printable_ascii(value: str) -> None:
    headers = {"x-tenant": value}
    locations = error_locations(url="https://example.com/", secret=SECRET, headers=headers)
    assert locations == [("headers", "x-tenant")]


def test_unknown_options_and_bad_networks_are_refused() -> None:
    locations = error_locations(
        url="https://example.com/", secret=SECRET, retries=3, allowed_networks=["10.0.0.1/8"]
    )
    assert sorted(locations) == [("allowed_networks", 0), ("retries",)]


def test_defaults() -> None:
    defaults = WebhookOptions(url="https://example.com/", secret=SECRET)  # type: ignore[arg-type]
    assert (defaults.timeout, defaults.connect_timeout) == (15.0, 5.0)
    assert defaults.max_response_bytes == 64 * 1024
    assert defaults.concurrency == 16
    assert defaults.verify_tls is True
    assert defaults.allowed_networks == []
