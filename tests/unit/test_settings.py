"""Settings: precedence, secrets, and errors that say where they are.

Every test runs in an empty directory (so the repository's ``config/outbox.toml`` is not
read) with no ``OUTBOX_*`` variable in the environment.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest

from outbox.runtime import build_relay
from outbox.settings import ConfigError, RelaySettings, Settings, load_settings

SECRET_URL = "postgresql://app:hunter2-secret@db.example.com/app"


@pytest.fixture(autouse=True)
def clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.upper().startswith("OUTBOX_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "outbox.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def errors_of(path: Path | None = None, **flags: Any) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, **flags)
    return caught.value.errors


def only_error(path: Path | None = None, **flags: Any) -> tuple[str, str]:
    errors = errors_of(path, **flags)
    assert len(errors) == 1, errors
    return errors[0]


# -- precedence: defaults < file < environment < flags -----------------------------------------


def test_defaults_without_a_file() -> None:
    settings = load_settings()
    assert settings.relay.batch_size == 100
    assert settings.db_schema == "public"
    assert settings.url() is None
    assert settings.sinks == {}
    assert settings.subscriptions == []


def test_file_beats_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "[relay]\nbatch_size = 5\nconcurrency = 3\n")
    settings = load_settings(path)
    assert (settings.relay.batch_size, settings.relay.concurrency) == (5, 3)
    assert settings.relay.max_attempts == 10  # untouched keys keep their defaults


def test_environment_beats_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[relay]\nbatch_size = 5\nconcurrency = 3\n")
    monkeypatch.setenv("OUTBOX_RELAY__BATCH_SIZE", "7")
    settings = load_settings(path)
    assert settings.relay.batch_size == 7
    assert settings.relay.concurrency == 3  # the rest of [relay] still comes from the file


def test_flags_beat_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, 'database_url = "postgresql://file/db"\n[relay]\nbatch_size = 5\n')
    monkeypatch.setenv("OUTBOX_RELAY__BATCH_SIZE", "7")
    monkeypatch.setenv("OUTBOX_DATABASE_URL", "postgresql://env/db")
    settings = load_settings(path, database_url="postgresql://flag/db", relay={"batch_size": 9})
    assert settings.url() == "postgresql://flag/db"
    assert settings.relay.batch_size == 9


def test_a_flag_left_out_does_not_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTBOX_DATABASE_URL", "postgresql://env/db")
    assert load_settings(None, database_url=None).url() == "postgresql://env/db"


def test_default_file_is_config_outbox_toml(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    write(tmp_path, "[relay]\nbatch_size = 11\n", "config/outbox.toml")
    assert load_settings().relay.batch_size == 11


def test_schema_from_the_prefixed_environment_variable_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SCHEMA", "not_ours")  # someone else's variable
    assert load_settings().db_schema == "public"
    monkeypatch.setenv("OUTBOX_SCHEMA", "events")
    assert load_settings().db_schema == "events"


def test_sinks_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTBOX_SINKS__AUDIT__TYPE", "postgres")
    monkeypatch.setenv("OUTBOX_SINKS__AUDIT__TABLE", "events")
    settings = load_settings()
    assert settings.sinks["audit"].type == "postgres"
    assert settings.sinks["audit"].options() == {"table": "events"}


# -- secrets -----------------------------------------------------------------------------------


def test_secret_from_an_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APP_DATABASE_URL", SECRET_URL)
    settings = load_settings(write(tmp_path, 'database_url = { env = "APP_DATABASE_URL" }\n'))
    assert settings.url() == SECRET_URL
    assert settings.database_url is not None
    assert settings.database_url.get_secret_value() == SECRET_URL
    assert_hidden(settings)


def test_secret_from_a_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "db-url"
    secret_file.write_text(SECRET_URL + "\n", encoding="utf-8")  # the newline is stripped
    settings = load_settings(write(tmp_path, f'database_url = {{ file = "{secret_file}" }}\n'))
    assert settings.url() == SECRET_URL
    assert_hidden(settings)


def test_plain_url_is_hidden_too(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, f'database_url = "{SECRET_URL}"\n'))
    assert settings.url() == SECRET_URL
    assert_hidden(settings)


def assert_hidden(settings: Settings) -> None:
    for text in (repr(settings), str(settings), repr(settings.database_url)):
        assert "hunter2" not in text
    assert "hunter2" not in settings.model_dump_json()


def test_missing_environment_variable(tmp_path: Path) -> None:
    where, message = only_error(write(tmp_path, 'database_url = { env = "OUTBOX_TEST_NOPE" }\n'))
    assert where == "database_url"
    assert "OUTBOX_TEST_NOPE" in message
    assert "not set" in message


def test_unreadable_secret_file(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-secret"
    where, message = only_error(write(tmp_path, f'database_url = {{ file = "{missing}" }}\n'))
    assert where == "database_url"
    assert str(missing) in message


def test_secret_reference_with_other_keys_is_not_a_secret(tmp_path: Path) -> None:
    where, _ = only_error(write(tmp_path, 'database_url = { env = "X", file = "y" }\n'))
    assert where == "database_url"


# -- unknown keys --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "location"),
    [
        ("batch_size = 5\n", "batch_size"),  # a [relay] key at the top level
        ("[relay]\nbatch_sise = 5\n", "relay.batch_sise"),
        (
            '[sinks.a]\ntype = "callable"\n[[subscriptions]]\ntopics = ["a"]\nsinks = ["a"]\n'
            'topic = "b"\n',
            "subscriptions.0.topic",
        ),
        ("[databse]\nurl = 1\n", "databse"),
    ],
)
def test_unknown_keys(tmp_path: Path, text: str, location: str) -> None:
    assert only_error(write(tmp_path, text)) == (location, "unknown key")


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, 'colour = "red"\n[relay]\nbatch_size = 0\nshape = 1\n')
    found = dict(errors_of(path))
    assert found["colour"] == "unknown key"
    assert found["relay.shape"] == "unknown key"
    assert "relay.batch_size" in found


# -- values ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("schema", ["bad-schema", "1abc", "a;drop", "x" * 64, ""])
def test_invalid_schema(tmp_path: Path, schema: str) -> None:
    where, message = only_error(write(tmp_path, f'schema = "{schema}"\n'))
    assert where == "schema"
    assert "invalid schema" in message


@pytest.mark.parametrize("channel", ["bad channel", "9lives", 'a"b'])
def test_invalid_channel(tmp_path: Path, channel: str) -> None:
    path = write(tmp_path, f"[relay]\nchannel = '{channel}'\n")
    where, message = only_error(path)
    assert where == "relay.channel"
    assert "invalid channel" in message


def test_valid_identifiers_pass(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, 'schema = "Events_2"\n[relay]\nchannel = "_c"\n'))
    assert (settings.db_schema, settings.relay.channel) == ("Events_2", "_c")


def test_delivery_timeout_shorter_than_lease(tmp_path: Path) -> None:
    path = write(tmp_path, "[relay]\nlease_seconds = 10\ndelivery_timeout = 10\n")
    where, message = only_error(path)
    assert where == "relay"
    assert "delivery_timeout" in message


def test_claim_mode_lock_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().relay.claim_mode == "lease"
    path = write(tmp_path, '[relay]\nclaim_mode = "lock"\n')
    assert load_settings(path).relay.claim_mode == "lock"
    monkeypatch.setenv("OUTBOX_RELAY__CLAIM_MODE", "lease")
    assert load_settings(path).relay.claim_mode == "lease"


def test_an_unknown_claim_mode_names_the_key(tmp_path: Path) -> None:
    where, message = only_error(write(tmp_path, '[relay]\nclaim_mode = "locked"\n'))
    assert where == "relay.claim_mode"
    assert "'lease'" in message
    assert "'lock'" in message


def test_the_relay_gets_the_claim_mode(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'database_url = "postgresql://app@localhost/app"\n[relay]\nclaim_mode = "lock"\n'
        '[sinks.a]\ntype = "callable"\ntarget = "os:getcwd"\n'
        '[[subscriptions]]\ntopics = ["#"]\nsinks = ["a"]\n',
    )
    assert build_relay(load_settings(path)).options.claim_mode == "lock"


SUBSCRIBED = '[sinks.a]\ntype = "callable"\n'


@pytest.mark.parametrize("pattern", ["order..paid", "order.pa*d", "", "order.", "a b"])
def test_invalid_topic_patterns(tmp_path: Path, pattern: str) -> None:
    path = write(
        tmp_path, SUBSCRIBED + f'[[subscriptions]]\ntopics = ["{pattern}"]\nsinks = ["a"]\n'
    )
    where, _ = only_error(path)
    assert where == "subscriptions.0.topics"


def test_topic_pattern_error_points_at_its_subscription(tmp_path: Path) -> None:
    text = SUBSCRIBED + (
        '[[subscriptions]]\ntopics = ["order.*"]\nsinks = ["a"]\n'
        '[[subscriptions]]\ntopics = ["ok", "bad..one"]\nsinks = ["a"]\n'
    )
    where, message = only_error(write(tmp_path, text))
    assert where == "subscriptions.1.topics"
    assert "bad..one" in message


def test_valid_patterns_become_subscriptions(tmp_path: Path) -> None:
    text = SUBSCRIBED + '[[subscriptions]]\ntopics = ["order.*", "payment.#", "#"]\nsinks = ["a"]\n'
    (subscription,) = load_settings(write(tmp_path, text)).subscription_list()
    assert subscription.topics == ("order.*", "payment.#", "#")
    assert subscription.sinks == ("a",)


def test_subscription_naming_a_missing_sink(tmp_path: Path) -> None:
    text = SUBSCRIBED + '[[subscriptions]]\ntopics = ["#"]\nsinks = ["a", "ghost"]\n'
    _, message = only_error(write(tmp_path, text))
    assert "'ghost'" in message
    assert "subscriptions[0]" in message
    assert "configured: a" in message


def test_subscription_needs_topics_and_sinks(tmp_path: Path) -> None:
    text = SUBSCRIBED + "[[subscriptions]]\ntopics = []\nsinks = []\n"
    locations = {where for where, _ in errors_of(write(tmp_path, text))}
    assert locations == {"subscriptions.0.topics", "subscriptions.0.sinks"}


@pytest.mark.parametrize("name", ["Audit", "1audit", "au dit", "a.b", "x" * 64])
def test_invalid_sink_names(tmp_path: Path, name: str) -> None:
    where, message = only_error(write(tmp_path, f'[sinks."{name}"]\ntype = "callable"\n'))
    assert where == "sinks"
    assert repr(name) in message


@pytest.mark.parametrize("name", ["audit", "audit-log", "audit_2", "a"])
def test_valid_sink_names(tmp_path: Path, name: str) -> None:
    settings = load_settings(write(tmp_path, f'[sinks."{name}"]\ntype = "callable"\nx = 1\n'))
    assert settings.sinks[name].type == "callable"
    assert settings.sinks[name].options() == {"x": 1}


def test_sink_needs_a_type(tmp_path: Path) -> None:
    assert only_error(write(tmp_path, '[sinks.a]\ntarget = "m:f"\n')) == (
        "sinks.a.type",
        "Field required",
    )


# -- the file itself ----------------------------------------------------------------------------


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[relay]\nbatch_size = = 5\n")
    where, message = only_error(path)
    assert where == str(path)
    assert "line 2" in message


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert only_error(missing) == (str(missing), "configuration file not found")


def test_malformed_environment_value_is_not_blamed_on_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "")
    monkeypatch.setenv("OUTBOX_RELAY", "not json")
    where, message = only_error(path)
    assert where == "(environment)"
    assert "relay" in message


def test_config_error_text_lists_every_location(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, "a = 1\nb = 2\n"))
    assert str(caught.value).splitlines() == ["a: unknown key", "b: unknown key"]


def test_a_missing_sink_is_reported_beside_other_errors(tmp_path: Path) -> None:
    text = (
        "[relay]\nbogus = 1\n"
        + SUBSCRIBED
        + '[[subscriptions]]\ntopics = ["#"]\nsinks = ["ghost"]\n'
    )
    found = dict(errors_of(write(tmp_path, text)))
    assert found["relay.bogus"] == "unknown key"
    assert "'ghost'" in found["subscriptions"]


# -- every numeric setting has a finite, documented range ----------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("lease_seconds", "inf"),
        ("lease_seconds", "nan"),
        ("lease_seconds", "0.5"),
        ("lease_seconds", "86401"),
        ("delivery_timeout", "0.01"),
        ("delivery_timeout", "inf"),
        ("poll_interval", "1e-9"),
        ("poll_interval", "3601"),
        ("poll_interval", "inf"),
        ("backoff_base", "1e15"),
        ("backoff_base", "0.0001"),
        ("backoff_cap", "604801"),
        ("backoff_cap", "inf"),
        ("backoff_jitter", "nan"),
        ("retention_seconds", "1e12"),
        ("retention_seconds", "-1"),
        ("retention_seconds", "inf"),
        ("retention_batch", "1_000_000"),
        ("maintenance_interval", "0.001"),
        ("maintenance_interval", "3601"),
        ("maintenance_interval", "inf"),
    ],
)
def test_out_of_range_values_name_their_key(tmp_path: Path, key: str, value: str) -> None:
    errors = errors_of(write(tmp_path, f"[relay]\n{key} = {value}\n"))
    assert f"relay.{key}" in [where for where, _ in errors], errors


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("lease_seconds", 1.0),
        ("lease_seconds", 86400.0),
        ("poll_interval", 0.01),
        ("poll_interval", 3600.0),
        ("backoff_base", 0.001),
        ("backoff_cap", 7 * 24 * 3600.0),
        ("retention_seconds", 0.0),
        ("retention_seconds", 10 * 365 * 24 * 3600.0),
        ("maintenance_interval", 0.05),
        ("maintenance_interval", 3600.0),
    ],
)
def test_the_ends_of_each_range_are_accepted(tmp_path: Path, key: str, value: float) -> None:
    extra = "delivery_timeout = 0.5\n" if key == "lease_seconds" and value == 1.0 else ""
    settings = load_settings(write(tmp_path, f"[relay]\n{key} = {value!r}\n{extra}"))
    assert getattr(settings.relay, key) == value


def test_lease_seconds_inf_from_the_environment_names_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OUTBOX_RELAY__LEASE_SECONDS", "inf")
    assert "relay.lease_seconds" in [where for where, _ in errors_of()]


# -- the default delivery_timeout fits the default batch of webhook requests ----------------------


def test_default_delivery_timeout_allows_a_default_webhook_batch() -> None:
    """The webhook sink's rule (its module docstring): at most ``concurrency`` requests are
    in flight, each up to ``timeout``, so a whole batch needs ``delivery_timeout`` of about
    ``batch_size / concurrency * timeout``; counted here in whole rounds of requests."""
    from outbox import webhook_sink
    from outbox.webhook_sink import WebhookOptions

    assert "batch_size / concurrency * timeout" in " ".join((webhook_sink.__doc__ or "").split())
    relay = RelaySettings()
    webhook = WebhookOptions.model_fields
    rounds = math.ceil(relay.batch_size / webhook["concurrency"].default)
    assert relay.delivery_timeout > rounds * webhook["timeout"].default
    assert relay.delivery_timeout < relay.lease_seconds
