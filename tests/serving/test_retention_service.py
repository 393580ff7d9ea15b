"""Retention in a running service: the setting, the background service every server process runs, one process at
a time pruning, and what clients see of a decision past the retention period."""

from __future__ import annotations

import logging
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from litestar import Litestar
from litestar.testing import TestClient
from prometheus_client import REGISTRY
from pydantic import ValidationError

from nba.clock import ManualClock, SystemClock
from nba.store import Store
from nba.store.retention import Release
from serving.retention import RetentionService
from serving.settings import Settings
from tests.conftest import ANALYST, CHANNEL
from tests.nba.test_free_space import fill_decisions
from tests.serving.helpers import AppFactory, Client, assert_problem, decide


def _retention(app: Litestar) -> RetentionService:
    return next(s for s in app.state.runtime.services if isinstance(s, RetentionService))


def test_a_decision_past_retention_is_gone_for_clients_too(client: Client, app: Litestar, clock: ManualClock) -> None:
    decision_id = decide(client)["decision_id"]
    assert client.post(f"/v1/decisions/{decision_id}/reward", json={"value": 1.0}, headers=CHANNEL).status_code == 202
    clock.advance(timedelta(hours=2))
    app.state.runtime.sweep()  # its window (an hour) closed: final, with an example for the learner
    clock.advance(timedelta(days=88))
    young_id = decide(client, customer_id="c-2")["decision_id"]

    clock.advance(timedelta(days=3))  # the first and its example are more than 90 days old, the second 3 days
    result = _retention(app).run_once()
    assert result is not None and result.deleted["decisions"] == 1

    assert_problem(client.get(f"/v1/decisions/{decision_id}", headers=ANALYST), 404)
    assert_problem(client.post(f"/v1/decisions/{decision_id}/reward", json={"value": 1.0}, headers=CHANNEL), 404)
    assert client.get(f"/v1/decisions/{young_id}", headers=ANALYST).status_code == 200
    metrics = client.get("/metrics").text
    assert 'nba_retention_deleted_total{kind="decisions"}' in metrics


def test_one_process_at_a_time_prunes(make_app: AppFactory, clock: ManualClock) -> None:
    first, second = make_app(), make_app()  # two server processes on one store
    with TestClient(first), TestClient(second):
        assert _retention(first).run_once() is not None
        assert _retention(second).run_once() is None  # the first holds the lease
        assert _retention(first).run_once() is not None  # and keeps it
        # The first stops renewing (it died): its lease, two of its waits between passes (an hour here) and a
        # minute, runs out.
        clock.advance(timedelta(hours=2))
        assert _retention(second).run_once() is None
        clock.advance(timedelta(minutes=1, seconds=1))
        assert _retention(second).run_once() is not None


def test_the_retention_setting() -> None:
    assert Settings().retention() == timedelta(days=90)
    assert Settings(retention_days=0).retention() is None  # keep everything
    assert Settings(retention_days=400).retention() == timedelta(days=400)
    assert Settings(retention_days=36_500).retention() == timedelta(days=36_500)
    for bad in (0.5, -1, 1_000_000):  # a million days: every pass failed, its horizon before year 1
        with pytest.raises(ValidationError, match="retention_days"):
            Settings(retention_days=bad)


def test_free_space_given_back_is_counted_and_a_file_that_cannot_give_it_back_is_named_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    release = Release(min_bytes=64 * 1024, chunk_pages=64)
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as conn:  # as the store created files before incremental auto-vacuum
        conn.execute("PRAGMA journal_mode=WAL")
    for path, releasable in ((tmp_path / "new.db", True), (old, False)):
        store = Store(f"sqlite:///{path}")
        clock = ManualClock(SystemClock().now())
        try:
            fill_decisions(store, clock, old=400, young=20)
            service = RetentionService(store, store.load_catalog, clock, timedelta(days=90), release=release)
            before = REGISTRY.get_sample_value("nba_retention_released_bytes_total") or 0.0
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="nba.retention"):
                results = [service.run_once() for _ in range(3)]
            released = sum(r.released_bytes for r in results if r is not None)
            assert (released > 0) is releasable
            assert REGISTRY.get_sample_value("nba_retention_released_bytes_total") == before + released
            told = [r.message for r in caplog.records if "nba compact" in r.message]
            assert len(told) == (0 if releasable else 1)  # said once, not at every pass
        finally:
            store.close()
