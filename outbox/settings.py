"""Configuration: defaults < TOML file < ``OUTBOX_*`` environment < command-line flags.

Nested keys in the environment use ``__`` (``OUTBOX_RELAY__BATCH_SIZE=500``). Secrets are
never required inline: write ``{ env = "NAME" }`` or ``{ file = "path" }`` instead. Every
key, with its default, is documented in ``config/outbox.toml``.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from outbox._identifiers import validate_identifier
from outbox.exceptions import ConfigError
from outbox.rate_limit import Rate, parse_rate
from outbox.retry import RetryPolicy
from outbox.routing import Subscription, validate_pattern
from outbox.secrets import Secret

DEFAULT_CONFIG_FILE = Path("config/outbox.toml")
SINK_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"
HOUR = 3600.0
DAY = 24 * HOUR


class RelaySettings(BaseModel):
    """``[relay]``: how relays claim, deliver, retry and clean up."""

    # Every number is finite and within a range documented beside its key in
    # config/outbox.toml: an infinite lease or a nanosecond poll breaks the relay, not the file.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    batch_size: int = Field(100, ge=1, le=10_000)
    concurrency: int = Field(1, ge=1, le=64)
    max_attempts: int = Field(10, ge=1, le=1000)
    lease_seconds: float = Field(180.0, ge=1, le=DAY)
    # Above a default webhook batch: ceil(batch_size / concurrency) rounds of its timeout,
    # 7 * 15 s (the rule in outbox/webhook_sink.py; a unit test checks it).
    delivery_timeout: float = Field(120.0, ge=0.1, le=DAY)
    poll_interval: float = Field(1.0, ge=0.01, le=HOUR)
    listen: bool = True
    channel: str = "outbox"
    backoff_base: float = Field(1.0, ge=0.001, le=HOUR)
    backoff_cap: float = Field(3600.0, ge=0.001, le=7 * DAY)
    backoff_jitter: float = Field(0.25, ge=0, lt=1)
    errors_kept: int = Field(10, ge=1, le=1000)
    retention_seconds: float = Field(7 * DAY, ge=0, le=10 * 365 * DAY)
    retention_batch: int = Field(1000, ge=1, le=100_000)
    maintenance_interval: float = Field(5.0, ge=0.05, le=HOUR)
    claim_mode: Literal["lease", "lock"] = "lease"
    give_up_after: float = Field(30.0, ge=0.1, le=86_400.0)  # --drain/--once only
    # After SIGTERM: seconds the batches in flight have to finish before they are handed
    # back; below Kubernetes' default 30 s grace period.
    shutdown_timeout: float = Field(20.0, ge=0, le=HOUR)

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: str) -> str:
        return validate_identifier(value, "channel")

    @model_validator(mode="after")
    def _consistent(self) -> RelaySettings:
        if self.delivery_timeout >= self.lease_seconds:
            raise ValueError("delivery_timeout must be shorter than lease_seconds")
        if self.backoff_cap < self.backoff_base:
            raise ValueError("backoff_cap must be at least backoff_base")
        return self

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.max_attempts,
            base_seconds=self.backoff_base,
            cap_seconds=self.backoff_cap,
            jitter=self.backoff_jitter,
            errors_kept=self.errors_kept,
        )


class SinkSettings(BaseModel):
    """``[sinks.NAME]``: ``type`` plus that type's options, validated by its plugin, and the
    relay's settings for this sink, whatever its type (None: the ``[relay]`` value)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    type: str
    max_attempts: int | None = Field(None, ge=1, le=1000)
    backoff_base: float | None = Field(None, ge=0.001, le=HOUR)
    backoff_cap: float | None = Field(None, ge=0.001, le=7 * DAY)
    batch_size: int | None = Field(None, ge=1, le=10_000)
    rate_limit: str | None = None  # "100/s", "6000/min", "10/h"; none: unlimited

    @field_validator("rate_limit")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        if value is not None:
            parse_rate(value)
        return value

    def options(self) -> dict[str, Any]:
        """The sink type's options: every key but ``type`` and the relay's settings."""
        return dict(self.model_extra or {})

    def retry_policy(self, relay: RelaySettings) -> RetryPolicy | None:
        """This sink's retry policy if it sets any of its own keys, else None."""
        if self.max_attempts is None and self.backoff_base is None and self.backoff_cap is None:
            return None
        return dataclasses.replace(
            relay.retry_policy(),
            max_attempts=self.max_attempts or relay.max_attempts,
            base_seconds=self.backoff_base or relay.backoff_base,
            cap_seconds=self.backoff_cap or relay.backoff_cap,
        )

    def rate(self) -> Rate | None:
        return None if self.rate_limit is None else parse_rate(self.rate_limit)


