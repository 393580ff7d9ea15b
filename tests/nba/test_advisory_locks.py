"""PostgreSQL: the advisory locks a group commit takes stay within the server's lock table, however large."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, select, text

from features.state import apply_event
from nba.store import Store
from nba.store import schema as t
from nba.store.batcher import MAX_BATCH_KEYS, WriteBatcher, _Job
from nba.store.engine import lock_id
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


def test_a_lease_is_renewed_while_a_batch_waits_for_another_hosts_lock(postgres_url: str) -> None:
    """A host frozen mid-transaction holds a customer's lock; this host's next batch needing it waits (up to the
    writer's lock timeout). Lease renewals must not wait behind that batch: the lease would run out meanwhile."""
    store = Store(postgres_url)
    frozen_host = store._writer_engine.connect()
    try:
        frozen = frozen_host.begin()
        frozen_host.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_id("customer:c1")})
        blocked: Future[None] = Future()
        batch = threading.Thread(target=lambda: blocked.set_result(store.write(lambda c: None, ["customer:c1"])))
        batch.start()
        with store._reader.connect() as conn:
            _until(lambda: conn.execute(text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")).scalar_one() == 1)
        assert store.try_lease("online-learner", "me", NOW, timedelta(seconds=10))
        assert store.lease_held("online-learner", NOW)
        store.release_lease("online-learner", "me")
        assert not blocked.done()  # the batch still waits for the frozen host's lock
        frozen.rollback()
        batch.join(timeout=60)
        assert blocked.result(timeout=0) is None
    finally:
        frozen_host.close()
        store.close()


def _until(condition: Callable[[], bool]) -> None:
    for _ in range(3000):
        if condition():
            return
        threading.Event().wait(0.01)
    raise AssertionError("condition not met in 30 s")


def _waiting_for_locks(store: Store) -> int:
    with store._reader.connect() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")).scalar_one())


def _put(key: str) -> Callable[[Connection], str]:
    return lambda conn: conn.execute(t.meta_kv.insert().values(key=key, value="x")) and key


def _stored(store: Store, keys: list[str]) -> list[str]:
    return sorted(store.read(lambda c: [r[0] for r in c.execute(select(t.meta_kv.c.key).where(
        t.meta_kv.c.key.in_(keys)))]))


def test_a_write_waiting_for_a_frozen_hosts_lock_holds_up_no_other_write(postgres_url: str) -> None:
    """Another host froze mid-transaction holding customer c1's lock. A write for c1 waits for it (up to the lock
    timeout) apart from the group commit, and the writes after it, for other customers, commit meanwhile."""
    store = Store(postgres_url)
    frozen_host = store._writer_engine.connect()
    try:
        frozen = frozen_host.begin()
        frozen_host.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_id("customer:c1")})
        blocked: Future[str] = Future()
        waiter = threading.Thread(target=lambda: blocked.set_result(store.write(_put("w-c1"), ["customer:c1"])))
        waiter.start()
        _until(lambda: _waiting_for_locks(store) == 1)
        assert store.write(_put("w-c2"), ["customer:c2"]) == "w-c2"
        assert store.write(_put("w-c3"), ["customer:c3", "shared:catalog"]) == "w-c3"
        assert not blocked.done() and _stored(store, ["w-c1"]) == []
        frozen.rollback()  # the frozen host's session ends
        waiter.join(timeout=60)
        assert blocked.result(timeout=0) == "w-c1"
        assert _stored(store, ["w-c1", "w-c2", "w-c3"]) == ["w-c1", "w-c2", "w-c3"]
    finally:
        frozen_host.close()
        store.close()


def test_a_batch_sets_apart_only_the_writes_that_need_a_busy_key(postgres_url: str) -> None:
    """In one group transaction: the writes needing the held key are rolled back and wait apart; the others
    commit together, once each."""
    store = Store(postgres_url)
    frozen_host = store._writer_engine.connect()
    try:
        frozen = frozen_host.begin()
        frozen_host.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_id("customer:c1")})
        answers = {key: Future[Any]() for key in ("b-c1", "b-c2", "b-c1-c4", "b-c3")}
        keys = {"b-c1": ["customer:c1"], "b-c2": ["customer:c2"], "b-c1-c4": ["customer:c4", "customer:c1"],
                "b-c3": ["customer:c3"]}
        jobs = [_Job(_put(key), keys[key], future=answers[key]) for key in answers]
        _queued_together(store._batcher, jobs)
        assert answers["b-c2"].result(timeout=60) == "b-c2" and answers["b-c3"].result(timeout=60) == "b-c3"
        assert not answers["b-c1"].done() and not answers["b-c1-c4"].done()
        assert _stored(store, list(answers)) == ["b-c2", "b-c3"]
        frozen.rollback()
        assert answers["b-c1"].result(timeout=60) == "b-c1"
        assert answers["b-c1-c4"].result(timeout=60) == "b-c1-c4"
        assert _stored(store, list(answers)) == sorted(answers)
    finally:
        frozen_host.close()
        store.close()
