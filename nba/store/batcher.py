"""Group commit: writes that arrive together share one transaction and one COMMIT.

Each caller blocks until the transaction holding its write has committed, so an answer is never sent for a
write that is not durable, yet concurrent requests pay for one commit instead of one each.

Jobs first run back to back with no savepoints (a savepoint costs as much as a small write). If a job fails
(a conflict, a lost reservation), the whole transaction is rolled back and the batch runs again with each job
in its own savepoint, so the failing job is refused alone and the others commit. Jobs must therefore be
re-runnable: everything they change is in the transaction.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from nba.errors import Conflict, NBAError, StoreUnavailable
from nba.store.engine import lock_keys
from nba.store.prepared import TRANSACTION_CACHE

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass
class _Job:
    fn: Callable[[Connection], Any]
    keys: Sequence[str]
    future: Future[Any] | None = None  # a thread waits on this ...
    loop: asyncio.AbstractEventLoop | None = None  # ... or a coroutine on `awaited`, in this loop
    awaited: asyncio.Future[Any] | None = None


def _rollback(conn: Connection, savepoint: Any) -> None:
    """Undo a failed job, including anything it put in the transaction's shared cache."""
    savepoint.rollback()
    cache = conn.info.get(TRANSACTION_CACHE)
    if cache:
        cache.clear()


