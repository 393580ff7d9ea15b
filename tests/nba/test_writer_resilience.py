"""The group-commit writer outlives failures around its batches and dead connections."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import pytest
from sqlalchemy import Connection

from nba.errors import InvalidInput, StoreUnavailable
from nba.store import Store
from nba.store import schema as t
from nba.store.batcher import _Job
from nba.store.store import WriteJob
from tests.nba.test_advisory_locks import _queued_together


def _put(store: Store, key: str) -> None:
    store.write(lambda c: c.execute(t.meta_kv.insert().values(key=key, value="v")))


def _keys(store: Store) -> list[str]:
    return store.read(lambda c: sorted(r[0] for r in c.execute(t.meta_kv.select().with_only_columns(t.meta_kv.c.key))
                                       if r[0].startswith("k")))


def test_a_failure_between_batches_does_not_stop_the_writer(sqlite_url: str) -> None:
    store = Store(sqlite_url)
    calls: list[int] = []

    def broken_checkpoint(_: Connection) -> None:  # e.g. a checkpoint on a full disk, raised by the driver
        calls.append(1)
        raise sqlite3.OperationalError("database or disk is full")

    store._batcher._between_batches = broken_checkpoint
    try:
        _put(store, "k1")
        _put(store, "k2")
        _put(store, "k3")  # the writer ran the hook after k2's batch before it took k3's
        assert len(calls) >= 2 and store._batcher.alive
        store.check_writes()  # healthy: the writes themselves committed
        assert _keys(store) == ["k1", "k2", "k3"]
    finally:
        store.close()


def test_a_dead_kept_connection_costs_no_write(store_url: str) -> None:
    """The writer keeps its connection between batches; when it has died meanwhile (a database restart, an idle
    timeout), the batch runs again on a new connection instead of failing."""
    store = Store(store_url)
    try:
        _put(store, "k1")
        kept = store._batcher._lane.conn
        assert kept is not None
        kept.connection.dbapi_connection.close()  # type: ignore[union-attr]
        _put(store, "k2")
        assert store._batcher._lane.conn is not kept
        assert _keys(store) == ["k1", "k2"]
    finally:
        store.close()


def test_writes_after_close_are_refused_not_left_waiting(sqlite_url: str) -> None:
    store = Store(sqlite_url)
    store.close()
    try:
        _put(store, "k1")
    except Exception as exc:  # StoreUnavailable: the store is shutting down
        assert "shutting down" in str(exc)
    else:
        raise AssertionError("a write after close was accepted")


@pytest.mark.postgres
def test_a_value_the_database_refuses_fails_its_own_write_only(postgres_url: str) -> None:
    """A statement error about one job's value (PostgreSQL's DataError: out of range, too long) is that job's
    422, not a 503 for every write that shares its group commit."""
    store = Store(postgres_url)
    try:
        batcher = store._batcher
        started, gate = threading.Event(), threading.Event()

        def hold(_conn: Connection) -> None:  # keeps the writer busy while the next two queue up together
            started.set()
            gate.wait(30)

        held: Future[None] = Future()
        batcher._enqueue([_Job(hold, (), future=held)])
        assert started.wait(30)
        bad, good = Future[Any](), Future[Any]()
        batcher._enqueue([
            _Job(lambda c: c.exec_driver_sql("SELECT 1e308::float8 * 10"), ("k:bad",), future=bad),
            _Job(lambda c: c.execute(t.meta_kv.insert().values(key="kept", value="1")), ("k:good",), future=good),
        ])
        gate.set()
        held.result(timeout=30)
        with pytest.raises(InvalidInput, match="refused a value"):
            bad.result(timeout=30)
        good.result(timeout=30)
        assert "kept" in _keys(store)
        assert batcher.failing_since is None
    finally:
        store.close()


def _put_job(key: str) -> Callable[[Connection], str]:
    def job(conn: Connection) -> str:
        conn.execute(t.meta_kv.insert().values(key=key, value="v"))
        return key
    return job


def test_a_write_raising_stop_iteration_fails_alone(store_url: str) -> None:
    """asyncio's futures refuse StopIteration (a `next()` on an empty iterator in a write): setting it raised, and
    the writes after it in the batch went unanswered (PostgreSQL) or were answered 503 though committed (SQLite's
    inline commit), so a client's retry would have applied them twice (review)."""
    store = Store(store_url)

    def empty(_conn: Connection) -> str:
        return str(next(iter([])))

    async def three_writes() -> list[Any]:
        writes = [store.run_async(WriteJob(fn, [])) for fn in (_put_job("k-before"), empty, _put_job("k-after"))]
        return await asyncio.wait_for(asyncio.gather(*writes, return_exceptions=True), 30)

    try:
        before, failed, after = asyncio.run(three_writes())
        assert (before, after) == ("k-before", "k-after")
        assert isinstance(failed, RuntimeError) and isinstance(failed.__cause__, StopIteration)
        assert _keys(store) == ["k-after", "k-before"] and store._batcher.failing_since is None
    finally:
        store.close()


@pytest.mark.parametrize("raised", [asyncio.CancelledError, GeneratorExit, KeyboardInterrupt])
def test_a_write_raising_a_base_exception_leaves_the_writer_writing(
    store_url: str, raised: type[BaseException]
) -> None:
    """An exception that is not an Exception ended the writer thread: the writes of its batch waited for ever,
    and every later one was refused (review). Now the write fails alone; one that stops a process (Ctrl-C) fails
    its batch with a 503, and the writer goes on."""
    store = Store(store_url)

    def abort(_conn: Connection) -> None:
        raise raised()

    answers = [Future[Any]() for _ in range(3)]
    writes = (_put_job("k1"), abort, _put_job("k2"))
    jobs = [_Job(fn, (), future=answer) for fn, answer in zip(writes, answers, strict=True)]
    try:
        _queued_together(store._batcher, jobs)
        outcomes = [answer.exception(timeout=30) or answer.result() for answer in answers]
        if raised is KeyboardInterrupt:
            assert all(isinstance(outcome, StoreUnavailable) for outcome in outcomes) and _keys(store) == []
        else:
            assert outcomes[0] == "k1" and outcomes[2] == "k2" and isinstance(outcomes[1], RuntimeError)
            assert _keys(store) == ["k1", "k2"]
        assert store._batcher.alive
        _put(store, "k3")
        assert "k3" in _keys(store)
    finally:
        store.close()
