from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from outbox_jsonl import JsonlOptions, JsonlSink

from outbox.end_to_end import kill_repeatedly, planned_events, write_config
from outbox.exceptions import RetryableError
from outbox.sinks import Event, Sink
from outbox.testing import Behaviour, SinkHarness, exercise_sink, make_event


class JsonlHarness(SinkHarness):
    def __init__(self, directory: Path) -> None:
        self.path = directory / "events.jsonl"

    async def make_sink(self, behaviour: Behaviour = "ok") -> Sink | None:
        if behaviour == "ok":
            return JsonlSink(JsonlOptions(path=self.path))
        if behaviour == "retryable":
            return JsonlSink(JsonlOptions(path=self.path.parent / "missing-dir" / "x.jsonl"))
        return None  # a file never refuses an event for good, nor asks for a delay

    async def received_ids(self) -> Sequence[int]:
        if not self.path.exists():
            return []
        return [json.loads(line)["id"] for line in self.path.read_text().splitlines()]


async def test_conformance(tmp_path: Path) -> None:
    ran = await exercise_sink(JsonlHarness(tmp_path))
    assert ran == ["acks", "repeat_is_harmless", "retryable", "concurrency"]


async def test_redelivery_after_restart_writes_one_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    event = make_event(payload={"n": 1})
    for _ in range(2):  # two sink instances: a relay restarted between deliveries
        async with JsonlSink(JsonlOptions(path=path)) as sink:
            assert await sink.deliver_batch([event]) == [None]
    lines = path.read_text().splitlines()
    assert [json.loads(line)["payload"] for line in lines] == [{"n": 1}]


async def test_a_batch_cut_off_by_its_deadline_finishes_before_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "events.jsonl"
    sink = JsonlSink(JsonlOptions(path=path, fsync=False))
    append = sink._append_new

    def slow_append(events: Sequence[Event]) -> None:
        time.sleep(0.5)
        append(events)

    monkeypatch.setattr(sink, "_append_new", slow_append)
    event = make_event()
    [late] = await sink.deliver_batch([event], timeout=0.1)
    [again] = await sink.deliver_batch([event], timeout=5)
    assert isinstance(late, RetryableError)
    assert "timed out after 0.1s" in str(late)
    assert again is None
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == [event.id]


def test_options_reject_unknown_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="colour"):
        JsonlOptions.model_validate({"path": str(tmp_path), "colour": "red"})


@pytest.mark.acceptance
def test_relays_killed_while_events_are_published_lose_none_and_write_each_once(
    database_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "events.jsonl"
    config = write_config(tmp_path, "jsonl", {"path": str(path)})
    ids = kill_repeatedly(config, database_url, planned_events(300, keys=5), kills=3)
    written = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(record["id"] for record in written) == sorted(ids)
    for key in {record["key"] for record in written}:  # each key in publish order
        of_key = [record["id"] for record in written if record["key"] == key]
        assert of_key == sorted(of_key)
