"""The dashboard in a real browser: ``outbox dashboard`` and ``outbox relay`` run as processes
of their own against a real PostgreSQL, and headless Chromium (Debian's ``/usr/bin/chromium``,
driven by Playwright) reads and clicks the pages as an operator would.

The module is skipped when Playwright or Chromium is missing, or fails saying so where
``OUTBOX_REQUIRE_BROWSER=1`` (``OUTBOX_CHROMIUM`` names another binary). With
``OUTBOX_SCREENSHOTS=docs/images`` (a directory, relative to the repository)
:func:`test_pages_for_the_documentation` also writes the documentation's screenshots there;
every test saves its own in its ``tmp_path`` anyway.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import outbox
from outbox.end_to_end import RelayProcess
from outbox.server_control import free_port

CHROMIUM = Path(os.environ.get("OUTBOX_CHROMIUM", "/usr/bin/chromium"))  # Debian's
REQUIRE_VARIABLE = "OUTBOX_REQUIRE_BROWSER"
SCREENSHOTS_VARIABLE = "OUTBOX_SCREENSHOTS"
FLAG_VARIABLE = "BROWSER_TEST_FAIL_FLAG"  # read by browser_sink_target.deliver
HERE = Path(__file__).resolve().parent
REPOSITORY = HERE.parents[1]
DEADLINE = 60.0


def _browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as error:
        return f"playwright is not importable ({error})"
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    return None


_missing = _browser_missing()
if _missing is not None:
    if os.environ.get(REQUIRE_VARIABLE) == "1":
        pytest.fail(f"{_missing}, and {REQUIRE_VARIABLE}=1 says the browser tests must run")
    pytest.skip(f"browser tests need Playwright and Chromium: {_missing}", allow_module_level=True)

from playwright.sync_api import BrowserContext, Page, Playwright, expect, sync_playwright  # noqa: E402

# Quick relays; each test that needs a failure sets max_attempts = 1 on its failing sink.
RELAY_SETTINGS = """\
[relay]
poll_interval = 0.1
lease_seconds = 6.0
delivery_timeout = 5.0
shutdown_timeout = 2.0
backoff_base = 0.2
backoff_cap = 1.0
"""

TWO_SINKS = (
    RELAY_SETTINGS
    + """
[sinks.orders]
type = "callable"
target = "browser_sink_target:deliver"
max_attempts = 1

[sinks.audit]
type = "callable"
target = "builtins:id"

[[subscriptions]]
topics = ["order.#"]
sinks = ["orders"]

[[subscriptions]]
topics = ["#"]
sinks = ["audit"]
"""
)

THREE_SINKS = (
    TWO_SINKS
    + """
[sinks.search]
type = "callable"
target = "builtins:id"

