"""Group commit: writes that arrive together share one transaction and one COMMIT.

Each caller blocks until the transaction holding its write has committed, so an answer is never sent for a
write that is not durable, yet concurrent requests pay for one commit instead of one each. Every job runs in
its own savepoint: a job that fails (a conflict, a failed reservation) is rolled back alone.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from nba.errors import Conflict, NBAError, StoreUnavailable
from nba.store.engine import lock_keys

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass
class _Job:
    fn: Callable[[Connection], Any]
    keys: Sequence[str]
    future: Future[Any] = field(default_factory=Future)


class WriteBatcher:
    """A single writer thread that runs submitted jobs in shared transactions."""

    def __init__(self, engine: Engine, max_batch: int = 256) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="nba-writer", daemon=True)
        self._closed = False
        self._thread.start()

    def submit(self, fn: Callable[[Connection], T], keys: Sequence[str] = ()) -> T:
        """Run `fn(conn)` in the next group transaction and return its result once committed."""
        if self._closed:
            raise StoreUnavailable("the store is shutting down")
        job = _Job(fn, keys)
        self._queue.put(job)
        result: T = job.future.result()
        return result

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join(timeout=30)

    def _run(self) -> None:
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
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[_Job]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        try:
            with self._engine.connect() as conn:
                with conn.begin():
                    lock_keys(conn, [k for job in batch for k in job.keys])
                    for job in batch:
                        savepoint = conn.begin_nested()
                        try:
                            result = job.fn(conn)
                        except (NBAError, ValueError) as exc:
                            savepoint.rollback()
                            outcomes.append((False, exc))
                        except IntegrityError as exc:
                            savepoint.rollback()
                            outcomes.append((False, Conflict(f"conflicting write: {exc.orig}")))
                        except DBAPIError:
                            raise
                        except Exception as exc:
                            log.exception("write job failed")
                            savepoint.rollback()
                            outcomes.append((False, exc))
                        else:
                            savepoint.commit()
                            outcomes.append((True, result))
        except SQLAlchemyError as exc:
            log.error("group commit of %d writes failed: %s", len(batch), exc)
            error = StoreUnavailable(f"the store could not commit: {exc.__class__.__name__}")
            for job in batch:
                job.future.set_exception(error)
            return
        for job, (ok, value) in zip(batch, outcomes, strict=True):
            if ok:
                job.future.set_result(value)
            else:
                job.future.set_exception(value)
