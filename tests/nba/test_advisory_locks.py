"""PostgreSQL: the advisory locks a group commit takes stay within the server's lock table, however large."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from datetime import UTC, datetime

import pytest
from sqlalchemy import Connection, create_engine, text

from features.state import apply_event
from nba.store import Store
from nba.store.batcher import _Job
from nba.store.engine import MAX_KEY_LOCKS, STORE_WIDE, lock_keys
from nba.types import Event, EventOutcome

pytestmark = pytest.mark.postgres
NOW = datetime(2026, 11, 24, 10, tzinfo=UTC)


def _advisory_locks(conn: Connection) -> list[tuple[str, bool]]:
    """(mode, granted) of each advisory lock this session holds or waits for."""
    return [(r[0], r[1]) for r in conn.execute(text(
        "SELECT mode, granted FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"))]


def _store_wide_free_for_others(url: str) -> bool:
    """Whether another session could take the store-wide lock shared now (as any other transaction must)."""
    engine = create_engine(url)
    try:
        with engine.connect() as other:
            return bool(other.execute(text("SELECT pg_try_advisory_xact_lock_shared(:k)"), {"k": STORE_WIDE}).scalar())
    finally:
        engine.dispose()


def test_a_transaction_takes_each_keys_lock_under_the_store_wide_one_shared(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    try:
        with engine.begin() as conn:
            lock_keys(conn, ["customer:a", "customer:b", "shared:catalog", "customer:a"])
            locks = _advisory_locks(conn)
            assert sorted(locks) == sorted([("ShareLock", True), ("ExclusiveLock", True), ("ExclusiveLock", True),
                                            ("ShareLock", True)])
            assert _store_wide_free_for_others(postgres_url)  # shared: other transactions go on
    finally:
        engine.dispose()


def test_a_transaction_with_more_keys_than_the_limit_takes_one_lock_for_all(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    try:
        with engine.begin() as conn:
            lock_keys(conn, [f"customer:{i}" for i in range(MAX_KEY_LOCKS + 1)])
            assert _advisory_locks(conn) == [("ExclusiveLock", True)]
            assert not _store_wide_free_for_others(postgres_url)  # every other transaction waits for it
        assert _store_wide_free_for_others(postgres_url)
    finally:
        engine.dispose()


def test_large_event_batches_in_one_group_commit_are_all_stored(postgres_url: str) -> None:
    """Sixteen 1,000-event batches committed together needed 32,000 advisory locks: more than the server's lock
    table holds by default, so every write of the group failed with 503 ("out of shared memory")."""
    store = Store(postgres_url)
    try:
        batcher = store._batcher
        started, gate = threading.Event(), threading.Event()

        def hold(_conn: Connection) -> None:  # keeps the writer busy while the batches queue up together
            started.set()
            gate.wait(30)

        held: Future[None] = Future()
        batcher._enqueue([_Job(hold, (), future=held)])
        assert started.wait(30)
        answers: list[Future[list[EventOutcome]]] = []
        jobs = []
        for n in range(16):
            batch = [Event(f"e-{n}-{i}", f"c-{n}-{i}", "page_view", NOW, {}) for i in range(1000)]
            write = store.events_write(batch, apply_event, NOW)
            answers.append(Future())
            jobs.append(_Job(write.fn, write.keys, future=answers[-1]))
        batcher._enqueue(jobs)
        gate.set()
        held.result(timeout=60)
        outcomes = [answer.result(timeout=120) for answer in answers]
        assert [len(o) for o in outcomes] == [1000] * 16
        assert store.load_customer("c-15-999") is not None and store.load_customer("c-0-0") is not None
    finally:
        store.close()
