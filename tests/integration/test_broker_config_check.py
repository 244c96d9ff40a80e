"""``outbox config check --connect`` with the broker sinks: a broker that cannot be reached is
named in one line each, without the clients' own log lines; a reachable one passes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from outbox.end_to_end import require_module
from outbox.server_control import free_port, require_server

# How each sink type names a broker at an address.
OPTIONS = {
    "kafka": lambda address: f'bootstrap_servers = "{address}"',
    "nats": lambda address: f'servers = "nats://{address}"',
    "rabbitmq": lambda address: 'url = { env = "RABBITMQ_URL" }',
    "redis": lambda address: f'url = "redis://{address}/0"',
}
NAMES = {"kafka": "Kafka", "nats": "NATS", "rabbitmq": "RabbitMQ", "redis": "Redis"}
MACHINE = {"nats": "127.0.0.1:4222", "rabbitmq": "127.0.0.1:5672", "redis": "127.0.0.1:6379"}


def check(tmp_path: Path, sink_type: str, address: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "outbox.toml"
    config.write_text(
        f'[sinks.out]\ntype = "{sink_type}"\n{OPTIONS[sink_type](address)}\n\n'
        '[[subscriptions]]\ntopics = ["#"]\nsinks = ["out"]\n'
    )
    env = {
        **os.environ,
        "OUTBOX_DATABASE_URL": "postgresql://outbox@127.0.0.1:5432/unused",
        "RABBITMQ_URL": f"amqp://guest:guest@{address}/",
    }
    command = [sys.executable, "-m", "outbox.cli", "config", "check", "--connect"]
    return subprocess.run(
        [*command, "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("sink_type", list(OPTIONS))
def test_a_broker_that_cannot_be_reached_is_said_once(tmp_path: Path, sink_type: str) -> None:
    require_module(f"outbox_{sink_type}", hint=f"pip install -e plugins/outbox-{sink_type}")
    address = f"127.0.0.1:{free_port()}"
    done = check(tmp_path, sink_type, address)
    assert done.returncode == 1, done.stderr
    found, count = done.stderr.splitlines()  # nothing else: no client's own log line
    assert found.startswith(
        f"sinks.out: cannot connect: cannot reach {NAMES[sink_type]} at {address}: "
    )
    assert count == "1 error(s)"


@pytest.mark.parametrize("sink_type", list(MACHINE))
def test_a_reachable_broker_passes(tmp_path: Path, sink_type: str) -> None:
    require_module(f"outbox_{sink_type}", hint=f"pip install -e plugins/outbox-{sink_type}")
    require_server(NAMES[sink_type], MACHINE[sink_type])
    done = check(tmp_path, sink_type, MACHINE[sink_type])
    assert done.returncode == 0, done.stderr
    assert "cannot" not in done.stdout + done.stderr
