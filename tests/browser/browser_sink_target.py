"""A receiver for the browser tests' ``callable`` sink: it fails while the file named by
``BROWSER_TEST_FAIL_FLAG`` exists and accepts everything once that file is gone. The relay
and the dashboard import it through the ``PYTHONPATH`` the tests give them
(``browser_sink_target:deliver``)."""

from __future__ import annotations

import os
from pathlib import Path

from outbox.sinks import Event

FLAG_VARIABLE = "BROWSER_TEST_FAIL_FLAG"


def deliver(event: Event) -> None:
    flag = os.environ.get(FLAG_VARIABLE)
    if flag and Path(flag).exists():
        raise ConnectionError(f"receiver at orders.internal:8443 refused event {event.id}")
