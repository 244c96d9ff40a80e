"""The ``outbox`` command as an operator runs it: ``config check``, ``plugins``, ``sinks
enable/disable``, and a relay delivering through the example plugin installed with pip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

import outbox
from outbox.cli import main

TIMEOUT = 30.0

GOOD = """
[relay]
batch_size = 50

[sinks.trail]
type = "jsonl"
path = "events.jsonl"

[sinks.cache]
type = "callable"
target = "os:getcwd"

[[subscriptions]]
topics = ["order.*"]
sinks = ["trail", "cache"]
"""


def run(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``outbox ARGS`` in ``tmp_path``, with no OUTBOX_* variable from the test's environment."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("OUTBOX_")}
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "outbox.cli", *args],
        cwd=tmp_path,
        env=clean,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def invoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> Result:
    """``outbox ARGS`` in this process (cheaper than a subprocess; same code path)."""
    monkeypatch.chdir(tmp_path)
    for name in [name for name in os.environ if name.startswith("OUTBOX_")]:
        monkeypatch.delenv(name)
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def write(tmp_path: Path, text: str, name: str = "outbox.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def fetch(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params).fetchall()


def publish(url: str, *topics: str) -> list[int]:
    with psycopg.connect(url) as conn:
        events = [outbox.publish(conn, topic, {"topic": topic}) for topic in topics]
    return [event.id for event in events if event.id is not None]


# -- config check -------------------------------------------------------------------------------


def test_config_check_accepts_a_good_file(tmp_path: Path) -> None:
    write(tmp_path, GOOD)
    result = run(tmp_path, "config", "check", "--config", "outbox.toml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok: 2 sink(s), 1 subscription(s)"
    assert result.stderr == ""


def test_config_check_lists_each_error_on_its_own_line(tmp_path: Path) -> None:
    write(
        tmp_path,
        """
        colour = "red"
        schema = "not-valid"

        [relay]
        batch_sise = 5

        [sinks.cache]
        type = "callable"

        [[subscriptions]]
        topics = ["order..x"]
        sinks = ["cache"]
        """,
    )
    result = run(tmp_path, "config", "check", "--config", "outbox.toml")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[-1] == "5 error(s)"
    located = dict(line.split(": ", 1) for line in lines[:-1])
    assert located.keys() == {
        "colour",
        "schema",
        "relay.batch_sise",
        "subscriptions.0.topics",
        "sinks.cache.target",  # the sink's plugin checks it in the same run
    }
    assert located["colour"] == "unknown key"
    assert located["relay.batch_sise"] == "unknown key"
    assert "invalid schema 'not-valid'" in located["schema"]
    assert "'order..x'" in located["subscriptions.0.topics"]
    assert result.stdout == ""


def test_config_check_without_a_file_says_so_and_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = invoke(tmp_path, monkeypatch, "config", "check")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("no configuration file: looked for ")


def test_config_check_reads_config_outbox_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config").mkdir()
    write(tmp_path, GOOD, "config/outbox.toml")
    result = invoke(tmp_path, monkeypatch, "config", "check")
    assert result.exit_code == 0, result.stderr
    assert "2 sink(s)" in result.stdout


def test_config_check_resolves_sink_types_through_the_plugins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(
        tmp_path,
        """
        [sinks.trail]
        type = "jsonl"
        path = "events.jsonl"
        colour = "red"

        [sinks.cache]
        type = "callable"
        target = "outbox_no_such_module:handle"

        [sinks.stream]
        type = "carrier-pigeon"
        """,
    )
    result = invoke(tmp_path, monkeypatch, "config", "check", "--config", "outbox.toml")
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines[-1] == "4 error(s)"  # and no subscription
    assert "sinks.trail.colour: unknown key" in lines
    assert any(line.startswith("sinks.cache.target: cannot import module") for line in lines)
    assert any(
        line.startswith("sinks.stream.type: unknown sink type 'carrier-pigeon'") and "jsonl" in line
        for line in lines
    )


def test_config_check_names_a_toml_syntax_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "[relay\nbatch_size = 1\n")
    result = invoke(tmp_path, monkeypatch, "config", "check", "--config", "outbox.toml")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0].startswith("outbox.toml: invalid TOML")


def test_config_check_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = invoke(tmp_path, monkeypatch, "config", "check", "--config", "nowhere.toml")
    assert result.exit_code == 2
    assert "nowhere.toml: configuration file not found" in result.stderr


# -- plugins ---------------------------------------------------------------------------------------


def test_plugins_lists_the_installed_example_plugin(tmp_path: Path) -> None:
    result = run(tmp_path, "plugins")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "jsonl  (outbox-jsonl 0.1.0)  sink types: jsonl" in lines
    assert any(line.endswith("sink types: callable") for line in lines)
    assert any(line.endswith("sink types: postgres") for line in lines)


def test_plugins_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = invoke(tmp_path, monkeypatch, "plugins", "--json")
    assert result.exit_code == 0, result.stderr
    plugins = {entry["name"]: entry for entry in json.loads(result.stdout)}
    assert plugins["jsonl"] == {
        "name": "jsonl",
        "package": "outbox-jsonl",
        "version": "0.1.0",
        "sink_types": ["jsonl"],
    }
    assert plugins["outbox.callable_sink"]["package"] == "outbox-relay"
    assert plugins["outbox.postgres_sink"]["sink_types"] == ["postgres"]


def install_broken_plugin(site: Path) -> None:
    dist_info = site / "fake_outbox_broken-0.1.dist-info"
    dist_info.mkdir(parents=True)
    (site / "fake_outbox_broken.py").write_text("raise ImportError('needs libfoo')\n")
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fake-outbox-broken\nVersion: 0.1\n", encoding="utf-8"
    )
    (dist_info / "entry_points.txt").write_text("[outbox]\nbroken = fake_outbox_broken\n")


def test_a_plugin_that_fails_to_load_is_named_without_a_traceback(tmp_path: Path) -> None:
    install_broken_plugin(tmp_path / "site")
    listed = run(tmp_path, "plugins", env={"PYTHONPATH": str(tmp_path / "site")})
    assert listed.returncode == 1
    assert "plugin 'broken' (fake_outbox_broken) failed to load" in listed.stderr
    assert "needs libfoo" in listed.stderr
    assert "Traceback" not in listed.stderr


def test_config_check_reports_a_plugin_that_fails_to_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_broken_plugin(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    result = invoke(tmp_path, monkeypatch, "config", "check")
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    broken = "plugins: plugin 'broken' (fake_outbox_broken) failed"
    assert any(line.startswith(broken) for line in lines)


# -- a relay delivering through the example plugin -------------------------------------------------


def relay_config(tmp_path: Path, sinks: str) -> Path:
    return write(
        tmp_path,
        """
        [relay]
        poll_interval = 0.05
        maintenance_interval = 0.1
        """
        + textwrap.dedent(sinks),
    )


def test_relay_delivers_into_the_jsonl_plugin(tmp_path: Path, database_url: str) -> None:
    """The example plugin, installed with pip, is usable by name in a relay's config."""
    relay_config(
        tmp_path,
        """
        [sinks.trail]
        type = "jsonl"
        path = "events.jsonl"

        [[subscriptions]]
        topics = ["order.#"]
        sinks = ["trail"]
        """,
    )
    ids = publish(database_url, "order.created", "order.paid.late", "user.signed_up")
    args = ("relay", "--drain", "--config", "outbox.toml", "--database-url", database_url)
    result = run(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [(line["id"], line["topic"]) for line in lines] == [
        (ids[0], "order.created"),
        (ids[1], "order.paid.late"),
    ]
    assert lines[0]["payload"] == {"topic": "order.created"}
    statuses = fetch(database_url, "SELECT status FROM outbox_events ORDER BY id")
    assert statuses == [("done",), ("done",), ("done",)]  # user.* goes nowhere: done too


# -- sinks disable / enable ------------------------------------------------------------------------

SWITCHABLE = """
[sinks.cache]
type = "callable"
target = "handlers:record"

[sinks.trail]
type = "jsonl"
path = "events.jsonl"

[[subscriptions]]
topics = ["#"]
sinks = ["cache", "trail"]
"""

HANDLERS = """
from pathlib import Path

def record(event):
    with Path("called.txt").open("a") as file:
        file.write(f"{event.id}\\n")
"""


def sink_row(url: str, name: str) -> list[tuple[Any, ...]]:
    return fetch(
        url,
        "SELECT disabled_at IS NOT NULL, disabled_reason FROM outbox_sinks WHERE name = %s",
        name,
    )


def test_disable_then_enable_round_trips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    relay_config(tmp_path, SWITCHABLE)
    switch = ("--config", "outbox.toml", "--database-url", database_url)
    assert sink_row(database_url, "cache") == []

    disabled = invoke(tmp_path, monkeypatch, "sinks", "disable", "cache", *switch)
    assert disabled.exit_code == 0, disabled.stderr
    assert disabled.stdout.strip() == "sink cache disabled"
    assert sink_row(database_url, "cache") == [(True, "disabled by an operator")]

    enabled = invoke(tmp_path, monkeypatch, "sinks", "enable", "cache", *switch)
    assert enabled.exit_code == 0, enabled.stderr
    assert enabled.stdout.strip() == "sink cache enabled"
    assert sink_row(database_url, "cache") == [(False, None)]


def test_enabling_a_sink_that_is_not_disabled_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    relay_config(tmp_path, SWITCHABLE)
    switch = ("--config", "outbox.toml", "--database-url", database_url)
    result = invoke(tmp_path, monkeypatch, "sinks", "enable", "cache", *switch)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "sink cache was not disabled"
    assert sink_row(database_url, "cache") == []


def test_switching_a_sink_that_is_not_configured_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    relay_config(tmp_path, SWITCHABLE)
    switch = ("--config", "outbox.toml", "--database-url", database_url)
    result = invoke(tmp_path, monkeypatch, "sinks", "disable", "billing", *switch)
    assert result.exit_code == 2
    assert "no sink named 'billing'" in result.stderr
    assert sink_row(database_url, "billing") == []


def test_relay_skips_a_disabled_sink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    relay_config(tmp_path, SWITCHABLE)
    (tmp_path / "handlers.py").write_text(HANDLERS, encoding="utf-8")
    switch = ("--config", "outbox.toml", "--database-url", database_url)
    assert invoke(tmp_path, monkeypatch, "sinks", "disable", "cache", *switch).exit_code == 0
    (first,) = publish(database_url, "order.created")

    result = run(tmp_path, "relay", "--drain", *switch)
    assert result.returncode == 3, result.stderr  # --drain: an event it handled waits
    assert not (tmp_path / "called.txt").exists(), "a disabled sink was called"
    ((status, deliveries),) = fetch(database_url, "SELECT status, deliveries FROM outbox_events")
    assert status == "pending"
    assert (deliveries["cache"]["status"], deliveries["cache"]["attempts"]) == ("waiting", 0)
    assert deliveries["trail"]["status"] == "delivered"  # the other sink is not held back
    trail = (tmp_path / "events.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in trail] == [first]

    # Enabled again: the waiting event flows without a retry (with the next one: unkeyed
    # events of one batch go to the sink's threads at once, in no set order).
    assert invoke(tmp_path, monkeypatch, "sinks", "enable", "cache", *switch).exit_code == 0
    (second,) = publish(database_url, "order.paid")
    result = run(tmp_path, "relay", "--drain", *switch)
    assert result.returncode == 0, result.stderr
    called = (tmp_path / "called.txt").read_text().split()
    assert sorted(called) == sorted([str(first), str(second)])


def test_relay_on_an_unmigrated_database_says_to_migrate(
    tmp_path: Path, empty_database_url: str
) -> None:
    (tmp_path / "outbox.toml").write_text(GOOD)
    result = run(
        tmp_path,
        "relay",
        "--drain",
        "--config",
        "outbox.toml",
        "--database-url",
        empty_database_url,
    )
    assert result.returncode == 1
    assert "run `outbox migrate` first" in result.stderr
    assert "Traceback" not in result.stderr


def test_relay_without_subscriptions_refuses_to_start(tmp_path: Path, database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        event = outbox.publish(conn, "order.paid", {"n": 1})
    result = run(tmp_path, "relay", "--drain", "--database-url", database_url)
    assert result.returncode == 2
    assert "no subscriptions configured" in result.stderr
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT status FROM outbox_events WHERE id = %s", [event.id]).fetchone()
    assert row == ("pending",)  # not marked done as unrouted


def test_sinks_pause_and_resume_from_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    relay_config(tmp_path, SWITCHABLE)
    (tmp_path / "handlers.py").write_text(HANDLERS, encoding="utf-8")
    switch = ("--config", "outbox.toml", "--database-url", database_url)
    paused = invoke(
        tmp_path, monkeypatch, "sinks", "pause", "cache", "--reason", "upgrade", *switch
    )
    assert (paused.exit_code, paused.output.strip()) == (0, "sink cache paused")
    again = invoke(tmp_path, monkeypatch, "sinks", "pause", "cache", *switch)
    assert again.output.strip() == "sink cache was already paused"
    assert fetch(database_url, "SELECT paused_reason FROM outbox_sinks") == [("upgrade",)]
    (first,) = publish(database_url, "order.created")

    result = run(tmp_path, "relay", "--drain", *switch)
    assert result.returncode == 3, result.stderr  # --drain: an event it handled waits
    assert not (tmp_path / "called.txt").exists(), "a paused sink was called"

    resumed = invoke(tmp_path, monkeypatch, "sinks", "resume", "cache", *switch)
    assert (resumed.exit_code, resumed.output.strip()) == (0, "sink cache resumed")
    result = run(tmp_path, "relay", "--drain", *switch)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "called.txt").read_text().split() == [str(first)]
    ((deliveries,),) = fetch(database_url, "SELECT deliveries FROM outbox_events")
    assert deliveries["cache"]["attempts"] == 1  # the pause counted none
    unknown = invoke(tmp_path, monkeypatch, "sinks", "pause", "nope", *switch)
    assert unknown.exit_code == 2
    assert "no sink named 'nope'" in unknown.output
