"""A group commit whose COMMIT fails runs again only if it did not commit: every answer matches what is stored.

PostgreSQL may have committed a transaction whose acknowledgement was lost with the connection: the writer learns
how it ended and answers what was stored, runs the batch again if it aborted, and answers 503 without running it
again if it cannot tell. On SQLite a failed COMMIT has not committed: its transaction is rolled back before its
connection is let go of, and the batch runs again.

The failures are made at the driver: the dialect's `do_commit` runs the real COMMIT or not, then raises the
driver's own error, as a connection dropped by the network or a failing disk does.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from sqlalchemy import Connection, Engine, event, select

from nba.catalog import Action, Policy, RewardSpec
from nba.clock import ManualClock
from nba.decide import DecideRequest, DecisionEngine
from nba.errors import StoreUnavailable
from nba.store import Store, batcher
from nba.store import engine as engine_module
from nba.store import schema as t
from nba.store.store import WriteJob
from nba.types import Decision

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


class NoModel:
    """No learned model: the engine decides uniformly."""

    def scorer(self, name: str, version: int, policy: Policy) -> None:
        return None


@pytest.fixture
def pg_store(postgres_url: str) -> Iterator[Store]:
    store = Store(postgres_url)
    try:
        store.put_action("a", Action(channels=["web"]), NOW)
        store.put_policy("web", Policy(channels=["web"], reward=RewardSpec(window="1h", aggregation="sum")), NOW)
        yield store
    finally:
        store.close()


def _decide(store: Store, customer: str) -> Decision:
    engine = DecisionEngine(store, store.load_catalog, NoModel(), ManualClock(NOW), rng=random.Random(0))
    return engine.decide(DecideRequest(customer, "web", {})).decision


def _rewards(store: Store, decision_id: str) -> tuple[int, float]:
    """How many rewards are stored for the decision's slot, and their stored sum."""
    rows = store.read(lambda c: c.execute(select(t.rewards.c.value).where(t.rewards.c.decision_id == decision_id))
                      .all())
    total = store.read(lambda c: c.execute(select(t.decision_slots.c.reward_sum)
                                           .where(t.decision_slots.c.decision_id == decision_id)).scalar_one())
    return len(rows), total


def _decisions_of(store: Store, customer: str) -> list[str]:
    return store.read(lambda c: [r[0] for r in c.execute(select(t.decisions.c.decision_id)
                                                         .where(t.decisions.c.customer_id == customer))])


def _fail_next_pg_commit(monkeypatch: pytest.MonkeyPatch, engine: Engine, *, committed: bool,
                         then: Callable[[], None] = lambda: None) -> list[bool]:
    """The engine's next COMMIT loses its connection: after the server committed (`committed`: only the
    acknowledgement is lost) or before the COMMIT reached it (the server then aborts the transaction). `then` runs
    once the connection is gone. Returns a list that holds True once the failure has happened."""
    dialect = engine.dialect
    real = dialect.do_commit
    failed: list[bool] = []

    def do_commit(connection: Any) -> None:
        if failed:
            real(connection)
            return
        failed.append(True)
        if committed:
            real(connection)
        connection.dbapi_connection.close()
        then()
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(dialect, "do_commit", do_commit)
    return failed