[[subscriptions]]
topics = ["customer.#"]
sinks = ["search"]
"""
)


# -- processes ---------------------------------------------------------------------------


def _child_env() -> dict[str, str]:
    """The environment of the processes the tests start: none of the test run's own
    ``OUTBOX_*`` variables, and this directory importable (the callable sink's target)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("OUTBOX_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Dashboard:
    """``outbox dashboard`` on a free port, ready once ``/`` answers 200."""

    def __init__(
        self,
        database_url: str,
        directory: Path,
        *,
        config: Path | None = None,
        allow_actions: bool = False,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = directory / f"dashboard-{self.port}.log"
        command = [sys.executable, "-m", "outbox.cli", "dashboard"]
        command += ["--config", str(config)] if config else []
        command += ["--database-url", database_url, "--host", "127.0.0.1"]
        command += ["--port", str(self.port)]
        command += ["--allow-actions"] if allow_actions else []
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                command, cwd=directory, env=_child_env(), stdout=out, stderr=subprocess.STDOUT
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        give_up = time.monotonic() + 30.0
        while True:
            try:
                with urllib.request.urlopen(self.url + "/", timeout=2) as response:
                    if response.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            if self.process.poll() is not None or time.monotonic() > give_up:
                self.stop()
                raise AssertionError(f"the dashboard did not start:\n{self.output()}")
            time.sleep(0.1)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-4000:]

    def stop(self) -> None:
        _stop(self.process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and SIGKILL if it still runs 10 seconds later."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def start_dashboard(database_url: str, tmp_path: Path) -> Iterator[Callable[..., Dashboard]]:
    started: list[Dashboard] = []

    def start(*, config: Path | None = None, allow_actions: bool = False) -> Dashboard:
        dashboard = Dashboard(database_url, tmp_path, config=config, allow_actions=allow_actions)
        started.append(dashboard)
        return dashboard

    try:
        yield start
    finally:
        for dashboard in started:
            dashboard.stop()


@pytest.fixture
def receiver_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The flag file that makes ``browser_sink_target.deliver`` fail, created; the relays
    started by :func:`start_relay` see its path (and this directory on their path)."""
    flag = tmp_path / "receiver-down"
    flag.write_text("down\n")
    monkeypatch.setenv(FLAG_VARIABLE, str(flag))
    return flag


@pytest.fixture
def start_relay(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[Path], RelayProcess]]:
    started: list[RelayProcess] = []

    def start(config: Path) -> RelayProcess:
        # RelayProcess passes os.environ on: make it the children's environment.
        with monkeypatch.context() as patch:
            for name in [name for name in os.environ if name.startswith("OUTBOX_")]:
                patch.delenv(name)
            for name, value in _child_env().items():
                patch.setenv(name, value)
            relay = RelayProcess(config, database_url)
        started.append(relay)
        return relay

    try:
        yield start
    finally:
        for relay in started:
            _stop(relay.process)


# -- the browser -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def playwright_driver() -> Iterator[Playwright]:
    """Playwright's sync API runs an event loop in this thread while it is started: stopped
    with this module, before the suite's asyncio tests need the thread again."""
    driver = sync_playwright().start()
    try:
        yield driver
    finally:
        driver.stop()


@pytest.fixture
def browser(
    playwright_driver: Playwright, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrowserContext]:
    """Chromium with a profile of its own (``launch`` refuses ``--user-data-dir``, so a
    persistent context), closed after the test."""
    context = playwright_driver.chromium.launch_persistent_context(
        user_data_dir=tmp_path_factory.mktemp("chromium"),
        executable_path=str(CHROMIUM),
        headless=True,
        viewport={"width": 1280, "height": 800},
        args=[
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
        ],
    )
    context.set_default_timeout(15_000)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def page(browser: BrowserContext) -> Page:
    return browser.pages[0] if browser.pages else browser.new_page()


def _shot(page: Page, directory: Path, name: str) -> Path:
    path = directory / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


# -- the database ------------------------------------------------------------------------


def _scalar(database_url: str, query: str, *params: Any) -> Any:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def _backlog(database_url: str) -> int:
    count: int = _scalar(
        database_url,
        "SELECT count(*) FROM outbox_events WHERE status IN ('pending', 'processing')",
    )
    return count


def _publish(database_url: str, events: list[tuple[str, str | None]]) -> list[int]:
    """Publish (topic, key) pairs in one transaction; their ids."""
    ids = []
    with psycopg.connect(database_url) as conn:
        for n, (topic, key) in enumerate(events):
            payload = {"n": n, "topic": topic, "amount": 10 * n + 5, "currency": "EUR"}
            event = outbox.publish(conn, topic, payload, key=key)
            assert event.id is not None
            ids.append(event.id)
    return ids


def _wait_for(what: str, check: Callable[[], bool], relay: RelayProcess) -> None:
    give_up = time.monotonic() + DEADLINE
    while not check():
        if relay.process.poll() is not None:
            raise AssertionError(f"the relay exited {relay.process.returncode}:\n{relay.output()}")
        if time.monotonic() > give_up:
            raise AssertionError(f"after {DEADLINE:g}s, not {what}:\n{relay.output()}")
        time.sleep(0.2)


def _status(database_url: str, event_id: int) -> str:
    status: str = _scalar(database_url, "SELECT status FROM outbox_events WHERE id = %s", event_id)
    return status


def _write(directory: Path, text: str) -> Path:
    path = directory / "outbox.toml"
    path.write_text(text, encoding="utf-8")
    return path


# -- the tests ---------------------------------------------------------------------------


def test_backlog_tile_counts_the_database_and_refreshes_itself(
    database_url: str, start_dashboard: Callable[..., Dashboard], page: Page, tmp_path: Path
) -> None:
    topics = ["order.created", "order.shipped", "customer.updated", "invoice.paid"]
    _publish(database_url, [(topics[n % 4], f"key-{n % 3}") for n in range(11)])
    dashboard = start_dashboard()

    page.goto(dashboard.url + "/")
    expected = _backlog(database_url)
    assert expected == 11
    assert page.locator("#backlog").inner_text().strip() == str(expected)
    for topic in topics:
        expect(page.locator("#topics")).to_contain_text(topic)
    _shot(page, tmp_path, "overview-before")

    page.evaluate("window.notReloaded = true")
    _publish(database_url, [("order.created", None)] * 4)
    expected = _backlog(database_url)
    assert expected == 15
    expect(page.locator("#backlog")).to_have_text(str(expected), timeout=12_000)
    assert page.evaluate("window.notReloaded === true"), "htmx swaps the content, no reload"
    _shot(page, tmp_path, "overview-after")


def test_filter_open_retry_until_delivered(
    database_url: str,
    start_dashboard: Callable[..., Dashboard],
    start_relay: Callable[[Path], RelayProcess],
    receiver_down: Path,
    page: Page,
    tmp_path: Path,
) -> None:
    config = _write(tmp_path, TWO_SINKS)
    [failing, fine] = _publish(database_url, [("order.created", "o-1"), ("invoice.paid", None)])
    relay = start_relay(config)
    _wait_for("failed", lambda: _status(database_url, failing) == "failed", relay)
    _wait_for("done", lambda: _status(database_url, fine) == "done", relay)
    dashboard = start_dashboard(config=config, allow_actions=True)

    page.goto(dashboard.url + "/events")
    expect(page.locator(f"tr[data-event='{fine}']")).to_be_visible()
    page.locator("form.filters input[name=status][value=failed]").check()
    page.locator("form.filters button[type=submit]").click()
    page.wait_for_url("**/events?*status=failed*")
    expect(page.locator("tr[data-event]")).to_have_count(1)
    row = page.locator(f"tr[data-event='{failing}']")
    expect(row).to_contain_text("ConnectionError")
    _shot(page, tmp_path, "events-failed")

    row.locator(f"a[href$='/events/{failing}']").click()
    page.wait_for_url(f"**/events/{failing}")
    expect(page.locator("#event-status")).to_have_text("failed")
    page.locator("#retry").click()
    page.wait_for_url(f"**/actions/retry?id={failing}&status=failed")
    expect(page.locator("#count strong")).to_have_text("1")
    _shot(page, tmp_path, "retry-confirm")

    # The receiver is back; the event stays failed until an operator retries it (with
    # max_attempts = 1, retrying before this would only fail it again at once).
    receiver_down.unlink()
    time.sleep(0.5)
    assert _status(database_url, failing) == "failed"
    page.locator("#confirm").click()
    expect(page.locator("#result")).to_contain_text("Retried 1 event(s)")
    _shot(page, tmp_path, "retry-done")

    give_up = time.monotonic() + 30.0
    page.goto(f"{dashboard.url}/events/{failing}")
    while page.locator("#event-status").inner_text() != "done" and time.monotonic() < give_up:
        time.sleep(0.5)
        page.reload()
    expect(page.locator("#event-status")).to_have_text("done")
    expect(page.locator("#deliveries tr[data-sink=orders] span.delivery")).to_have_text("delivered")
    _shot(page, tmp_path, "event-done")
    status, delivery = _scalar(
        database_url,
        "SELECT ARRAY[status, deliveries->'orders'->>'status'] FROM outbox_events WHERE id = %s",
        failing,
    )
    assert (status, delivery) == ("done", "delivered")
    assert relay.process.poll() is None, relay.output()


def test_pause_and_resume_a_sink(
    database_url: str, start_dashboard: Callable[..., Dashboard], page: Page, tmp_path: Path
) -> None:
    config = _write(tmp_path, TWO_SINKS)
    dashboard = start_dashboard(config=config, allow_actions=True)

    def paused(name: str) -> bool:
        held: bool = _scalar(
            database_url,
            "SELECT EXISTS (SELECT FROM outbox_sinks WHERE name = %s AND paused_at IS NOT NULL)",
            name,
        )
        return held

    page.goto(dashboard.url + "/sinks")
    orders, audit = page.locator("tr[data-sink=orders]"), page.locator("tr[data-sink=audit]")
    expect(orders.locator("span.state")).to_have_text("active")
    orders.locator("button.pause").click()
    page.wait_for_url("**/sinks")
    expect(orders.locator("span.state")).to_have_text("paused")
    expect(orders.locator("button.resume")).to_be_visible()
    expect(audit.locator("span.state")).to_have_text("active")
    assert paused("orders")
    assert not paused("audit")
    _shot(page, tmp_path, "sinks-paused")

    orders.locator("button.resume").click()
    page.wait_for_url("**/sinks")
    expect(orders.locator("span.state")).to_have_text("active")
    expect(orders.locator("button.pause")).to_be_visible()
    assert not paused("orders")
    _shot(page, tmp_path, "sinks-resumed")


def test_read_only_dashboard_offers_no_actions(
    database_url: str, start_dashboard: Callable[..., Dashboard], page: Page, tmp_path: Path
) -> None:
    config = _write(tmp_path, TWO_SINKS)
    [event_id] = _publish(database_url, [("order.created", "o-9")])
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE outbox_events SET status = 'failed', last_error = 'Boom' WHERE id = %s",
            (event_id,),
        )
    dashboard = start_dashboard(config=config)

    page.goto(dashboard.url + "/sinks")
    expect(page.locator("#sinks tr[data-sink]")).to_have_count(2)
    expect(page.locator(".mode")).to_have_text("read-only")
    for switch in ("pause", "resume", "enable", "disable"):
        expect(page.locator(f"button.{switch}")).to_have_count(0)
    expect(page.locator("#sinks form")).to_have_count(0)
    _shot(page, tmp_path, "sinks-read-only")

    page.goto(f"{dashboard.url}/events/{event_id}")
    expect(page.locator("#event-status")).to_have_text("failed")
    expect(page.locator("#retry")).to_have_count(0)

    response = page.goto(f"{dashboard.url}/actions/retry?id={event_id}")
    assert response is not None
    assert response.status == 403
    expect(page.locator("p.problem")).to_contain_text("actions are off")
    _shot(page, tmp_path, "retry-forbidden")
    posted = page.request.post(f"{dashboard.url}/sinks/orders/pause", form={"csrf": "x" * 43})
    assert posted.status == 403
    assert _status(database_url, event_id) == "failed"
    assert _scalar(database_url, "SELECT count(*) FROM outbox_sinks") == 0


def test_pages_for_the_documentation(
    database_url: str,
    start_dashboard: Callable[..., Dashboard],
    start_relay: Callable[[Path], RelayProcess],
    receiver_down: Path,
    page: Page,
    tmp_path: Path,
) -> None:
    """Every page with realistic content: several topics, events failed with an error (and
    a key parked behind one), a paused sink. Saved in ``tmp_path``; also in the directory
    ``OUTBOX_SCREENSHOTS`` names, as the documentation's images."""
    config = _write(tmp_path, THREE_SINKS)
    dashboard = start_dashboard(config=config, allow_actions=True)
    page.goto(dashboard.url + "/sinks")
    page.locator("tr[data-sink=search] button.pause").click()
    page.wait_for_url("**/sinks")
    expect(page.locator("tr[data-sink=search] span.state")).to_have_text("paused")

    settled = _publish(database_url, [("invoice.paid", f"inv-{n}") for n in range(6)])
    relay = start_relay(config)
    _wait_for("settled", lambda: _backlog(database_url) == 0, relay)
    planned = [("order.created", "order-1042"), ("order.created", "order-1043")]
    planned += [("order.shipped", "order-1042")]  # parked behind the failed order-1042
    planned += [("customer.updated", f"customer-{n}") for n in range(3)]
    planned += [("invoice.paid", f"inv-{n}") for n in range(6, 9)]
    ids = _publish(database_url, planned)
    failed_id = ids[0]
    _wait_for("failed", lambda: _status(database_url, ids[1]) == "failed", relay)
    _wait_for("failed", lambda: _status(database_url, failed_id) == "failed", relay)
    assert all(_status(database_url, n) == "done" for n in settled)

    documentation = os.environ.get(SCREENSHOTS_VARIABLE)
    targets = [tmp_path]
    if documentation:
        targets.append(REPOSITORY / documentation)
        targets[-1].mkdir(parents=True, exist_ok=True)

    def shoot(name: str) -> None:
        first = _shot(page, tmp_path, name)
        assert first.stat().st_size < 400_000, f"{name}: {first.stat().st_size} bytes"
        for directory in targets[1:]:
            shutil.copyfile(first, directory / first.name)

    page.goto(dashboard.url + "/")
    expect(page.locator("#failed")).to_have_text("2")
    expect(page.locator("#parked")).to_have_text("2")
    expect(page.locator("#sinks tr[data-sink=search] span.state")).to_have_text("paused")
    expect(page.locator("#topics")).to_contain_text("customer.updated")
    shoot("dashboard-overview")

    page.goto(dashboard.url + "/events")
    expect(page.locator("tr[data-event]")).to_have_count(len(settled) + len(ids))
    expect(page.locator(f"tr[data-event='{failed_id}'] span.status")).to_have_text("failed")
    shoot("dashboard-events")

    page.goto(f"{dashboard.url}/events/{failed_id}")
    expect(page.locator("#event-status")).to_have_text("failed")
    expect(page.locator("#errors")).to_contain_text("ConnectionError")
    expect(page.locator("#retry")).to_be_visible()
    shoot("dashboard-event")

    page.goto(dashboard.url + "/sinks")
    expect(page.locator("tr[data-sink=orders] td.n.bad")).to_have_text("2")
    expect(page.locator("tr[data-sink=search] span.state")).to_have_text("paused")
    shoot("dashboard-sinks")
