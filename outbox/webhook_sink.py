"""The ``webhook`` sink: each event is POSTed to a URL, signed as Standard Webhooks says.

    [sinks.billing]
    type = "webhook"
    url = "https://billing.example.com/hooks/outbox"   # or { env = "BILLING_WEBHOOK_URL" }
    secret = { env = "BILLING_WEBHOOK_SECRET" }    # or a list of them while rotating
    # headers = { "x-tenant" = "acme" }
    # timeout = 15.0               # seconds for the whole delivery, body included
    # connect_timeout = 5.0
    # max_response_bytes = 65536   # the most of a response body ever read
    # concurrency = 16             # requests in flight at once
    # allowed_networks = []        # e.g. ["10.20.0.0/16"] for an internal receiver
    # verify_tls = true
    # url_is_secret = true         # errors and logs show https://billing.example.com/… only

The request body is JSON, in the shape Standard Webhooks recommends, with the event id
and key added at the top level::

    {"type": "<topic>", "timestamp": "<created_at, RFC 3339, UTC>", "data": <payload>,
     "id": "<event id>", "key": "<key>" | null}

``id`` is a string, equal to the ``webhook-id`` header, so that ids above 2**53 survive
JavaScript receivers. Headers: ``content-type: application/json``, ``webhook-id`` (the event
id, the same on every attempt: the receiver's idempotency key), ``webhook-timestamp``
(when this attempt was made, Unix seconds) and ``webhook-signature``: one
``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` per secret, space separated. The
bytes signed are the bytes sent.

The event's own ``headers`` (``publish(..., headers=...)``, trace context included) go on
the request too, names in lower case, under the sink's: a header the sink sets (the
``webhook-*`` ones, ``content-type``, ``user-agent``, ``accept-encoding``, the configured
``headers``, basic authentication, the framing headers) keeps the sink's value, and one that
HTTP cannot carry (a name that is not a token, a value that is not printable ASCII) is left
out, with a warning logged once per name. They are not covered by the signature.

Secrets must be written ``whsec_<base64>`` (the key is the decoded part, 24 to 64 bytes, as
the standard asks). Bare base64 is refused because it cannot be told apart from a password
pasted by mistake (``password`` is valid base64). List several secrets to rotate: every
request carries one signature per secret, so the receiver can switch keys at its own pace.

Answers: 2xx is success; 410 is :class:`~outbox.SinkGone`; 408, 409, 425, 429 and 5xx are
retried, honouring ``Retry-After`` (capped at a day); every other status, redirects
included, is permanent. Redirects are never followed. Network errors and the overall
``timeout`` are retryable.

Addresses: loopback, private, link-local, site-local, multicast, reserved, unspecified and
shared (100.64/10) addresses are refused, also when an IPv6 address maps or tunnels to one
(``::ffff:127.0.0.1``, 6to4, Teredo), unless ``allowed_networks`` lists them. A URL whose
host is such an address (or ``localhost``) is refused with the configuration, naming the
``allowed_networks`` line that allows it. A host name is resolved when a connection is
opened, and the connection goes to the address that was checked; a name that resolves to a
refused address (DNS rebinding, or an internal name) fails that attempt with a retryable
error naming the address, before any connection is attempted, since allowing it is a
configuration change away. TLS certificates are verified against the URL's host name,
never the address.

``user:password@`` in the URL is sent as HTTP basic authentication. Errors (and so
``last_error``, ``outbox status``, ``outbox events show`` and the relay's log lines) and
``repr`` show the URL as ``scheme://host[:port]/…``: never credentials, query or path, since
receivers such as Slack put a token in the path; ``url_is_secret = false`` shows the path.

At most ``concurrency`` requests are in flight; the others of a batch wait their turn, so
the relay's ``delivery_timeout`` (which bounds a whole batch) should exceed about
``batch_size / concurrency * timeout``.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import time
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

import httpx
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from outbox import __version__
from outbox._webhook_rules import (
    MAX_RETRY_AFTER,
    answer_error,
    classify_status,
    connect_address,
    envelope,
    event_headers,
    header_name_problem,
    header_value_problem,
    parse_retry_after,
    refusal,
    secret_key,
    shown_url,
    sign,
    url_address_problem,
    url_problem,
)
from outbox._webhook_transport import WebhookTransport
from outbox.exceptions import PermanentError
from outbox.hookspecs import RegisterSink, hookimpl
from outbox.secrets import Secret
from outbox.sinks import Event, Sink

__all__ = [
    "MAX_RETRY_AFTER",
    "WebhookOptions",
    "WebhookSink",
    "WebhookTransport",
    "classify_status",
    "connect_address",
    "envelope",
    "parse_retry_after",
    "refusal",
    "sign",
]

logger = logging.getLogger(__name__)
_WARNED_NAMES = 1000  # header names remembered as logged, so the set stays bounded

_RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "transfer-encoding", "host", "connection"}
)


# -- options ---------------------------------------------------------------------------------


def _webhook_key(secret: SecretStr) -> SecretStr:
    text = secret.get_secret_value().strip()
    secret_key(text)
    return SecretStr(text)


def _one_or_many(value: Any) -> Any:
    return value if isinstance(value, list | tuple) else [value]


def _header_name(name: str) -> str:
    if header_name_problem(name) is not None:
        raise ValueError(f"{name!r} is not a valid header name")
    lowered = name.lower()
    if lowered.startswith("webhook-") or lowered in _RESERVED_HEADERS:
        raise ValueError(f"header {name!r} is set by the sink and cannot be configured")
    return name


def _header_value(value: str) -> str:
    problem = header_value_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _error(loc: tuple[str, ...], message: str) -> InitErrorDetails:
    error = PydanticCustomError("value_error", message)
    return InitErrorDetails(type=error, loc=loc, input="(hidden)")  # inputs may be secrets


WebhookSecret = Annotated[Secret, AfterValidator(_webhook_key)]
HeaderName = Annotated[str, AfterValidator(_header_name)]
HeaderValue = Annotated[str, AfterValidator(_header_value)]


class WebhookOptions(BaseModel):
    """``[sinks.NAME]`` of ``type = "webhook"``."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)  # secrets

    url: Secret = Field(
        description='Where events are POSTed; http:// or https:// only. { env = "NAME" }, '
        '{ file = "path" } or the URL itself.'
    )
    url_is_secret: bool = Field(
        True,
        description="Errors and logs show only scheme://host[:port]/… of the URL (its path "
        "may hold a token); false shows the path too.",
    )
    secret: Annotated[list[WebhookSecret], BeforeValidator(_one_or_many)] = Field(
        min_length=1,
        max_length=8,
        description="Signing secret 'whsec_<base64>', or a list of them while rotating; "
        'each is { env = "NAME" }, { file = "path" } or the value itself.',
    )
    headers: dict[HeaderName, HeaderValue] = Field(
        default_factory=dict,
        description="Extra request headers. webhook-*, content-type, content-length, "
        "transfer-encoding, host and connection are the sink's own.",
    )
    timeout: float = Field(
        15.0, gt=0, le=3600, description="Seconds for a whole delivery: connect, send, read."
    )
    connect_timeout: float = Field(
        5.0, gt=0, description="Seconds to open a connection (within timeout)."
    )
    max_response_bytes: int = Field(
        64 * 1024, ge=0, description="The most of a response body ever read."
    )
    concurrency: int = Field(16, ge=1, le=1024, description="Requests in flight at once.")
    allowed_networks: list[IPvAnyNetwork] = Field(
        default_factory=list,
        description="Non-public addresses the sink may connect to anyway, e.g. "
        '["10.20.0.0/16"]; ["0.0.0.0/0", "::/0"] turns the address check off.',
    )
    verify_tls: bool = Field(True, description="Verify the server's TLS certificate.")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: SecretStr) -> SecretStr:
        problem = url_problem(value.get_secret_value())
        if problem is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> WebhookOptions:
        """Options that make sense one by one but not together, all reported at once. A URL
        whose address the sink would refuse is refused now, not at every delivery, and
        reported at ``url``, as that field's own errors are."""
        found = []
        if self.connect_timeout > self.timeout:
            found.append(_error((), "connect_timeout cannot be longer than timeout"))
        problem = url_address_problem(self.url.get_secret_value(), self.allowed_networks)
        if problem is not None:
            found.append(_error(("url",), problem))
        if found:
            raise ValidationError.from_exception_data(type(self).__name__, found)
        return self


