"""A database error raised while rows are read off the driver's cursor (a page that fails to read mid-scan:
SQLite's I/O or corruption errors surface there, after `execute` has returned the first row) is the store
failing: 503 problem+json with nothing stored, and the next call succeeds. It used to reach the route as the
driver's raw error: a 500.

The fault is SQLite's own: a progress handler interrupts the matching statement after a set number of its
virtual-machine steps, counted on an earlier full run, so the driver raises exactly where a bad page read would.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from litestar.testing import TestClient
from sqlalchemy import Engine, event

from nba.store import Store
from tests.conftest import CHANNEL
from tests.faults.conftest import AppFactory, row_counts
from tests.serving.helpers import assert_problem

CATALOG: dict[str, Any] = {
    "event_types": {"page_view": {"properties": {"page": "string"}}},
    "actions": {f"b{i}": {"channels": ["web"], "attributes": {"category": "gift"},
                          "budget": {"limit": 1000, "window": "1d"}} for i in range(6)},
    "policies": {"web": {"channels": ["web"], "learner": {"exploration": "epsilon", "epsilon": 0.1}}},
}


class FetchFault:
    """Interrupts statements containing `match` once, after `steps` VM steps (0: only count the steps)."""

    def __init__(self, engines: tuple[Engine, ...], match: str) -> None:
        self.match = match
        self.steps = 0
        self.counted: list[int] = []
        for engine in engines:
            event.listen(engine, "before_cursor_execute", self._before)

    def _before(self, _conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        raw: sqlite3.Connection = cursor.connection
        if not self.match or self.match not in statement:
            raw.set_progress_handler(None, 0)
            return
        self.counted.append(0)
        index, fired = len(self.counted) - 1, [False]

        def handler() -> int:
            self.counted[index] += 1
            if self.steps and self.counted[index] > self.steps and not fired[0]:
                fired[0] = True
                return 1
            return 0

        raw.set_progress_handler(handler, 1)

    def arm(self) -> None:
        """Fail the next matching statement late in its scan: after most of the steps a full run took."""
        assert self.counted, "the statement never ran"
        self.steps = int(max(self.counted) * 0.9)


def test_an_event_batch_whose_duplicate_lookup_fails_mid_scan_is_503(
    sqlite_url: str, make_app: AppFactory
) -> None:
    app = make_app(sqlite_url, CATALOG)
    store: Store = app.state.runtime.store
    events = [{"customer_id": "c-1", "type": "page_view", "properties": {"page": "h"}, "event_id": f"e-{i}"}
              for i in range(200)]
    with TestClient(app) as client:
        assert client.post("/v1/events", json=events, headers=CHANNEL).status_code == 202
        fault = FetchFault(store.writer_engines, "SELECT events.event_id")
        assert client.post("/v1/events", json=events, headers=CHANNEL).status_code == 202  # counts the steps
        fault.arm()
        before = row_counts(store)
        mixed = events[:150] + [{**e, "event_id": f"f-{i}"} for i, e in enumerate(events[150:])]
        assert_problem(client.post("/v1/events", json=mixed, headers=CHANNEL), 503)
        assert row_counts(store) == before
        fault.match = ""
        answers = client.post("/v1/events", json=mixed, headers=CHANNEL)
        assert answers.status_code == 202
        assert [a["duplicate"] for a in answers.json()] == [True] * 150 + [False] * 50


def test_a_decision_whose_budget_read_fails_mid_scan_is_503(sqlite_url: str, make_app: AppFactory) -> None:
    app = make_app(sqlite_url, CATALOG)
    store: Store = app.state.runtime.store
    with TestClient(app) as client:
        for i in range(30):  # every action's budget counter exists, so the read scans several rows
            assert client.post("/v1/decide", json={"customer_id": f"c-{i}", "channel": "web"},
                               headers=CHANNEL).status_code == 200
        fault = FetchFault((store._local_reader, store._reader), "FROM budget_counters")
        store._budgets._ttl = 0.0  # each decision reads the counters (they are cached for 100 ms)
        assert client.post("/v1/decide", json={"customer_id": "x", "channel": "web"},
                           headers=CHANNEL).status_code == 200
        fault.arm()
        before = row_counts(store)
        assert_problem(client.post("/v1/decide", json={"customer_id": "y", "channel": "web"}, headers=CHANNEL), 503)
        assert row_counts(store) == before
        fault.match = ""
        assert client.post("/v1/decide", json={"customer_id": "y", "channel": "web"},
                           headers=CHANNEL).status_code == 200