@pytest.mark.postgres
def test_a_commit_whose_acknowledgement_is_lost_answers_what_it_stored(
    pg_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run again, the reward would be stored twice (summed twice) yet answered `accepted` once, and the decision
    would be answered 409 by its own duplicate key although it was stored."""
    decision = _decide(pg_store, "c-1")  # the writer keeps its connection from here on
    lost = _fail_next_pg_commit(monkeypatch, pg_store._writer_engine, committed=True)
    assert pg_store.add_reward(decision.decision_id, 0, 1.0, NOW) == "accepted"
    assert lost == [True]
    assert _rewards(pg_store, decision.decision_id) == (1, 1.0)

    lost = _fail_next_pg_commit(monkeypatch, pg_store._writer_engine, committed=True)
    answered = _decide(pg_store, "c-2")
    assert lost == [True]
    assert _decisions_of(pg_store, "c-2") == [answered.decision_id]


@pytest.mark.postgres
def test_a_commit_that_never_reached_the_server_runs_the_batch_again(
    pg_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    decision = _decide(pg_store, "c-1")
    lost = _fail_next_pg_commit(monkeypatch, pg_store._writer_engine, committed=False)
    assert pg_store.add_reward(decision.decision_id, 0, 1.0, NOW) == "accepted"
    assert lost == [True]
    assert _rewards(pg_store, decision.decision_id) == (1, 1.0)  # stored by the second run, once


@pytest.mark.postgres
def test_a_commit_whose_outcome_cannot_be_learned_is_503_and_not_run_again(
    pg_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server cannot tell in time how the transaction ended (here: the lane's lock, which the writer waits
    for to know that it has, is held elsewhere): the batch fails, and is not run a second time."""
    decision = _decide(pg_store, "c-1")
    holder = pg_store._reader.connect()
    monkeypatch.setattr(batcher, "IN_DOUBT_WAIT_MS", 100)
    key = pg_store._batcher._lane.key

    def hold_the_lanes_lock() -> None:
        holder.exec_driver_sql("SELECT pg_advisory_lock(CAST(%s AS integer), CAST(%s AS integer))",
                               (batcher.LANE_LOCK_CLASS, key))

    pool = ThreadPoolExecutor(1)
    try:
        lost = _fail_next_pg_commit(monkeypatch, pg_store._writer_engine, committed=True, then=hold_the_lanes_lock)
        with pytest.raises(StoreUnavailable):
            pg_store.add_reward(decision.decision_id, 0, 1.0, NOW)
        assert lost == [True]
        # The writer goes on while that lock is still held (as by a transaction the server keeps open after a
        # network partition): the lane's later transactions take a lock of their own (review: they waited).
        answered = pool.submit(_decide, pg_store, "c-2").result(timeout=60)
    finally:
        holder.invalidate()  # closes its session (not back to the pool): the lock is free again
        holder.close()
        pool.shutdown()  # a decide that waited for the lock finishes now that it is free
    assert _rewards(pg_store, decision.decision_id) == (1, 1.0)  # the first run's, committed; no second one
    assert _decisions_of(pg_store, "c-2") == [answered.decision_id]


@pytest.fixture
def store_url(sqlite_url: str) -> str:
    """The suite's `store` fixture, on SQLite only: PostgreSQL's failed COMMITs have their own tests above."""
    return sqlite_url


def _put(key: str) -> WriteJob[str]:
    def job(conn: Connection) -> str:
        conn.execute(t.meta_kv.insert().values(key=key, value="v"))
        return key

    return WriteJob(job, [])


@pytest.mark.parametrize("lane", ["writer thread", "inline"])
def test_a_failed_sqlite_commit_is_rolled_back_before_its_connection_is_dropped_and_runs_again(
    store: Store, monkeypatch: pytest.MonkeyPatch, lane: str
) -> None:
    """SQLITE_BUSY at COMMIT leaves the transaction open, holding the database's write lock; it is rolled back
    before anything else happens to its connection, and the batch runs again on a new one."""

    def write(key: str) -> str:
        if lane == "inline":
            async def inline() -> str:
                return await store.run_async(_put(key))
            return asyncio.run(inline())
        return store.run(_put(key))

    assert write("k0") == "k0"  # the lane keeps its connection from here on
    engine = store._inline_engine if lane == "inline" else store._writer_engine
    assert engine is not None
    dialect = engine.dialect
    real = dialect.do_commit
    failed: list[bool] = []

    def do_commit(connection: Any) -> None:
        if not failed:
            failed.append(True)
            raise sqlite3.OperationalError("database is locked")  # the COMMIT did not happen
        real(connection)

    in_transaction_when_dropped: list[bool] = []

    def on_invalidate(dbapi_connection: sqlite3.Connection, _record: Any, _exc: Any) -> None:
        in_transaction_when_dropped.append(dbapi_connection.in_transaction)

    monkeypatch.setattr(dialect, "do_commit", do_commit)
    event.listen(engine, "invalidate", on_invalidate)
    try:
        assert write("k1") == "k1"
    finally:
        event.remove(engine, "invalidate", on_invalidate)
    assert failed == [True]
    assert in_transaction_when_dropped == [False]
    keys = store.read(lambda c: sorted(r[0] for r in c.execute(select(t.meta_kv.c.key)) if r[0].startswith("k")))
    assert keys == ["k0", "k1"]


@pytest.mark.postgres
def test_locks_left_by_a_transaction_whose_client_vanished_fail_one_batch_not_the_writer(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction the server keeps open after its client vanished mid-COMMIT holds its batch's keys: a retry
    that needs one waits at most the writer's lock timeout (503) instead of holding up the single writer thread
    and every write queued behind it for as long as the server keeps that session (review)."""
    monkeypatch.setattr(engine_module, "POSTGRES_WRITER_OPTIONS",
                        engine_module.POSTGRES_WRITER_OPTIONS.replace(
                            f"lock_timeout={engine_module.WRITER_LOCK_TIMEOUT_MS}", "lock_timeout=300"))
    store = Store(postgres_url)
    holder = store._reader.connect()
    pool = ThreadPoolExecutor(2)
    try:
        store.put_action("a", Action(channels=["web"]), NOW)
        store.put_policy("web", Policy(channels=["web"], reward=RewardSpec(window="1h", aggregation="sum")), NOW)
        decision = _decide(store, "c-1")
        # What the vanished transaction holds: the key of the decision its reward was for.
        holder.exec_driver_sql("SELECT pg_advisory_lock(%s)", (store.lock_id(f"decision:{decision.decision_id}"),))
        retry = pool.submit(store.add_reward, decision.decision_id, 0, 1.0, NOW)
        with pytest.raises(StoreUnavailable):
            retry.result(timeout=60)
        other = pool.submit(_decide, store, "c-2").result(timeout=60)  # the writer goes on
        assert _decisions_of(store, "c-2") == [other.decision_id]
    finally:
        holder.invalidate()
        holder.close()
        pool.shutdown()
        store.close()


@pytest.mark.postgres
def test_a_batch_whose_lock_wait_timed_out_is_not_run_again(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lock timeout on the writer's kept connection is no sign of a dead connection: the batch fails at once
    (503) rather than waiting the lock timeout a second time on a new connection."""
    monkeypatch.setattr(engine_module, "POSTGRES_WRITER_OPTIONS",
                        engine_module.POSTGRES_WRITER_OPTIONS.replace(
                            f"lock_timeout={engine_module.WRITER_LOCK_TIMEOUT_MS}", "lock_timeout=300"))
    store = Store(postgres_url)
    holder = store._reader.connect()
    try:
        store.write(lambda c: c.execute(t.meta_kv.insert().values(key="row", value="0")))  # the kept connection
        holder.begin()
        holder.execute(select(t.meta_kv).where(t.meta_kv.c.key == "row").with_for_update())  # row lock held
        runs = 0

        def update_row(conn: Connection) -> None:
            nonlocal runs
            runs += 1
            conn.execute(t.meta_kv.update().where(t.meta_kv.c.key == "row").values(value="1"))

        kept = store._batcher._lane.conn
        with pytest.raises(StoreUnavailable):
            store.write(update_row)
        assert runs == 1
        assert store._batcher._lane.conn is kept and kept is not None  # no reconnect for a lock timeout
        holder.rollback()
        store.write(update_row)  # on the kept connection
        assert runs == 2 and store._batcher._lane.conn is kept
    finally:
        holder.rollback()
        holder.close()
        store.close()
