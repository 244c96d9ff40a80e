"""A receiver for outbox-relay's webhook sink, with the standard library only.

It checks each request's Standard Webhooks signature, refuses stale timestamps, answers a
repeated ``webhook-id`` without handling it twice, and hands every new event to a function
of yours. Run it as::

    WEBHOOK_SECRET=whsec_... python webhook_receiver.py 8000
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOLERANCE = 5 * 60
"""Seconds a request's ``webhook-timestamp`` may be off from this machine's clock."""

Handle = Callable[[dict[str, Any], Mapping[str, str]], None]
"""Your code: called with the event (the JSON body) and the request's headers."""


class InvalidSignature(Exception):
    """The request was not signed with the secret, or not recently enough."""


def signing_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret: the decoded part."""
    return base64.b64decode(secret.removeprefix("whsec_"))


def verify(
    secret: str, headers: Mapping[str, str], body: bytes, now: float | None = None
) -> dict[str, Any]:
    """The event in ``body`` if ``secret`` signed it; :class:`InvalidSignature` otherwise.

    ``headers`` are the request's, with lower-case names. ``body`` is the raw body, exactly
    as received: the signature covers those bytes, not a re-encoding of the JSON.
    """
    msg_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    signatures = headers.get("webhook-signature", "")
    if not (msg_id and timestamp.isdigit() and signatures):
        raise InvalidSignature("missing or malformed webhook-* headers")
    if abs((time.time() if now is None else now) - int(timestamp)) > TOLERANCE:
        raise InvalidSignature("the timestamp is too far from now")
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.digest(signing_key(secret), signed, hashlib.sha256)
    expected = base64.b64encode(digest).decode()
    # One "v1,<base64>" per secret the sender signs with (several while rotating).
    for entry in signatures.split(" "):
        version, _, signature = entry.partition(",")
        if version == "v1" and hmac.compare_digest(signature, expected):
            event: dict[str, Any] = json.loads(body)
            return event
    raise InvalidSignature("no signature matches the secret")


def make_server(
    secret: str, handle: Handle, host: str = "127.0.0.1", port: int = 8000
) -> ThreadingHTTPServer:
    """An HTTP server that verifies each POST and calls ``handle`` once per event id.

    Answers: 204 once handled (or already handled), 401 for a bad signature (the relay
    fails that delivery for good: fix the secret, then ``outbox retry``), 500 when
    ``handle`` raises (the relay tries again later).
    """
    seen: set[str] = set()  # in production: a unique constraint on the event id
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            headers = {name.lower(): value for name, value in self.headers.items()}
            try:
                event = verify(secret, headers, body)
            except InvalidSignature:
                self._answer(401)
                return
            with lock:
                if event["id"] in seen:
                    self._answer(204)  # a retry of an event already handled
                    return
                try:
                    handle(event, headers)
                except Exception:
                    self._answer(500)
                    return
                seen.add(event["id"])
            self._answer(204)

        def _answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep the example quiet

    return ThreadingHTTPServer((host, port), Handler)


def print_event(event: dict[str, Any], headers: Mapping[str, str]) -> None:
    print(event["id"], event["type"], json.dumps(event["data"]), flush=True)


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    make_server(os.environ["WEBHOOK_SECRET"], print_event, port=port).serve_forever()