class DashboardSettings(BaseModel):
    """``[dashboard]``: the HTTP basic auth of ``outbox dashboard`` (both or neither), needed
    to listen on any address but loopback. ``OUTBOX_DASHBOARD_USER`` and
    ``OUTBOX_DASHBOARD_PASSWORD`` override them."""

    model_config = ConfigDict(extra="forbid")

    user: str | None = Field(None, min_length=1)
    password: Secret | None = None


class SubscriptionSettings(BaseModel):
    """``[[subscriptions]]``: topic patterns and the sinks that receive them."""

    model_config = ConfigDict(extra="forbid")

    topics: list[str] = Field(min_length=1)
    sinks: list[str] = Field(min_length=1)

    @field_validator("topics")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            validate_pattern(pattern)
        return value

    def subscription(self) -> Subscription:
        return Subscription(tuple(self.topics), tuple(self.sinks))


class Settings(BaseSettings):
    """Everything ``outbox`` reads from its configuration."""

    model_config = SettingsConfigDict(
        env_prefix="OUTBOX_",
        # The prefix also applies to aliased fields: ``schema`` is OUTBOX_SCHEMA, never a bare
        # SCHEMA that happens to be in the environment.
        env_prefix_target="all",
        env_nested_delimiter="__",
        extra="forbid",
        populate_by_name=True,
    )

    database_url: Secret | None = None
    db_schema: str = Field("public", alias="schema")
    relay: RelaySettings = Field(default_factory=RelaySettings)
    sinks: dict[str, SinkSettings] = Field(default_factory=dict)
    subscriptions: list[SubscriptionSettings] = Field(default_factory=list)
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings)

    @field_validator("db_schema")
    @classmethod
    def _schema(cls, value: str) -> str:
        return validate_identifier(value, "schema")

    @field_validator("sinks")
    @classmethod
    def _sink_names(
        cls, value: dict[str, SinkSettings], info: ValidationInfo
    ) -> dict[str, SinkSettings]:
        for name in value:
            if not re.fullmatch(SINK_NAME_PATTERN, name):
                raise ValueError(
                    f"invalid sink name {name!r}: lower-case letters, digits, '_' and '-', "
                    "starting with a letter"
                )
        relay = info.data.get("relay")
        for name, sink in value.items():
            policy = sink.retry_policy(relay) if relay is not None else None
            if policy is not None and policy.cap_seconds < policy.base_seconds:
                raise ValueError(
                    f"sink {name!r}: backoff_cap ({policy.cap_seconds:g}) must be at least "
                    f"backoff_base ({policy.base_seconds:g}; the relay's unless the sink sets it)"
                )
        return value

    @field_validator("subscriptions")
    @classmethod
    def _subscriptions_name_sinks(
        cls, value: list[SubscriptionSettings], info: ValidationInfo
    ) -> list[SubscriptionSettings]:
        # A field validator, not a model one: it runs, and reports, even when other keys
        # of the file have errors. ``sinks`` is declared first, so it is validated by now.
        sinks = info.data.get("sinks")
        if sinks is None:  # [sinks] is invalid: check_configuration() checks the names
            return value
        problems = _unknown_sinks([item.sinks for item in value], sinks)
        if problems:
            raise ValueError(problems[0])
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    def url(self) -> str | None:
        return self.database_url.get_secret_value() if self.database_url else None

    def subscription_list(self) -> list[Subscription]:
        return [item.subscription() for item in self.subscriptions]

    @classmethod
    def from_values(cls, **values: Any) -> Settings:
        """``values`` over the defaults, validated, reading neither the environment nor a
        file: for the demo, tests and benchmarks, which configure in code. Raises
        :class:`ConfigError` as :func:`load_settings` does."""
        try:
            return _SettingsInCode(**values)
        except ValidationError as error:
            raise ConfigError(_locate(error)) from None


