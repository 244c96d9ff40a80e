"""config/outbox.toml documents every setting with its default.

The file is all comments: ``# key = value`` lines under each table header. These tests read
those lines back and compare them with the models, so a setting added without documenting it
(or a default changed in one place only) fails here.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from outbox.callable_sink import CallableOptions
from outbox.postgres_sink import PostgresOptions
from outbox.settings import RelaySettings, Settings, load_settings

CONFIG_FILE = Path(__file__).resolve().parents[2] / "config" / "outbox.toml"

_HEADER = re.compile(r"^(?:# )?(\[\[?[a-z_.-]+\]\]?)\s*(?:#.*)?$")
_SETTING = re.compile(r"^# ([a-z_]+) = (.+)$")


def documented() -> dict[str, dict[str, str]]:
    """Table name ("" for the top level) -> documented key -> its value as written."""
    tables: dict[str, dict[str, str]] = {"": {}}
    table = ""
    for line in CONFIG_FILE.read_text(encoding="utf-8").splitlines():
        if header := _HEADER.match(line):
            table = header.group(1).strip("[]")
            tables.setdefault(table, {})
        elif setting := _SETTING.match(line):
            key, value = setting.groups()
            assert key not in tables[table], f"{key} documented twice in [{table}]"
            tables[table][key] = value
    return tables


def toml_value(written: str) -> Any:
    return tomllib.loads(f"value = {written}")["value"]


def key_of(name: str, field: FieldInfo) -> str:
    return field.alias or name


def scalar_fields(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """Keys written ``key = value``; the tables ([relay], [sinks.*], [[subscriptions]]) are
    the fields built by a default factory."""
    return {
        key_of(name, field): field
        for name, field in model.model_fields.items()
        if field.default_factory is None
    }


def test_the_parser_sees_the_tables() -> None:
    tables = documented()
    assert {"", "relay", "sinks.cache", "sinks.audit", "subscriptions"} <= set(tables)
    assert "batch_size" in tables["relay"]
    assert "batch_size" not in tables[""]


@pytest.mark.parametrize("name", list(RelaySettings.model_fields))
def test_every_relay_setting_is_documented_with_its_default(name: str) -> None:
    relay = documented()["relay"]
    assert name in relay, f"[relay] {name} is not documented in config/outbox.toml"
    default = RelaySettings.model_fields[name].default
    assert toml_value(relay[name]) == default, f"[relay] {name}: the file says {relay[name]}"


def test_nothing_documented_in_relay_that_does_not_exist() -> None:
    assert set(documented()["relay"]) <= set(RelaySettings.model_fields)


@pytest.mark.parametrize("key", list(scalar_fields(Settings)))
def test_every_top_level_setting_is_documented(key: str) -> None:
    top = documented()[""]
    assert key in top, f"{key} is not documented in config/outbox.toml"
    default = scalar_fields(Settings)[key].default
    if default is not None:  # None has no TOML spelling: the line is an example
        assert toml_value(top[key]) == default


def test_every_table_of_settings_is_documented() -> None:
    tables = documented()
    tables_in_model = {
        key_of(name, field)
        for name, field in Settings.model_fields.items()
        if key_of(name, field) not in scalar_fields(Settings)
    }
    assert tables_in_model == {"relay", "sinks", "subscriptions", "dashboard"}
    assert "relay" in tables
    assert any(table.startswith("sinks.") for table in tables)
    assert "subscriptions" in tables
    assert "dashboard" in tables


def test_nothing_documented_at_the_top_level_that_does_not_exist() -> None:
    assert set(documented()[""]) <= set(scalar_fields(Settings))


@pytest.mark.parametrize(
    ("sink_type", "options"), [("callable", CallableOptions), ("postgres", PostgresOptions)]
)
def test_built_in_sink_examples_show_every_option(sink_type: str, options: type[BaseModel]) -> None:
    examples = [
        keys
        for table, keys in documented().items()
        if table.startswith("sinks.") and toml_value(keys.get("type", '""')) == sink_type
    ]
    assert examples, f"no [sinks.NAME] example of type {sink_type!r}"
    documented_keys = set(examples[0]) - {"type"}
    assert documented_keys == {key_of(n, f) for n, f in options.model_fields.items()}


def test_the_file_loads_cleanly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(CONFIG_FILE)
    assert settings.relay == RelaySettings()
    assert settings.sinks == {}


def test_the_file_uncommented_loads_with_the_same_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every commented line is valid: uncommented, the file loads, and its defaults are the
    model's."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", "postgresql://localhost/app")
    monkeypatch.setenv("OUTBOX_DASHBOARD_SECRET", "s3cret")
    lines = CONFIG_FILE.read_text(encoding="utf-8").splitlines()
    code = [
        line.removeprefix("# ")
        for line in lines
        if _HEADER.match(line) or _SETTING.match(line) or line.startswith("[")
    ]
    uncommented = tmp_path / "outbox.toml"
    uncommented.write_text("\n".join(code) + "\n", encoding="utf-8")
    settings = load_settings(uncommented)
    assert settings.relay == RelaySettings()
    assert settings.db_schema == "public"
    assert settings.url() == "postgresql://localhost/app"
    assert set(settings.sinks) == {"cache", "audit", "billing"}
    assert [s.sinks for s in settings.subscriptions] == [["billing", "audit"]]
    assert settings.dashboard.user == "ops"
    assert settings.dashboard.password is not None
    assert settings.dashboard.password.get_secret_value() == "s3cret"
