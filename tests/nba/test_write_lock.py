"""The group-commit writer holds the cross-process write lock for exactly its transactions (SQLite)."""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import Connection

from nba.errors import StoreUnavailable
from nba.store import Store, write_lock
from nba.store import schema as t
from nba.store.write_lock import ProcessWriteLock, WriteLockTimeout


def _try_lock(path: str) -> bool:
    """Whether another open file description gets the lock right now (as another process would)."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


def test_the_writer_holds_the_lock_during_its_transaction_and_only_then(sqlite_url: str) -> None:
    store = Store(sqlite_url)
    try:
        lock = store._write_lock
        assert lock is not None
        seen: list[bool] = []

        def job(conn: Connection) -> None:
            conn.execute(t.meta_kv.insert().values(key="locked", value="1"))
            seen.append(_try_lock(lock.path))

        store.write(job)
        assert seen == [False]  # inside the transaction no other writer could start one
        # Released after the commit (and the checkpoint hook): another process's writer gets it.
        fd = os.open(lock.path, os.O_RDWR)
        try:
            got = threading.Thread(target=fcntl.flock, args=(fd, fcntl.LOCK_EX))
            got.start()
            got.join(timeout=30)  # a guard against hanging for ever, not a timing
            assert not got.is_alive()
        finally:
            os.close(fd)
    finally:
        store.close()


def test_only_sqlite_takes_the_file_lock(store: Store) -> None:
    assert (store._write_lock is None) == (not store.local)


def test_a_lock_held_too_long_by_another_process_fails_writes_with_503_then_recovers(sqlite_url: str) -> None:
    store = Store(sqlite_url)
    try:
        lock = store._write_lock
        assert lock is not None
        lock.timeout = 0.3  # the service waits 30 s, as long as SQLite's busy timeout
        fd = os.open(lock.path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # another process's writer, stuck inside its transaction
            with pytest.raises(StoreUnavailable):
                store.write(lambda c: c.execute(t.meta_kv.insert().values(key="blocked", value="1")))
            with pytest.raises(StoreUnavailable):
                store.check_writes()  # /health says so
        finally:
            os.close(fd)  # releases the lock
        store.write(lambda c: c.execute(t.meta_kv.insert().values(key="after", value="1")))
        store.check_writes()
        keys = store.read(lambda c: {r[0] for r in c.execute(t.meta_kv.select().with_only_columns(t.meta_kv.c.key))})
        assert "after" in keys and "blocked" not in keys
    finally:
        store.close()


def test_a_lock_file_that_cannot_be_reopened_after_a_timeout_costs_one_write_not_all_later_ones(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wait that timed out gives its descriptor away (the abandoned wait closes it once it gets the lock) and
    the file is opened again; when that open fails (no descriptors left), the lock must not keep using the
    descriptor given away: once closed, every later write would fail (EBADF), or, its number reused by another
    file, lock that file instead while another process writes."""
    store = Store(sqlite_url)
    try:
        lock = store._write_lock
        assert lock is not None
        lock.timeout = 0.3  # the service waits 30 s, as long as SQLite's busy timeout
        real_open = lock._open
        opens: list[str] = []

        def open_failing_once() -> int:
            if not opens:
                opens.append("EMFILE")
                raise OSError(errno.EMFILE, "Too many open files")
            opens.append("opened")
            return real_open()

        monkeypatch.setattr(lock, "_open", open_failing_once)
        other = os.open(lock.path, os.O_RDWR)
        fcntl.flock(other, fcntl.LOCK_EX)  # another process's writer, stuck inside its transaction
        with pytest.raises(StoreUnavailable):
            store.write(lambda c: c.execute(t.meta_kv.insert().values(key="blocked", value="1")))
        os.close(other)  # the other process lets go of the lock
        waiter = lock._waiter
        assert waiter is not None
        waiter.submit(lambda: None).result(timeout=30)  # after the abandoned wait: its descriptor is closed now
        unrelated = os.open(os.devnull, os.O_RDONLY)  # may take the closed descriptor's number
        try:
            seen: list[bool] = []

            def job(key: str) -> Callable[[Connection], None]:
                def write(conn: Connection) -> None:
                    conn.execute(t.meta_kv.insert().values(key=key, value="1"))
                    seen.append(_try_lock(lock.path))

                return write

            answers: list[str] = []
            for key in ("after-1", "after-2"):
                try:
                    store.write(job(key))
                    answers.append("ok")
                except StoreUnavailable:
                    answers.append("503")
        finally:
            os.close(unrelated)
        assert answers == ["503", "ok"]  # the failed open costs its own write only
        assert seen == [False]  # and the lock held during the write is the lock file's
        assert opens == ["EMFILE", "opened"]
        keys = store.read(lambda c: {r[0] for r in c.execute(t.meta_kv.select().with_only_columns(t.meta_kv.c.key))})
        assert "after-2" in keys and not keys & {"blocked", "after-1"}
    finally:
        store.close()


@pytest.mark.parametrize("error", [errno.ENOLCK, errno.EBADF], ids=["ENOLCK", "EBADF"])
def test_a_failed_unlock_after_commit_answers_the_commit_and_still_frees_the_lock(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, error: int
) -> None:
    """The writes were committed before the lock is let go: an unlock that fails must not turn their answers
    into 503s (the clients would send them again), nor leave the lock held by a file nobody unlocks."""
    store = Store(sqlite_url)
    try:
        lock = store._write_lock
        assert lock is not None
        real_flock = fcntl.flock
        failed: list[int] = []

        def flock(fd: int, operation: int) -> None:
            if operation == fcntl.LOCK_UN and not failed:
                failed.append(fd)
                raise OSError(error, os.strerror(error))
            real_flock(fd, operation)

        monkeypatch.setattr("nba.store.write_lock.fcntl.flock", flock)
        store.write(lambda c: c.execute(t.meta_kv.insert().values(key="committed", value="1")))  # no 503
        assert failed, "the unlock was not attempted"
        monkeypatch.setattr("nba.store.write_lock.fcntl.flock", real_flock)
        assert _try_lock(lock.path) == (error != errno.EBADF)  # freed by closing its file (a bad one holds none)
        if error == errno.EBADF:
            os.close(failed[0])  # the test's stand-in for a descriptor that was closed: it still held the lock
        assert _try_lock(lock.path)
        store.write(lambda c: c.execute(t.meta_kv.insert().values(key="after", value="1")))
        keys = store.read(lambda c: {r[0] for r in c.execute(t.meta_kv.select().with_only_columns(t.meta_kv.c.key))})
        assert {"committed", "after"} <= keys
    finally:
        store.close()


def test_the_lock_timeout_is_a_deadline_across_both_waits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer waits for this process's other writers (a thread lock), then for other processes' (the file
    lock). Each wait had the whole timeout: a writer queued behind its own process's helper, which waited for
    another process, got its 503 after twice the timeout (review). The second wait has what the first left."""
    lock = ProcessWriteLock(str(tmp_path / "nba.db"), timeout=30.0)
    times = iter([100.0, 129.5])  # the time before the thread lock was had, and after: 29.5 s of it gone
    monkeypatch.setattr(write_lock, "time", SimpleNamespace(monotonic=lambda: next(times)))
    waited: list[float] = []
    enter_process = lock._enter_process
    monkeypatch.setattr(lock, "_enter_process", lambda timeout: (waited.append(timeout), enter_process(timeout))[1])
    fd = os.open(lock.path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process's writer, stuck inside its transaction
        with pytest.raises(WriteLockTimeout):
            lock.__enter__()
        assert waited == [0.5]
    finally:
        os.close(fd)
        lock.close()