def _settle(results: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    """Complete the awaited futures of one batch (runs in their event loop)."""
    for awaited, ok, value in results:
        if awaited.done():  # the waiting request was cancelled; its write committed all the same
            continue
        if ok:
            awaited.set_result(value)
        else:
            awaited.set_exception(value)


class _JobFailed(Exception):
    """A job failed in the savepoint-free pass: roll back and run the batch with savepoints."""


class WriteBatcher:
    """A single writer thread that runs submitted jobs in shared transactions."""

    def __init__(self, engine: Engine, max_batch: int = 256,
                 between_batches: Callable[[Connection], None] | None = None,
                 process_lock: AbstractContextManager[object] | None = None) -> None:
        """`between_batches(conn)` runs on the writer's connection after a batch's answers are out.

        `process_lock`, when given, is held around each transaction, so the writers of several processes on one
        database take turns (see write_lock.py).
        """
        self._engine = engine
        self._process_lock = process_lock if process_lock is not None else nullcontext()
        self._between_batches = between_batches
        self._max_batch = max_batch
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="nba-writer", daemon=True)
        self._closed = False
        self._conn: Connection | None = None
        self.failing_since: float | None = None  # monotonic time of the first failed commit since the last good one
        self.last_error = ""
        self._thread.start()

    def submit(self, fn: Callable[[Connection], T], keys: Sequence[str] = ()) -> T:
        """Run `fn(conn)` in the next group transaction and return its result once committed."""
        future: Future[T] = Future()
        self._put(_Job(fn, keys, future=future))
        return future.result()

    def submit_async(self, fn: Callable[[Connection], T], keys: Sequence[str] = ()) -> asyncio.Future[T]:
        """Like `submit`, for a coroutine: await the result. Call from the running event loop.

        The batch's results reach each event loop in one wake-up, not one per request.
        """
        loop = asyncio.get_running_loop()
        awaited: asyncio.Future[T] = loop.create_future()
        self._put(_Job(fn, keys, loop=loop, awaited=awaited))
        return awaited

    def _put(self, job: _Job) -> None:
        if self._closed:
            raise StoreUnavailable("the store is shutting down")
        self._queue.put(job)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join(timeout=30)
            if self._conn is not None and not self._thread.is_alive():
                self._conn.close()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            self._loop()
        finally:  # whatever ends the thread, nobody may wait for ever on a write it will not run
            self._closed = True
            leftover: list[_Job] = []
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    leftover.append(job)
            if leftover:
                self._deliver(leftover, [(False, StoreUnavailable("the store is shutting down"))] * len(leftover))

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            try:
                self._commit(batch)
            except Exception as exc:  # a bug or a driver error outside SQLAlchemy: fail the batch, keep writing
                log.exception("group commit of %d writes failed unexpectedly", len(batch))
                self._drop_connection()
                self._fail(batch, exc)
            if stop:
                return

    def _commit(self, batch: list[_Job]) -> None:
        try:
            try:
                outcomes = self._attempt(batch)
            except _JobFailed:
                outcomes = self._transaction(batch, savepoints=True)
        except (SQLAlchemyError, StoreUnavailable) as exc:  # the database failed, or its write lock timed out
            self._fail(batch, exc)
            return
        self.failing_since = None
        self._deliver(batch, outcomes)
        if self._between_batches is not None and self._conn is not None:
            try:
                self._between_batches(self._conn)
            except Exception as exc:  # e.g. a checkpoint on a full disk: the writes themselves went through
                log.warning("work between group commits failed: %s", exc)

    def _attempt(self, batch: list[_Job]) -> list[tuple[bool, Any]]:
        """The savepoint-free pass; once more on a new connection if a kept one turned out to be dead.

        The writer keeps its connection between batches, so nothing pings it first: a database restart or an
        idle timeout shows up as a failure of the next batch, which then runs again on a fresh connection.
        """
        reused = self._conn is not None
        try:
            return self._transaction(batch, savepoints=False)
        except SQLAlchemyError as exc:
            if not reused or isinstance(exc, IntegrityError):
                raise
            log.warning("writer connection failed (%s); retrying the batch on a new connection", exc)
            return self._transaction(batch, savepoints=False)

    def _fail(self, batch: list[_Job], exc: Exception) -> None:
        log.error("group commit of %d writes failed: %s", len(batch), exc)
        if self.failing_since is None:
            self.failing_since = time.monotonic()
        self.last_error = f"the store could not commit: {exc.__class__.__name__}"
        error = StoreUnavailable(self.last_error)
        self._deliver(batch, [(False, error)] * len(batch))

    def _deliver(self, batch: list[_Job], outcomes: list[tuple[bool, Any]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for job, (ok, value) in zip(batch, outcomes, strict=True):
            if job.future is not None:
                if ok:
                    job.future.set_result(value)
                else:
                    job.future.set_exception(value)
            elif job.loop is not None and job.awaited is not None:
                by_loop.setdefault(job.loop, []).append((job.awaited, ok, value))
        for loop, results in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, results)
            except RuntimeError:  # that event loop has closed: nobody is waiting any more
                pass

    def _transaction(self, batch: list[_Job], savepoints: bool) -> list[tuple[bool, Any]]:
        outcomes: list[tuple[bool, Any]] = []
        conn = self._connection()
        try:
            with self._process_lock, conn.begin():
                conn.info[TRANSACTION_CACHE] = {}
                try:
                    lock_keys(conn, [k for job in batch for k in job.keys])
                    self._run_jobs(conn, batch, savepoints, outcomes)
                finally:
                    conn.info.pop(TRANSACTION_CACHE, None)
        except SQLAlchemyError:
            self._drop_connection()  # it may be broken: the next attempt starts on a fresh one
            raise
        return outcomes

    def _connection(self) -> Connection:
        """The writer thread's own connection, kept between batches (no pool checkout and reset per batch)."""
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            self._conn = self._engine.connect()
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.invalidate()
            except SQLAlchemyError:
                pass
            self._conn = None

    def _run_jobs(self, conn: Connection, batch: list[_Job], savepoints: bool,
                  outcomes: list[tuple[bool, Any]]) -> None:
        for job in batch:
            if not savepoints:
                try:
                    outcomes.append((True, job.fn(conn)))
                except IntegrityError as exc:
                    raise _JobFailed() from exc
                except DBAPIError:
                    raise
                except Exception as exc:
                    raise _JobFailed() from exc
                continue
            savepoint = conn.begin_nested()
            try:
                result = job.fn(conn)
            except (NBAError, ValueError) as exc:
                _rollback(conn, savepoint)
                outcomes.append((False, exc))
            except IntegrityError as exc:
                _rollback(conn, savepoint)
                outcomes.append((False, Conflict(f"conflicting write: {exc.orig}")))
            except DBAPIError:
                raise
            except Exception as exc:
                log.exception("write job failed")
                _rollback(conn, savepoint)
                outcomes.append((False, exc))
            else:
                savepoint.commit()
                outcomes.append((True, result))
