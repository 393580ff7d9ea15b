"""PostgreSQL: the advisory locks a group commit takes stay within the server's lock table, however large."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Connection, text

from features.state import apply_event
from nba.store import Store
from nba.store.batcher import MAX_BATCH_KEYS, WriteBatcher, _Job
from nba.types import Event, EventOutcome

pytestmark = pytest.mark.postgres
NOW = datetime(2026, 11, 24, 10, tzinfo=UTC)


def _advisory_locks(conn: Connection) -> int:
    return int(conn.execute(text(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()")).scalar_one())


def _queued_together(batcher: WriteBatcher, jobs: list[_Job]) -> None:
    """Queue `jobs` while the writer is busy, so that they are there together when it next forms a batch."""
    started, gate = threading.Event(), threading.Event()

    def hold(_conn: Connection) -> None:
        started.set()
        gate.wait(30)

    held: Future[None] = Future()
    batcher._enqueue([_Job(hold, (), future=held)])
    assert started.wait(30)
    batcher._enqueue(jobs)
    gate.set()
    held.result(timeout=60)


def test_a_group_commit_takes_at_most_max_batch_keys_locks(postgres_url: str) -> None:
    store = Store(postgres_url)
    try:
        def counting(conn: Connection) -> tuple[int, int]:
            return _advisory_locks(conn), int(conn.execute(text("SELECT txid_current()")).scalar_one())

        answers = [Future[Any]() for _ in range(3)]
        keys: Callable[[int], list[str]] = lambda n: [f"customer:{n}-{i}" for i in range(1000)]  # noqa: E731
        _queued_together(store._batcher, [_Job(counting, keys(n), future=answers[n]) for n in range(3)])
        seen = [answer.result(timeout=60) for answer in answers]
        assert [locks for locks, _ in seen] == [2000, 2000, 1000]  # the third did not fit: the next batch
        assert seen[0][1] == seen[1][1] != seen[2][1]
        assert max(locks for locks, _ in seen) <= MAX_BATCH_KEYS
    finally:
        store.close()


def test_large_event_batches_queued_together_are_all_stored(postgres_url: str) -> None:
    """Sixteen 1,000-event batches committed together needed 32,000 advisory locks: more than the server's lock
    table holds by default, so every write of the group failed with 503 ("out of shared memory")."""
    store = Store(postgres_url)
    try:
        answers: list[Future[list[EventOutcome]]] = []
        jobs = []
        for n in range(16):
            batch = [Event(f"e-{n}-{i}", f"c-{n}-{i}", "page_view", NOW, {}) for i in range(1000)]
            write = store.events_write(batch, apply_event, NOW)
            answers.append(Future())
            jobs.append(_Job(write.fn, write.keys, future=answers[-1]))
        _queued_together(store._batcher, jobs)
        outcomes = [answer.result(timeout=120) for answer in answers]
        assert [len(o) for o in outcomes] == [1000] * 16
        assert store.load_customer("c-15-999") is not None and store.load_customer("c-0-0") is not None
    finally:
        store.close()
