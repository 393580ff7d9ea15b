"""One SQLite writer at a time across the processes on a host, queued by the kernel instead of by polling.

SQLite lets one connection write at a time; a second process's BEGIN IMMEDIATE that finds the lock taken sleeps
in SQLite's busy handler (1, 2, 5, 10, 15, 20, 25 ... 100 ms) and tries again, so under steady writes from
two workers a waiting group commit can miss the lock for hundreds of milliseconds (bench: p99 over 200 ms at
two workers). Each worker's writer therefore takes an exclusive `flock` on a file beside the database for each
write transaction: a waiting writer blocks in the kernel and wakes the moment the lock is released. SQLite's
own locking still guards every write; this only orders the writers that come through the group commit.

A wait is bounded like SQLite's busy timeout: a process that holds the lock for longer (stopped, stuck) makes the
others' group commits fail with `WriteLockTimeout` (a 503 to their clients) instead of hanging them.

Within a process the writer thread and event loops committing inline (batcher.py) take turns on a thread lock
first: a `flock` belongs to the open file, so it would not keep two threads of one process apart. An event loop
must never wait, so it only ever takes the lock when it is free (`try_acquire`).
"""

from __future__ import annotations

import errno
import fcntl
import functools
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from types import TracebackType

from nba.errors import StoreUnavailable

DEFAULT_TIMEOUT = 30.0  # seconds, as the SQLite connections' busy_timeout
log = logging.getLogger(__name__)


class WriteLockTimeout(StoreUnavailable):
    """Another process held the database's write lock for longer than the timeout."""


class WriteLockUnavailable(StoreUnavailable):
    """The lock file could not be opened or locked (e.g. the process is out of file descriptors)."""


class ProcessWriteLock:
    """An exclusive advisory lock on `<database>-writelock`, taken around each group commit."""

    def __init__(self, database_path: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = f"{database_path}-writelock"
        self.timeout = timeout
        # None once closed, or after a timed-out wait gave its descriptor away until the next attempt opens one
        self._fd: int | None = self._open()
        self._closed = False
        self._waiter: ThreadPoolExecutor | None = None  # waits in the kernel when the lock is taken
        self._local = threading.Lock()  # this process's writers (its writer thread, its event loops)

    def _open(self) -> int:
        return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)

    def __enter__(self) -> ProcessWriteLock:
        """Take the lock, waiting at most `timeout` in all: for this process's other writers, then for the other
        processes' (each wait had the whole timeout before: a writer queued behind its own process's waited twice
        it)."""
        deadline = time.monotonic() + self.timeout
        if not self._local.acquire(timeout=self.timeout):
            raise WriteLockTimeout(f"another writer of this process has held the lock for more than {self.timeout:g} s")
        try:
            return self._enter_process(max(deadline - time.monotonic(), 0.0))
        except OSError as exc:  # e.g. no descriptor left to open the file with: the store fails (503), not a bug
            self._local.release()
            raise WriteLockUnavailable(f"the database's write lock cannot be taken: {exc}") from exc
        except BaseException:
            self._local.release()
            raise

    def try_acquire(self) -> bool:
        """Take the lock only if no writer, here or in another process, holds it now; `release` it after."""
        if not self._local.acquire(blocking=False):
            return False
        try:
            if self._flock_now():
                return True
        except OSError:  # failing: a waiting writer then meets the error, not the loop
            pass
        self._local.release()
        return False

    def held_in_this_process(self) -> bool:
        """Whether a writer of this process holds the lock (or is waiting for another process's)."""
        return self._local.locked()

    def _flock_now(self) -> bool:
        """Take the cross-process lock if it is free now (True also once closed: there is no lock file)."""
        if self._fd is None:
            if self._closed:
                return True
            self._fd = self._open()  # the first attempt since a wait timed out; if it fails, the next one tries
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def release(self) -> None:
        """Let go of the lock. Never raises: the transaction it guarded has ended, and its writes must be answered
        as it ended (committed writes answered 503 would be sent again by their clients)."""
        try:
            self._unlock()
        finally:
            self._local.release()

    def _unlock(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError as exc:
            # The lock must not outlive the transaction: closing the file releases it; the next attempt opens the
            # file again. A descriptor the kernel calls bad is not open (closing its number could close another
            # file's), and holds no lock.
            log.warning("releasing the write lock failed (%s); closing its file instead", exc)
            self._fd = None
            if exc.errno != errno.EBADF:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _enter_process(self, timeout: float) -> ProcessWriteLock:
        if self._flock_now():
            return self
        fd = self._fd
        assert fd is not None
        if self._waiter is None:
            self._waiter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nba-writelock")
        waited = self._waiter.submit(fcntl.flock, fd, fcntl.LOCK_EX)  # a blocking wait that can time out
        try:
            waited.result(timeout=timeout)
        except FutureTimeout:
            # The abandoned wait may still get the lock: it then releases it and closes its descriptor. A lock
            # belongs to its open file, so the next attempt opens a new one (`_flock_now`) rather than share that
            # state. `_fd` lets go of the descriptor before it is handed over: were the new open to fail (no
            # descriptors left), `_fd` would otherwise name a closed descriptor, failing every later write or,
            # its number reused, locking another file; instead each later attempt opens the file until one can.
            self._fd = None
            waited.add_done_callback(functools.partial(_release_and_close, fd))
            raise WriteLockTimeout(
                f"another process has held the database's write lock for more than {self.timeout:g} s"
            ) from None
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def close(self) -> None:
        if self._waiter is not None:
            self._waiter.shutdown(wait=False, cancel_futures=True)
        held = self._local.acquire(timeout=self.timeout)  # not under a writer of this process
        try:
            self._closed = True
            # Only with the writers held off: a writer still waiting for the lock hands its descriptor to the
            # abandoned wait, which closes it; closed here as well, the number might by then be another file's.
            if held and self._fd is not None:
                os.close(self._fd)
                self._fd = None
        finally:
            if held:
                self._local.release()


def _release_and_close(fd: int, done: Future[None]) -> None:
    try:
        if done.exception() is None:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