class _SettingsInCode(Settings):
    """Settings whose only source is the arguments (:meth:`Settings.from_values`)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read the configuration; raise :class:`ConfigError` listing every problem.

    ``config_file`` defaults to ``config/outbox.toml`` when that file exists. ``overrides``
    (command-line flags) win over everything; ``None`` values are ignored.
    """
    path = find_config_file(config_file)
    if path is not None and not path.is_file():
        raise ConfigError([(str(path), "configuration file not found")])
    flags = {key: value for key, value in overrides.items() if value is not None}
    settings_class: type[Settings] = Settings
    if path is not None:

        class FileSettings(Settings):
            model_config = SettingsConfigDict(toml_file=path)

        settings_class = FileSettings
    try:
        return settings_class(**flags)
    except ValidationError as error:
        raise ConfigError(_locate(error)) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([(str(path), f"invalid TOML: {error}")]) from None
    except SettingsError as error:  # an OUTBOX_* variable that is not valid JSON
        raise ConfigError([("(environment)", str(error))]) from None


def find_config_file(config_file: Path | None = None) -> Path | None:
    """The file to read: ``config_file``, else ``config/outbox.toml`` (relative to the
    current directory) when it exists, else None."""
    return config_file or (DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.exists() else None)


def _unknown_sinks(subscribed: list[Any], sinks: Any) -> list[str]:
    """A message per sink name a subscription names that ``sinks`` does not configure."""
    configured = ", ".join(sorted(sinks)) or "none"
    return [
        f"subscriptions[{index}] names sink {name!r}, which is not configured "
        f"(configured: {configured})"
        for index, names in enumerate(subscribed)
        if isinstance(names, list)
        for name in names
        if name not in sinks
    ]


@dataclasses.dataclass(frozen=True)
class ConfigCheck:
    """What ``outbox config check`` learns from the configuration in one pass: every error
    the settings have, and each sink as far as it can be read, for its plugin to validate
    even when other keys are wrong, so that one run shows every problem."""

    path: Path | None
    """The file read; None when there is none."""
    settings: Settings | None
    """None when the configuration has errors."""
    errors: list[tuple[str, str]]
    sinks: dict[str, SinkSettings]
    raw: dict[str, Any]
    """The file's TOML as written (empty without a readable file)."""


def check_configuration(config_file: Path | None = None) -> ConfigCheck:
    """Read the configuration and gather every problem rather than the first round."""
    path = find_config_file(config_file)
    raw = _read_toml(path)
    try:
        settings = load_settings(path)
    except ConfigError as error:
        errors = list(error.errors)
    else:
        return ConfigCheck(path, settings, [], dict(settings.sinks), raw)
    sinks = _readable_sinks(raw.get("sinks"))
    if not any(where == "subscriptions" for where, _ in errors):
        # An error in [sinks] or in a subscription stops the settings' own check of the
        # sink names that subscriptions give: check them here.
        errors += [("subscriptions", message) for message in _unknown_sinks_in(raw)]
    return ConfigCheck(path, None, errors, sinks, raw)


def _unknown_sinks_in(raw: dict[str, Any]) -> list[str]:
    tables, subscriptions = raw.get("sinks"), raw.get("subscriptions")
    if not isinstance(subscriptions, list):
        return []
    subscribed = [item.get("sinks") for item in subscriptions if isinstance(item, dict)]
    return _unknown_sinks(subscribed, tables if isinstance(tables, dict) else {})


def _read_toml(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):  # load_settings says why
        return {}


def _readable_sinks(tables: Any) -> dict[str, SinkSettings]:
    """Each ``[sinks.NAME]`` with a ``type``, its options unvalidated: the plugin of that
    type validates them even when the relay's keys of the sink are wrong."""
    if not isinstance(tables, dict):
        return {}
    relay_keys = SinkSettings.model_fields.keys()
    return {
        name: SinkSettings.model_construct(
            type=table["type"], **{k: v for k, v in table.items() if k not in relay_keys}
        )
        for name, table in tables.items()
        if isinstance(table, dict) and isinstance(table.get("type"), str)
    }


def line_of(text: str, table: tuple[str, ...], key: str) -> int | None:
    """The line (from 1) of TOML ``text`` that sets ``key`` in ``[table]`` (``()``: the top
    level); None when it is not written that plainly."""
    current: tuple[str, ...] | None = ()
    assignment = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
    for number, line in enumerate(text.splitlines(), start=1):
        header = _TABLE_HEADER.match(line)
        if header is not None:
            current = None if header[1] else _table_path(header[2])
        elif current == table and assignment.match(line):
            return number
    return None


_TABLE_HEADER = re.compile(r"^\s*\[(\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")


def _table_path(header: str) -> tuple[str, ...]:
    return tuple(part.strip().strip("\"'") for part in header.split("."))


def _locate(error: ValidationError) -> list[tuple[str, str]]:
    found = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        found.append((where.replace("db_schema", "schema"), message))
    return found
