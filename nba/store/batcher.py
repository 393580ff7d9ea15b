"""Group commit: writes that arrive together share one transaction and one COMMIT.

Each caller blocks until the transaction holding its write has committed, so an answer is never sent for a
write that is not durable, yet concurrent requests pay for one commit instead of one each.

Jobs first run back to back with no savepoints (a savepoint costs as much as a small write). If a job fails
(a conflict, a lost reservation), the whole transaction is rolled back and the batch runs again with each job
in its own savepoint, so the failing job is refused alone and the others commit. Jobs must therefore be
re-runnable: everything they change is in the transaction.

Two lanes commit: a writer thread, for callers that block, and, on SQLite, the event loop itself for coroutines
(`submit_async`). A loop collects the writes its requests submit in one pass and commits them inline once that
pass is done, if the write lock is free at that moment. Handing every write to a thread made the loop and the
writer pass the GIL back and forth at every statement either ran (the driver lets go of it for each): with 1
worker at 20 candidates, committing inline gave 1,466-1,726 decisions/s against 1,132-1,206, with less CPU per
decision on the loop's thread.

When this process's writer thread holds the lock, the loop hands its writes over: the writer takes them with its
next batch. When another worker process holds it, a helper thread waits until it is free and wakes the loop,
which tries again and commits what its requests wrote meanwhile (a chunk per pass of the loop); the loop itself
never waits. If the other process has taken the lock again by then, three times over, the writes go to the
writer thread, which queues for the lock in the kernel. Handing every such write to the writer thread brought
the GIL ping-pong back exactly when the loop was busiest: with 2 workers a third of the commits went that way
and took 1.4 ms at the median, 17-22 ms at p99 and up to 127 ms, against 0.5 / 3 / 8 ms inline.

A batch runs again only if its transaction is known not to have committed. One whose BEGIN or statement failed
has not (a kept connection that died meanwhile shows up so), nor, on SQLite, one whose COMMIT failed: that
transaction is rolled back at once. PostgreSQL may have committed a transaction whose acknowledgement was lost with
the connection; run again, its rewards would be stored twice and its decisions answered 409 by their own keys. So
there, just before COMMIT, each transaction takes an advisory lock of its lane and reads its id, in one statement.
If COMMIT fails, a new connection waits for that lock, which the old transaction holds until it has ended, and asks
the server how it ended: committed, the answers go out; aborted, the batch may run again; not known in time, 503,
and the batch does not run again. The statement costs a round trip per batch (about 0.1 ms on a local server: a lone
decision's write went from 2.13 to 2.24 ms at the median, a lone small write from 0.59 to 0.68 ms, less per write as
batches grow); the driver offers no other way to learn a transaction's id before its COMMIT is sent.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError, SQLAlchemyError

from nba.errors import Conflict, InvalidInput, LocksHeld, NBAError, StoreUnavailable
from nba.store.engine import WRITER_LOCK_TIMEOUT_MS, KeysBusy, key_modes, lock_keys, lock_timed_out
from nba.store.prepared import TRANSACTION_CACHE, Prepared
from nba.store.write_lock import ProcessWriteLock

T = TypeVar("T")
log = logging.getLogger(__name__)
# Times a loop's batch waits for another process's lock before the writer thread queues for it instead. With
# one wait, 4.5% of the commits of 2 busy workers lost the race for the freed lock and went to the writer thread.
MAX_LOCK_WAITS = 3

# PostgreSQL: each lane's transaction takes an advisory lock of the lane just before its COMMIT and holds it until
# it has ended. Its keys are pairs of 32-bit ints, a key space apart from the 64-bit keys of `lock_keys`.
LANE_LOCK_CLASS = 0x4E4241  # "NBA"
# The lane's lock and the transaction's id (NULL if it has written nothing), read in one statement before COMMIT.
_MARK = Prepared(text(f"SELECT pg_advisory_xact_lock({LANE_LOCK_CLASS}, CAST(:lane AS integer)), "
                      "CAST(pg_current_xact_id_if_assigned() AS text)"))
_WAIT_FOR_LANE = text(f"SELECT pg_advisory_xact_lock({LANE_LOCK_CLASS}, CAST(:lane AS integer))")
_XACT_STATUS = text("SELECT pg_xact_status(CAST(:xid AS xid8))")
# How long the writer waits to learn how a transaction whose COMMIT failed has ended before it gives up (503).
IN_DOUBT_WAIT_MS = 5_000
# PostgreSQL: at most this many advisory-lock keys in one group transaction (a job with more runs alone: a
# 1,000-event request has 2,000). Each lock is a slot of the server's lock table, which all sessions share
# (max_locks_per_transaction x max_connections: 6,400 by default); sixteen 1,000-event requests in one group
# commit needed 32,000, and every write of the group failed ("out of shared memory").
MAX_BATCH_KEYS = 2_048
# PostgreSQL: how long the group commit's lane waits for a lock key another session holds before it moves the writes
# that need it to the patient lane (which waits up to the writer's lock timeout, 10 s). Locks are normally held for
# the few milliseconds of another host's transaction; a host frozen mid-transaction holds them until it resumes or
# its session ends, and every write queued behind the one waiting would wait as long.
LOCK_PATIENCE_MS = 200
LOCK_HELD = "a lock this write needs has been held by another session for longer than the lock timeout"


@dataclass
class _Job:
    fn: Callable[[Connection], Any]
    keys: Sequence[str]
    future: Future[Any] | None = None  # a thread waits on this ...
    loop: asyncio.AbstractEventLoop | None = None  # ... or a coroutine on `awaited`, in this loop
    awaited: asyncio.Future[Any] | None = None
    wait_apart: bool = True  # False: answered LocksHeld rather than set apart for a busy key
    # Lock ids it would rather do without than wait for: held elsewhere, and no other key of it, it is answered
    # LocksHeld (a decision then leaves out the budgeted action whose key it is) rather than set apart.
    optional: frozenset[int] = frozenset()

    def gives_up(self, held: frozenset[int]) -> bool:
        """Whether, finding `held` held by another session, this write is answered `LocksHeld` instead of waiting."""
        return not self.wait_apart or (bool(held) and held <= self.optional)


_Wait = tuple[int, bool]  # a lock key id, and whether it was asked for exclusively


def _blocked_in(batch: list[_Job], busy: frozenset[int],
                modes: Callable[[Sequence[str]], dict[int, bool]]) -> Callable[[dict[int, bool]], frozenset[_Wait]]:
    """Which of a write's keys the batch's busy keys block: a key the batch asked for exclusively (a write in it
    needs it so) is held elsewhere for that write, not surely for one needing it only shared (decisions hold the
    catalog's lock shared, a catalog change exclusively): those run again, alone in their mode."""
    exclusive = {key_id for job in batch for key_id, excl in modes(job.keys).items() if excl and key_id in busy}

    def blocked(needs: dict[int, bool]) -> frozenset[_Wait]:
        return frozenset((key_id, key_id in exclusive) for key_id, excl in needs.items()
                         if key_id in busy and (excl or key_id not in exclusive))

    return blocked


def _rollback(conn: Connection, savepoint: Any) -> None:
    """Undo a failed job, including anything it put in the transaction's shared cache."""
    savepoint.rollback()
    cache = conn.info.get(TRANSACTION_CACHE)
    if cache:
        cache.clear()


def _mark(conn: Connection, lane: _Lane) -> str | None:
    """Just before COMMIT on PostgreSQL: take the lane's advisory lock and return the transaction's id (None if it
    has written nothing, and everywhere else), so how the transaction ended can be learned if COMMIT fails."""
    if conn.dialect.name != "postgresql":
        return None
    xid: str | None = _MARK.first(conn, {"lane": lane.key})[1]
    return xid


def _transaction_status(lane: _Lane, key: int, xid: str) -> str | None:
    """How the lane's last transaction ended, asked on a new connection once it has ended: 'committed' or
    'aborted' (None or 'in progress' would mean unknown). StoreUnavailable if the server cannot tell in time.

    The wait for the lane's lock is what makes the answer final: the transaction held it until it had committed
    or aborted, and a server that has not yet noticed the lost connection is still running it. This transaction
    is rolled back, not committed (it wrote nothing): a failing COMMIT cannot take the answer away; if even that
    fails, its connection is closed, so the lane's lock is never left held by a connection back in the pool.
    """
    conn: Connection | None = None
    try:  # any error here is SQLAlchemy's, which must not escape: to the caller it would mean "not committed"
        conn = lane.engine.connect()
        conn.execute(text(f"SET LOCAL lock_timeout = {IN_DOUBT_WAIT_MS}"))
        conn.execute(_WAIT_FOR_LANE, {"lane": key})
        status: str | None = conn.execute(_XACT_STATUS, {"xid": xid}).scalar()
    except SQLAlchemyError as exc:
        if conn is not None:
            _discard(conn)
        raise StoreUnavailable(f"the store may or may not have committed: how the transaction ended is unknown "
                               f"({exc.__class__.__name__})") from exc
    try:
        conn.rollback()
        conn.close()
    except SQLAlchemyError:
        _discard(conn)
    return status


def store_errors(conn: Connection) -> tuple[type[Exception], ...]:
    """What a failing database raises through `conn`: SQLAlchemy's error and, should one escape its wrapping,
    the driver's own. Such an error is the store's, never one write's."""
    return (DBAPIError, conn.dialect.loaded_dbapi.Error)


def _discard(conn: Connection) -> None:
    """Close a connection that failed for good (its session, and the locks it holds, end with it)."""
    try:
        conn.invalidate()
    except SQLAlchemyError:
        pass


def _settle(results: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    """Complete the awaited futures of one batch (runs in their event loop); one that cannot be completed is
    logged and the others still are."""
    for awaited, ok, value in results:
        if awaited.done():  # the waiting request was cancelled; its write committed all the same
            continue
        try:
            if ok:
                awaited.set_result(value)
            else:
                awaited.set_exception(value)
        except Exception:
            log.exception("a write's answer could not be given")


# What stops the process: never taken for one write's failure (the batch fails, and the exception goes on).
_STOPPING = (KeyboardInterrupt, SystemExit)


def _job_error(exc: BaseException) -> Exception:
    """What a job that raised `exc` answers: `exc`, or a RuntimeError from it where a future cannot hold it
    (asyncio refuses StopIteration: with it, the other writes of its batch went unanswered) or where it is not an
    Exception (a CancelledError or GeneratorExit raised into a caller's code)."""
    if isinstance(exc, Exception) and not isinstance(exc, (StopIteration, StopAsyncIteration)):
        return exc
    error = RuntimeError(f"the write failed: {exc!r}")
    error.__cause__ = exc
    return error


class _JobFailed(Exception):
    """A job failed in the savepoint-free pass: roll back and run the batch with savepoints."""


class _Busy(Exception):
    """An inline commit found the database locked by a writer outside the group commit: hand the batch over."""


def _noop(_conn: Connection) -> None:
    """A write with nothing to write: wakes the writer thread for its work between batches."""


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _Lane:
    """A connection group commits run on, kept between batches (no pool checkout and reset per batch)."""

    def __init__(self, engine: Engine, inline: bool, patience_ms: int | None = None) -> None:
        self.engine = engine
        self.inline = inline
        self.patience_ms = patience_ms  # how long it waits for a lock key held elsewhere (None: the lock timeout)
        # Or, when set, until this (monotonic) time: a wait tried again on a new connection gets only what is left.
        self.until: float | None = None
        self.try_first = True  # keys are tried without waiting before any is waited for (see lock_keys)
        self.conn: Connection | None = None
        self.key = secrets.randbits(31)  # of its advisory lock (PostgreSQL); two lanes sharing one only wait more

    def wait_ms(self) -> int | None:
        """How long a lock wait may last now: `patience_ms`, or what is left until `until`."""
        if self.until is None:
            return self.patience_ms
        return max(0, int((self.until - time.monotonic()) * 1000))

    def connection(self) -> Connection:
        if self.conn is None or self.conn.closed or self.conn.invalidated:
            self.conn = self.engine.connect()
        return self.conn

    def drop(self) -> None:
        """Forget a connection that may be broken: the next batch starts on a fresh one."""
        if self.conn is not None:
            try:
                self.conn.invalidate()
            except SQLAlchemyError:
                pass
            self.conn = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class WriteBatcher:
    """A single writer thread that runs submitted jobs in shared transactions."""

    def __init__(self, engine: Engine, max_batch: int = 256,
                 between_batches: Callable[[Connection], None] | None = None,
                 process_lock: ProcessWriteLock | None = None,
                 inline_engine: Engine | None = None,
                 between_due: Callable[[], bool] | None = None, lock_namespace: str = "") -> None:
        """`between_batches(conn)` runs on the writer's connection after a batch's answers are out; after an
        inline batch, the writer thread is woken for it when `between_due()` says it has something to do.
        `lock_namespace` prefixes every lock key (PostgreSQL: `engine.lock_namespace`).

        `process_lock`, when given, is held around each transaction, so the writers of several processes on one
        database take turns (see write_lock.py). With it and an `inline_engine` (SQLite; its busy timeout
        should be short), event loops commit their writes inline on a connection of that engine.
        """
        postgres = engine.dialect.name == "postgresql"
        self._namespace = lock_namespace
        self._lane = _Lane(engine, inline=False, patience_ms=LOCK_PATIENCE_MS if postgres else None)
        # PostgreSQL: writes whose lock key another session held past the lane's patience, run one at a time, each
        # by the deadline it was set apart with (the lock timeout from then).
        self._patient = _Lane(engine, inline=False, patience_ms=0) if postgres else None
        self._patient_queue: queue.SimpleQueue[tuple[_Job, float] | None] = queue.SimpleQueue()
        # Keys found held elsewhere lately (id -> monotonic time until which they count): the group commit tries
        # them without waiting, so a key a frozen host holds costs its batches no 200 ms each; a key had again
        # (committed in either lane) leaves at once.
        self._busy: dict[int, float] = {}
        self._busy_lock = threading.Lock()
        self._process_lock: AbstractContextManager[object] = (
            process_lock if process_lock is not None else nullcontext()
        )
        self._inline_lock = process_lock if inline_engine is not None else None
        self._inline = _Lane(inline_engine, inline=True) if inline_engine is not None else None
        self._inline_pending: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
        # Loops whose writes wait for another process's lock: the batch (their next writes join it) and how often
        # it has waited already. One helper thread waits for them in turn (`_wait_requests`, one per loop).
        self._inline_waiting: dict[asyncio.AbstractEventLoop, tuple[list[_Job], int]] = {}
        self._wait_requests: queue.SimpleQueue[asyncio.AbstractEventLoop | None] = queue.SimpleQueue()
        self._between_batches = between_batches
        self._between_due = between_due
        self._between_requested = False
        self._max_batch = max_batch
        # PostgreSQL: advisory-lock keys one group transaction may take (see MAX_BATCH_KEYS); SQLite takes none.
        self._max_keys = MAX_BATCH_KEYS if engine.dialect.name == "postgresql" else None
        self._carry: _Job | None = None  # a job that did not fit in the last batch's keys: the next batch's first
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._queue_lock = threading.Lock()  # `_closed` and queueing, so no job is queued after the last drain
        self._thread = threading.Thread(target=self._run, name="nba-writer", daemon=True)
        self._closed = False
        self.failing_since: float | None = None  # monotonic time of the first failed commit since the last good one
        self.last_error = ""
        self._thread.start()
        self._patient_thread = threading.Thread(target=self._run_patient, name="nba-writer-patient", daemon=True)
        if self._patient is not None:
            self._patient_thread.start()
        if self._inline_lock is not None:
            threading.Thread(target=self._wait_for_lock, args=(self._inline_lock,), name="nba-inline-lock",
                             daemon=True).start()

    def submit(self, fn: Callable[[Connection], T], keys: Sequence[str] = (), wait_apart: bool = True,
               optional_keys: Sequence[str] = ()) -> T:
        """Run `fn(conn)` in the next group transaction and return its result once committed. With
        `wait_apart=False`, a write that needs a key another session holds (PostgreSQL) is not set apart to wait
        for it: it raises `LocksHeld` naming the keys held, and the caller may go on without them. With
        `optional_keys` (some of `keys`), so does a write of which only those are held elsewhere."""
        future: Future[T] = Future()
        self._put(_Job(fn, keys, future=future, wait_apart=wait_apart, optional=self._lock_ids(optional_keys)))
        return future.result()

    def submit_async(self, fn: Callable[[Connection], T], keys: Sequence[str] = (),
                     inline: bool = True, optional_keys: Sequence[str] = ()) -> asyncio.Future[T]:
        """Like `submit`, for a coroutine: await the result. Call from the running event loop.

        With `inline=False` the write goes to the writer thread even where the loop could commit it.

        The batch's results reach each event loop in one wake-up, not one per request.
        """
        loop = asyncio.get_running_loop()
        awaited: asyncio.Future[T] = loop.create_future()
        job = _Job(fn, keys, loop=loop, awaited=awaited, optional=self._lock_ids(optional_keys))
        if self._inline is None or not inline:
            self._put(job)
            return awaited
        if self._closed:
            raise StoreUnavailable("the store is shutting down")
        waiting = self._inline_waiting.get(loop)
        if waiting is not None:  # this loop's earlier writes wait for the lock: commit with them
            waiting[0].append(job)
            return awaited
        pending = self._inline_pending.get(loop)
        if pending is None:  # the first write of this pass of the loop: commit once the pass is done
            self._inline_pending[loop] = [job]
            loop.call_soon(self._flush_inline, loop)
        else:
            pending.append(job)
        return awaited

    def _lock_ids(self, keys: Sequence[str]) -> frozenset[int]:
        """Advisory lock ids of `keys` where a key can be held by another session (PostgreSQL), else none."""
        return frozenset(self._modes(keys)) if keys and self._patient is not None else frozenset()

    def _modes(self, keys: Sequence[str]) -> dict[int, bool]:
        return key_modes(keys, self._namespace)

    def _flush_inline(self, loop: asyncio.AbstractEventLoop) -> None:
        """Commit the writes a pass of this event loop submitted, on the loop's thread, if the lock is free."""
        batch = self._inline_pending.pop(loop, [])
        self._guarded(batch, lambda: self._flush_jobs(batch, loop))

    def _guarded(self, batch: list[_Job], step: Callable[[], None]) -> None:
        """Run a step of an inline commit on the loop; whatever goes wrong, every write of it gets an answer."""
        try:
            step()
        except BaseException as exc:
            log.exception("inline group commit failed unexpectedly")
            self._deliver(batch, [(False, StoreUnavailable(f"the store could not commit: {exc!r}"))] * len(batch))
            if not isinstance(exc, Exception):
                raise

    def _flush_jobs(self, batch: list[_Job], loop: asyncio.AbstractEventLoop, waits: int = 0) -> None:
        """Commit a chunk of the batch inline if the lock is free, and leave the rest for the loop's next pass;
        `waits`: how often the batch has already waited for another process's lock."""
        lock = self._inline_lock
        assert lock is not None
        if not batch:
            return
        if self._closed:
            self._hand_over(batch)  # refused: the writer thread has stopped or is stopping
            return
        if not lock.try_acquire():
            if waits >= MAX_LOCK_WAITS or lock.held_in_this_process():
                # This process's writer thread has it and takes these with its next batch; or another process
                # took it again each time before this loop could: the writer thread queues for it in the kernel,
                # so a batch waits through the helper a bounded number of times.
                self._hand_over(batch)
            else:
                self._request_wait(loop, batch, waits)  # a helper thread waits for the lock, not the loop
            return
        if self._closed:  # closed meanwhile: the lock's file may be gone, so commit nothing more
            lock.release()
            self._hand_over(batch)
            return
        chunk, rest = batch[:self._max_batch], batch[self._max_batch:]
        if not self._commit_holding_lock(chunk):
            self._hand_over(rest)
        elif rest:  # the loop serves its requests between one chunk and the next
            self._requeue(loop, rest)

    def _requeue(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job]) -> None:
        pending = self._inline_pending.get(loop)
        if pending is None:
            self._inline_pending[loop] = jobs
            loop.call_soon(self._flush_inline, loop)
        else:
            pending[:0] = jobs

    def _commit_holding_lock(self, chunk: list[_Job]) -> bool:
        """Commit a chunk inline with the write lock held (released here); False if it went to the writer thread
        because a writer outside the group commit holds SQLite's own lock."""
        assert self._inline is not None and self._inline_lock is not None
        try:
            self._commit(chunk, self._inline)
        except _Busy:
            self._hand_over(chunk)
            return False
        except Exception as exc:  # a bug or a driver error outside SQLAlchemy: fail the batch, keep writing
            log.exception("inline group commit of %d writes failed unexpectedly", len(chunk))
            self._inline.drop()
            self._fail(chunk, exc)
        finally:
            self._inline_lock.release()
        if self._between_due is not None and not self._between_requested and self._between_due():
            self._between_requested = True  # the writer thread runs the work between batches
            self._enqueue([_Job(_noop, ())])
        return True

    def _request_wait(self, loop: asyncio.AbstractEventLoop, batch: list[_Job], waits: int) -> None:
        with self._queue_lock:  # not after close() has told the helper to stop: nobody would answer
            if not self._closed:
                self._inline_waiting[loop] = (batch, waits)
                self._wait_requests.put(loop)
                return
        self._hand_over(batch)  # refused: the store is closing

    def _wait_for_lock(self, lock: ProcessWriteLock) -> None:
        """The helper thread: wait until the write lock is free, then wake the loop that asked, which tries again.

        It lets go of the lock at once rather than hold it for the loop: held for a busy loop, it would keep the
        other writers waiting while the loop finishes other work, and a loop blocked in a synchronous write of
        its own (as at shutdown) would never take it.
        """
        while True:
            loop = self._wait_requests.get()
            if loop is None:
                return
            error: Exception | None = None
            try:
                with lock:  # blocks in the kernel; gives up after the lock's timeout
                    pass
            except Exception as exc:
                error = exc
            try:
                loop.call_soon_threadsafe(self._lock_freed, loop, error)
            except RuntimeError:  # that event loop has closed: nobody is waiting any more
                self._inline_waiting.pop(loop, None)

    def _lock_freed(self, loop: asyncio.AbstractEventLoop, error: Exception | None) -> None:
        """On the loop: the write lock was free a moment ago (or could not be had: `error`); try once more."""
        batch, waits = self._inline_waiting.pop(loop, ([], 0))
        if error is not None:
            self._fail(batch, error)
            return
        self._guarded(batch, lambda: self._flush_jobs(batch, loop, waits + 1))

    def _hand_over(self, jobs: list[_Job]) -> None:
        """Give jobs to the writer thread; if it has stopped, refuse them rather than leave them waiting."""
        if not self._enqueue(jobs):
            self._deliver(jobs, [(False, StoreUnavailable("the store is shutting down"))] * len(jobs))

    def _enqueue(self, jobs: list[_Job]) -> bool:
        """Queue jobs for the writer thread, unless it has stopped (then nobody would ever run them)."""
        with self._queue_lock:
            if self._closed:
                return False
            for job in jobs:
                self._queue.put(job)
            return True

    def _put(self, job: _Job) -> None:
        if not self._enqueue([job]):
            raise StoreUnavailable("the store is shutting down")

    def close(self) -> None:
        with self._queue_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
            self._wait_requests.put(None)  # after the waits already asked for: each still gets its answer
        self._thread.join(timeout=30)
        if not self._thread.is_alive():
            self._lane.close()
        if self._patient is not None:
            self._patient_thread.join(timeout=30)
            if not self._patient_thread.is_alive():
                self._patient.close()
        if self._inline is not None and self._inline_lock is not None and self._inline_lock.try_acquire():
            try:  # not while a loop of another thread is committing on it
                self._inline.close()
            finally:
                self._inline_lock.release()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and (self._patient is None or self._patient_thread.is_alive())

    def _run(self) -> None:
        try:
            self._loop()
        finally:  # whatever ends the thread, nobody may wait for ever on a write it will not run
            with self._queue_lock:  # from now on nothing is queued (see _enqueue)
                self._closed = True
            leftover: list[_Job] = [self._carry] if self._carry is not None else []
            self._carry = None
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    leftover.append(job)
            if leftover:
                self._deliver(leftover, [(False, StoreUnavailable("the store is shutting down"))] * len(leftover))
            self._patient_queue.put(None)  # after every write this thread could have moved there

    def _run_patient(self) -> None:
        """The patient lane's thread: each write alone. Its keys are tried first (another write's wait may have used
        up its time, and its own key may be free by now); then, while its deadline (the lock timeout from when it
        was set apart) allows, waited for in order; then 503. So every write set apart is answered within about
        that time, however many wait before it."""
        patient = self._patient
        assert patient is not None
        while True:
            item = self._patient_queue.get()
            if item is None:
                return
            job, deadline = item
            try:
                patient.until, patient.try_first = None, True  # its keys tried, none waited for
                try:
                    self._commit([job], patient)
                except KeysBusy as busy:
                    if job.gives_up(busy.key_ids) or deadline - time.monotonic() < 0.001:
                        self._deliver([job], [(False, self._held(job, busy))])
                        continue
                    # Until the deadline, however the wait goes: run again on a new connection (a dead one), it
                    # waited the whole time again.
                    patient.until, patient.try_first = deadline, False
                    try:
                        self._commit([job], patient)
                    except KeysBusy as still:
                        self._deliver([job], [(False, self._held(job, still))])
            except BaseException as exc:  # a bug or a driver error outside SQLAlchemy: fail the write, keep going
                log.exception("patient commit failed unexpectedly")
                patient.drop()
                self._fail([job], exc)

    @staticmethod
    def _held(job: _Job, busy: KeysBusy) -> NBAError:
        """The answer of a patient write whose keys stayed held: `LocksHeld` if it would do without them, else 503."""
        return LocksHeld(busy.key_ids) if job.gives_up(busy.key_ids) else StoreUnavailable(LOCK_HELD)

    def _loop(self) -> None:
        stopping = False  # the stop was read: what was queued before it is committed, then the thread ends
        while True:
            if self._carry is not None:
                first, self._carry = self._carry, None
            elif stopping:
                return
            else:
                queued = self._queue.get()
                if queued is None:
                    return
                first = queued
            batch = [first]
            keys = len(first.keys)
            while len(batch) < self._max_batch and not stopping:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                if self._max_keys is not None and keys + len(nxt.keys) > self._max_keys:
                    self._carry = nxt  # it starts the next batch (alone, if it has more keys by itself)
                    break
                batch.append(nxt)
                keys += len(nxt.keys)
            try:
                self._commit(batch, self._lane)
            except BaseException as exc:  # a bug or a driver error outside SQLAlchemy: fail the batch, keep writing
                # (even a KeyboardInterrupt raised by a job: nothing would write for this process any more)
                log.exception("group commit of %d writes failed unexpectedly", len(batch))
                self._lane.drop()
                self._fail(batch, exc)
            finally:  # even if this batch failed before its work between batches: the next inline one asks again
                self._between_requested = False

    def _commit(self, batch: list[_Job], lane: _Lane) -> None:
        """Commit a batch and answer its writes. On PostgreSQL's group-commit lane, writes set apart for a busy key
        leave `batch` (narrowed in place: a caller that fails the batch after an unexpected error fails only the
        writes still in it, never one the patient lane answers)."""
        setting_apart = lane is self._lane and self._patient is not None
        while batch:
            try:
                try:
                    outcomes = self._attempt(batch, lane)
                except _JobFailed:
                    outcomes = self._transaction(batch, lane, savepoints=True)
            except KeysBusy as busy:  # rolled back
                if not setting_apart:  # the patient lane: its thread decides (_run_patient)
                    raise
                # The writes needing those keys wait apart, the rest run again.
                self._set_apart(batch, _blocked_in(batch, busy.key_ids, self._modes))
                continue
            except (SQLAlchemyError, StoreUnavailable) as exc:  # the database failed, or its write lock timed out
                self._fail(batch, exc)
                return
            break
        if not batch:
            return
        if self._patient is not None and not lane.inline:
            self._had(batch)
        self.failing_since = None
        self._deliver(batch, outcomes)
        if lane.inline:
            return
        if self._between_batches is not None and lane.conn is not None:
            try:
                self._between_batches(lane.conn)
            except Exception as exc:  # e.g. a checkpoint on a full disk: the writes themselves went through
                log.warning("work between group commits failed: %s", exc)

    def _set_apart(self, batch: list[_Job], blocked: Callable[[dict[int, bool]], frozenset[_Wait]]) -> None:
        """Move the writes of `batch` that `blocked` says wait for a lock to the patient lane, or answer them
        `LocksHeld` (`_Job.gives_up`); each leaves `batch` as it goes (a caller failing the batch after an
        unexpected error then fails only the writes still in it). The keys they wait for are remembered."""
        deadline = time.monotonic() + WRITER_LOCK_TIMEOUT_MS / 1000
        moved = 0
        for job in list(batch):
            waits = blocked(self._modes(job.keys))
            if not waits:
                continue
            batch.remove(job)
            with self._busy_lock:
                for key_id, _ in waits:
                    self._busy[key_id] = deadline
            held = frozenset(key_id for key_id, _ in waits)
            if job.gives_up(held):
                self._deliver([job], [(False, LocksHeld(held))])
                continue
            self._patient_queue.put((job, deadline))
            moved += 1
        if moved:
            log.warning("%d writes wait apart for locks held elsewhere", moved)

    def _remembered(self) -> frozenset[int]:
        """The keys found held elsewhere lately, whose time has not run out."""
        now = time.monotonic()
        with self._busy_lock:
            for key_id in [k for k, until in self._busy.items() if until <= now]:
                del self._busy[key_id]
            return frozenset(self._busy)

    def _had(self, batch: list[_Job]) -> None:
        """The batch's keys were all had: none is held elsewhere any more."""
        with self._busy_lock:
            if self._busy:
                for job in batch:
                    for key_id in self._modes(job.keys):
                        self._busy.pop(key_id, None)

    def _attempt(self, batch: list[_Job], lane: _Lane) -> list[tuple[bool, Any]]:
        """The savepoint-free pass; once more on a new connection if a kept one turned out to be dead.

        The writer keeps its connection between batches, so nothing pings it first: a database restart or an
        idle timeout shows up as a failure of the next batch, which then runs again on a fresh connection. It runs
        again only if the failed transaction is known not to have committed, which is what SQLAlchemy's error out
        of `_transaction` means; a COMMIT whose outcome is unknown fails the batch instead (StoreUnavailable), as
        running it again could store its writes twice.
        """
        reused = lane.conn is not None
        try:
            return self._transaction(batch, lane, savepoints=False)
        except SQLAlchemyError as exc:
            # A lock timeout is no dead connection: run again, the batch waited as long again (a write 503'd after
            # 20 s, not 10, in a two-host review).
            if not reused or isinstance(exc, IntegrityError) or lock_timed_out(exc):
                raise
            log.warning("writer connection failed (%s); retrying the batch on a new connection", exc)
            return self._transaction(batch, lane, savepoints=False)

    def _fail(self, batch: list[_Job], exc: BaseException) -> None:
        log.error("group commit of %d writes failed: %s", len(batch), exc)
        if self.failing_since is None:
            self.failing_since = time.monotonic()
        self.last_error = f"the store could not commit: {exc.__class__.__name__}"
        error = StoreUnavailable(self.last_error)
        self._deliver(batch, [(False, error)] * len(batch))

    def _deliver(self, batch: list[_Job], outcomes: list[tuple[bool, Any]]) -> None:
        """Complete each job: a blocked thread's future, or a coroutine's (in one call per event loop)."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for job, (ok, value) in zip(batch, outcomes, strict=True):
            if job.future is not None:
                if job.future.done():  # answered already: a second answer would raise here and lose the rest
                    log.error("a write was answered twice; the second answer (%s) is dropped", "ok" if ok else value)
                    continue
                if ok:
                    job.future.set_result(value)
                else:
                    job.future.set_exception(value)
            elif job.loop is not None and job.awaited is not None:
                by_loop.setdefault(job.loop, []).append((job.awaited, ok, value))
        here = _running_loop() if by_loop else None
        for loop, results in by_loop.items():
            if loop is here:  # committed inline by this very loop
                _settle(results)
                continue
            try:
                loop.call_soon_threadsafe(_settle, results)
            except RuntimeError:  # that event loop has closed: nobody is waiting any more
                pass

    def _transaction(self, batch: list[_Job], lane: _Lane, savepoints: bool) -> list[tuple[bool, Any]]:
        """One transaction; the inline lane runs with the lock its caller already holds.

        SQLAlchemy's error out of here means the transaction did not commit, so the batch may run again. A COMMIT
        that failed returns the outcomes if the transaction committed all the same, and raises StoreUnavailable if
        how it ended cannot be known (see `_after_failed_commit`).
        """
        outcomes: list[tuple[bool, Any]] = []
        conn = lane.connection()
        try:
            with nullcontext() if lane.inline else self._process_lock:
                transaction = self._begin(conn, lane)
                failed: SQLAlchemyError | None = None
                with transaction:  # rolls back if a job or a statement fails: COMMIT is never sent
                    conn.info[TRANSACTION_CACHE] = {}
                    try:
                        lock_keys(conn, [k for job in batch for k in job.keys], lane.wait_ms(),
                                  try_first=lane.try_first,
                                  no_wait=self._remembered() if lane is self._lane else frozenset(),
                                  namespace=self._namespace,
                                  last=batch[0].optional if lane is self._patient else frozenset(),
                                  last_patience_ms=LOCK_PATIENCE_MS)
                        self._run_jobs(conn, batch, savepoints, outcomes)
                    finally:
                        conn.info.pop(TRANSACTION_CACHE, None)
                    xid = _mark(conn, lane)
                    driver = conn.connection.dbapi_connection
                    try:
                        transaction.commit()
                    except SQLAlchemyError as exc:
                        failed = exc
                if failed is not None:
                    self._after_failed_commit(lane, driver, xid, failed)
        except SQLAlchemyError as exc:
            if not lock_timed_out(exc):  # a lock wait that timed out leaves its connection as good as it was
                lane.drop()  # it may be broken: the next attempt starts on a fresh one
            raise
        return outcomes

    @staticmethod
    def _after_failed_commit(lane: _Lane, driver: Any, xid: str | None, exc: SQLAlchemyError) -> None:
        """COMMIT raised `exc`: return if the transaction committed all the same; raise `exc` if it did not (the
        batch may run again), StoreUnavailable if that cannot be known (it must not: its writes may be stored).

        SQLite reports a failed COMMIT (SQLITE_BUSY, SQLITE_IOERR, SQLITE_FULL ...) without having committed, and
        may leave the transaction open (SQLITE_BUSY does): it is rolled back at once, before the connection is
        dropped, so nothing else runs in it and it holds the database's write lock no longer.

        PostgreSQL may have committed a transaction whose acknowledgement was lost with the connection. The
        connection is closed, which ends the transaction if the server had not committed it; a new one waits for
        the lane's advisory lock, which the old transaction held until it ended (`_mark`), and asks the server
        how the transaction ended.
        """
        if lane.engine.dialect.name != "postgresql":  # SQLite
            try:
                if driver is not None and driver.in_transaction:
                    driver.rollback()
            except lane.engine.dialect.loaded_dbapi.Error as failed:  # the caller closes it, which rolls back too
                log.warning("could not roll back after a failed COMMIT: %s", failed)
            raise exc
        lane.drop()
        # The lane's next transactions take a lock of their own: the server may keep the one whose COMMIT failed
        # (and its lock) for as long as it has not noticed the lost connection, and they must not wait for it.
        key, lane.key = lane.key, secrets.randbits(31)
        if xid is None:  # it wrote nothing: committed or not, the store is as the jobs' answers say
            log.warning("COMMIT of a transaction that wrote nothing failed (%s); its answers stand", exc)
            return
        status = _transaction_status(lane, key, xid)
        if status == "committed":
            log.warning("COMMIT failed (%s) but the transaction committed: its answers go out", exc)
            return
        if status == "aborted":
            raise exc
        raise StoreUnavailable(f"the store may or may not have committed: {exc.__class__.__name__} at COMMIT, "
                               f"and the transaction's status is {status!r}") from exc

    @staticmethod
    def _begin(conn: Connection, lane: _Lane) -> Any:
        try:
            return conn.begin()
        except OperationalError as exc:
            # Inline, SQLite's lock can only be taken by a writer outside the group commit (another program):
            # the loop must not wait for it, so the batch goes to the writer thread, which may.
            if lane.inline and "locked" in str(exc.orig):
                lane.drop()
                raise _Busy() from exc
            raise

    def _run_jobs(self, conn: Connection, batch: list[_Job], savepoints: bool,
                  outcomes: list[tuple[bool, Any]]) -> None:
        # The database failing fails the whole batch: it is not one job's fault, and its writes cannot be trusted
        # to have happened.
        store_failed = store_errors(conn)
        for job in batch:
            if not savepoints:
                try:
                    outcomes.append((True, job.fn(conn)))
                except (IntegrityError, DataError) as exc:
                    raise _JobFailed() from exc
                except store_failed:
                    raise
                except _STOPPING:
                    raise
                except BaseException as exc:  # one job's failure, whatever it raised: the batch runs again
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
            except DataError as exc:  # a value the database refuses (out of range, too long): this job's, not all
                _rollback(conn, savepoint)
                outcomes.append((False, InvalidInput(f"the store refused a value: {exc.orig}")))
            except store_failed:
                raise
            except _STOPPING:
                raise
            except BaseException as exc:
                log.exception("write job failed")
                _rollback(conn, savepoint)
                outcomes.append((False, _job_error(exc)))
            else:
                savepoint.commit()
                outcomes.append((True, result))
