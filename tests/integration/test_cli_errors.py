"""Every ``outbox`` error is one clear line on stderr, never a traceback, and never echoes a
password: bad database URLs, durations too large for a clock, webhook URLs that cannot work."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TIMEOUT = 30.0
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def outbox(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``outbox ARGS`` as an operator runs it, with no OUTBOX_* variable of the test's."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("OUTBOX_")}
    return subprocess.run(
        [sys.executable, "-m", "outbox.cli", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def assert_one_line(result: subprocess.CompletedProcess[str], exit_code: int) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.returncode == exit_code, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:pa ss@h:99999/db", "space"),
        ("postgresql://u:hunter2@h:99999/db", "port"),
        ("postgresql://u:hunter2@h:abc/db", "port"),
        ("postgresql://u:hunter2@[::1/db", "invalid"),
        ("garbage", "invalid"),
        ("host=h password=hunter2 ss", "invalid"),
    ],
)
def test_a_malformed_database_url_is_one_line_without_the_password(
    tmp_path: Path, url: str, expected: str
) -> None:
    line = assert_one_line(outbox(tmp_path, "status", "--database-url", url), 2)
    assert line.startswith("error: ")
    assert expected in line
    assert "hunter2" not in line
    assert "pa ss" not in line


def test_migrate_refuses_a_malformed_database_url_too(tmp_path: Path) -> None:
    result = outbox(tmp_path, "migrate", "--database-url", "postgresql://u:hunter2@h:99999/db")
    line = assert_one_line(result, 2)
    assert "port" in line
    assert "hunter2" not in line


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("purge", "--yes", "--older-than", "99999999999d"), "--older-than"),
        (("purge", "--yes", "--older-than", "1000000d"), "--older-than"),
        (("replay", "--yes", "--since", "1000000d"), "--since"),
        (("events", "list", "--until", "99999999999w"), "--until"),
    ],
)
def test_a_duration_too_large_is_one_line(
    tmp_path: Path, database_url: str, args: tuple[str, ...], option: str
) -> None:
    result = outbox(tmp_path, *args, "--database-url", database_url)
    line = assert_one_line(result, 2)
    assert line.startswith(f"error: {option}: ")
    assert "too large" in line


def test_an_invalid_duration_is_one_line(tmp_path: Path, database_url: str) -> None:
    result = outbox(tmp_path, "purge", "--older-than", "soon", "--database-url", database_url)
    line = assert_one_line(result, 2)
    assert line.startswith("error: --older-than: invalid duration 'soon'")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://hooks.example.com/a b", "space"),
        ("https://hooks .example.com/a", "space"),
        ("https://hooks.example.com:99999/a", "port 99999 is not in 1..65535"),
        ("https://hooks.example.com:0/a", "port 0 is not in 1..65535"),
        ("https:///services/a", "no host"),
        ("ftp://hooks.example.com/a", "http:// or https://"),
    ],
)
def test_config_check_refuses_a_webhook_url_that_cannot_work(
    tmp_path: Path, url: str, expected: str
) -> None:
    config = tmp_path / "outbox.toml"
    config.write_text(
        textwrap.dedent(f"""
            [sinks.billing]
            type = "webhook"
            url = "{url}"
            secret = "{SECRET}"

            [[subscriptions]]
            topics = ["order.*"]
            sinks = ["billing"]
        """),
        encoding="utf-8",
    )
    result = outbox(tmp_path, "config", "check", "--config", str(config))
    assert "Traceback" not in result.stderr
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    [line, count] = [line for line in lines if ": warning: " not in line]  # the literal secret
    assert line.startswith("sinks.billing.url: ")
    assert expected in line
    assert count == "1 error(s)"
