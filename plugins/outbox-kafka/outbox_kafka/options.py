"""The ``kafka`` sink's options, and the librdkafka configuration they make.

Secrets never sit in ``options``: a password written there would be in plain text in the
configuration file and in ``repr(options)``. Each secret librdkafka key has a top-level
:data:`~outbox.secrets.Secret` option instead, written ``{ env = "NAME" }``. Nor may
``options`` weaken the guarantee: the producer is always idempotent with ``acks=all``.
"""

from __future__ import annotations

import re
import string
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from outbox.messages import Template
from outbox.secrets import Secret

__all__ = ["GUARANTEE", "KafkaOptions"]

GUARANTEE: dict[str, str | int | float | bool] = {"enable.idempotence": True, "acks": "all"}
"""What every producer of this sink is configured with, whatever ``options`` say."""

DEFAULT_DELIVERY_TIMEOUT = 120.0
"""librdkafka's delivery timeout when the relay gives no deadline: the relay's default."""

# librdkafka keys holding a secret -> the top-level option that takes it instead.
_SECRET_KEYS = {
    "sasl.password": "sasl_password",
    "ssl.key.password": "ssl_key_password",
    "ssl.keystore.password": "ssl_keystore_password",
    "ssl.key.pem": "ssl_key_pem",
    "sasl.oauthbearer.client.secret": "sasl_oauthbearer_client_secret",
}
# librdkafka keys the top-level options set -> that option.
_TOP_LEVEL_KEYS = {
    "bootstrap.servers": "bootstrap_servers",
    "metadata.broker.list": "bootstrap_servers",
    "security.protocol": "security_protocol",
    "sasl.mechanism": "sasl_mechanism",
    "sasl.mechanisms": "sasl_mechanism",
    "sasl.username": "sasl_username",
}
_ACKS_KEYS = ("acks", "request.required.acks")
_SECRET_HINTS = ("password", "secret", "sasl.oauthbearer.config")

_TOPIC_TEXT = re.compile(r"[A-Za-z0-9._-]*")

OptionValue = str | int | float | bool


class KafkaOptions(BaseModel):
    """Where and how the sink produces; see the plugin's README for each option."""

    # An error never shows what was written: it may be a secret in the wrong place.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    bootstrap_servers: str = Field(
        description="Brokers to bootstrap from, 'host:port[,host:port...]'.", min_length=1
    )
    topic: Template = Field(
        "{topic}",
        description="The Kafka topic of each event; may use {topic} and {key}.",
    )
    options: dict[str, OptionValue] = Field(
        default_factory=dict,
        description="More librdkafka producer settings (compression.type, linger.ms...); "
        "no secrets here, and nothing that weakens idempotence or acks=all.",
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] | None = Field(
        None, description="librdkafka's security.protocol (default PLAINTEXT)."
    )
    sasl_mechanism: (
        Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"] | None
    ) = Field(None, description="librdkafka's sasl.mechanism.")
    sasl_username: str | None = Field(None, description="librdkafka's sasl.username.")
    sasl_password: Secret | None = Field(None, description="sasl.password: { env = ... }.")
    ssl_key_password: Secret | None = Field(None, description="ssl.key.password.")
    ssl_keystore_password: Secret | None = Field(None, description="ssl.keystore.password.")
    ssl_key_pem: Secret | None = Field(None, description="ssl.key.pem, a private key in PEM.")
    sasl_oauthbearer_client_secret: Secret | None = Field(
        None, description="sasl.oauthbearer.client.secret."
    )

    @field_validator("topic")
    @classmethod
    def _topic_characters(cls, template: str) -> str:
        """A template whose own text has a character Kafka refuses names no valid topic."""
        text = "".join(literal for literal, *_ in string.Formatter().parse(template))
        if not _TOPIC_TEXT.fullmatch(text):
            raise ValueError(
                f"{template!r}: a Kafka topic name has letters, digits, '.', '_' and '-' only"
            )
        return template

    @field_validator("options")
    @classmethod
    def _no_secrets_nor_weakening(cls, options: dict[str, OptionValue]) -> dict[str, OptionValue]:
        for key, value in options.items():
            _check_option(key, value)
        return options

    def client_config(self, delivery_timeout: float | None) -> dict[str, OptionValue]:
        """The librdkafka producer configuration. Unless ``options`` set one, the delivery
        timeout is ``delivery_timeout`` (the sink's deadline) so that a message librdkafka
        still holds does not outlive the batch that sent it by much."""
        timeout = DEFAULT_DELIVERY_TIMEOUT if delivery_timeout is None else delivery_timeout
        config: dict[str, OptionValue] = {
            "bootstrap.servers": self.bootstrap_servers,
            "delivery.timeout.ms": max(1, round(timeout * 1000)),
        }
        if "message.timeout.ms" in self.options:
            del config["delivery.timeout.ms"]  # the same setting by its other name
        config.update(self.options)
        config.update(GUARANTEE)
        plain = {
            "security.protocol": self.security_protocol,
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
        }
        config.update({key: value for key, value in plain.items() if value is not None})
        for key, name in _SECRET_KEYS.items():
            secret: SecretStr | None = getattr(self, name)
            if secret is not None:
                config[key] = secret.get_secret_value()
        return config


def _check_option(key: str, value: OptionValue) -> None:
    """ValueError, saying what to write instead, for an ``options`` entry that holds a
    secret, duplicates a top-level option, or weakens the delivery guarantee."""
    if key in _SECRET_KEYS:
        raise ValueError(
            f"{key!r} holds a secret: leave it out of options and set the top-level option "
            f'{_SECRET_KEYS[key]} = {{ env = "NAME" }} instead'
        )
    if any(hint in key for hint in _SECRET_HINTS):
        raise ValueError(f"{key!r} may hold a secret, which options may not hold")
    if key in _TOP_LEVEL_KEYS:
        raise ValueError(f"set {key!r} with the top-level option {_TOP_LEVEL_KEYS[key]}")
    if key == "enable.idempotence" and str(value).lower() not in ("true", "1"):
        raise ValueError(
            "enable.idempotence must stay true: the sink relies on the idempotent producer"
        )
    if key in _ACKS_KEYS and str(value).lower() not in ("all", "-1"):
        raise ValueError(f"{key} must stay 'all': an event is settled once every replica has it")
    if key == "transactional.id":
        raise ValueError("transactional.id is not supported: the sink is an idempotent producer")