# -- the sink --------------------------------------------------------------------------------


class WebhookSink(Sink):
    """POSTs each event to one URL with Standard Webhooks signatures.

    ``transport`` replaces the network (and with it the address check), for tests.
    """

    Options: ClassVar[type[BaseModel]] = WebhookOptions

    def __init__(
        self, options: WebhookOptions, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        super().__init__()
        self.options = options
        self.concurrency = options.concurrency
        url = httpx.URL(options.url.get_secret_value())
        self._url = url.copy_with(username=None, password=None, fragment=None)
        self._shown_url = shown_url(url, secret=options.url_is_secret)
        self._keys = [secret_key(secret.get_secret_value()) for secret in options.secret]
        self._headers = {
            "user-agent": f"outbox-relay/{__version__}",
            "accept": "*/*",
            "accept-encoding": "identity",  # the body read is capped: no decompression bombs
            **_basic_auth(url),
            **options.headers,
            "content-type": "application/json",
        }
        self._taken = frozenset(name.lower() for name in self._headers)
        self._warned: set[str] = set()  # event header names already logged as left out
        # deliver_batch's workers take this sink's slots already; deliver called directly
        # (by a test or a caller of its own) takes them here.
        self._slots = asyncio.Semaphore(options.concurrency)
        self._transport = WebhookTransport(
            timeout=options.timeout,
            connect_timeout=options.connect_timeout,
            max_response_bytes=options.max_response_bytes,
            allowed_networks=[*options.allowed_networks],
            verify_tls=options.verify_tls,
            url_is_secret=options.url_is_secret,
            network=transport,
        )

    async def deliver(self, event: Event) -> None:
        """POST ``event``; return once the receiver answered 2xx."""
        try:
            body = envelope(event)
        except (TypeError, ValueError) as error:
            raise PermanentError(f"event {event.id} cannot be sent as JSON: {error}") from None
        async with self._slots:
            timestamp = int(time.time())
            headers = {
                **self._event_headers(event),
                **self._headers,
                "webhook-id": str(event.id),
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(self._keys, str(event.id), timestamp, body),
            }
            request = httpx.Request("POST", self._url, headers=headers, content=body)
            response = await self._transport.handle_async_request(request)
        status = response.status_code
        if classify_status(status) != "ok":
            answer = await response.aread()  # in memory already, at most max_response_bytes
            now = dt.datetime.now(dt.UTC)
            raise answer_error(status, response.headers, answer, self._shown_url, now)

    def _event_headers(self, event: Event) -> Mapping[str, str]:
        """The event's headers that travel; those left out are logged, once per name, since
        the same application code sends the same header with every event."""
        if not event.headers:
            return event.headers
        sent, skipped = event_headers(event.headers, self._taken)
        for name, reason in skipped:
            if name not in self._warned and len(self._warned) < _WARNED_NAMES:
                self._warned.add(name)
                logger.warning(
                    "%r: header %r of event %s not sent (%s); further events with it are "
                    "not logged",
                    self,
                    name,
                    event.id,
                    reason,
                )
        return sent

    async def check(self) -> None:
        """A HEAD request to the URL, through the same address checks as a delivery: any
        answer at all means the receiver is reachable (many answer HEAD with 405)."""
        request = httpx.Request("HEAD", self._url, headers=self._headers)
        response = await self._transport.handle_async_request(request)
        await response.aclose()

    async def aclose(self) -> None:
        await self._transport.aclose()

    def __repr__(self) -> str:
        return f"<WebhookSink {self._shown_url}>"


def _basic_auth(url: httpx.URL) -> dict[str, str]:
    """``https://user:password@host/`` means HTTP basic authentication, as browsers do."""
    if not url.username and not url.password:
        return {}
    credentials = f"{url.username}:{url.password}".encode()
    return {"authorization": "Basic " + base64.b64encode(credentials).decode()}


@hookimpl
def outbox_register_sinks(register: RegisterSink) -> None:
    register("webhook", WebhookSink)
