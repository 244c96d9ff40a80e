"""Every sink configuration that "Outgrowing one database" shows is valid for its plugin."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from outbox import plugins
from outbox.end_to_end import require_module

PAGE = Path(__file__).resolve().parents[2] / "docs" / "brokers.md"
BLOCKS = re.findall(r"```toml\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.DOTALL)
# What the examples' { env = ... } references stand for here.
ENVIRONMENT = {
    "KAFKA_PASSWORD": "s3cret",
    "NATS_TOKEN": "s3cret",
    "RABBITMQ_URL": "amqp://outbox:s3cret@rabbit:5672/events",
    "REDIS_URL": "redis://:s3cret@redis:6379/0",
}


def _sinks() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for block in BLOCKS:
        for name, table in tomllib.loads(block).get("sinks", {}).items():
            found.append((name, table))
    return found


def test_the_page_shows_a_sink_of_each_engine() -> None:
    assert sorted(table["type"] for _, table in _sinks()) == ["kafka", "nats", "rabbitmq", "redis"]


@pytest.mark.parametrize(("name", "table"), _sinks(), ids=[name for name, _ in _sinks()])
def test_each_example_is_valid_for_its_plugin(
    name: str, table: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    sink_type = table["type"]
    require_module(f"outbox_{sink_type}", hint=f"pip install -e plugins/outbox-{sink_type}")
    for variable, value in ENVIRONMENT.items():
        monkeypatch.setenv(variable, value)
    options = {key: value for key, value in table.items() if key != "type"}
    sink_class = plugins.sink_types(plugins.make_plugin_manager())[sink_type]
    sink_class.Options.model_validate(options)
