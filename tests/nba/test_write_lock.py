"""The group-commit writer holds the cross-process write lock for exactly its transactions (SQLite)."""

from __future__ import annotations

import fcntl
import os
import threading

import pytest
from sqlalchemy import Connection

from nba.errors import StoreUnavailable
from nba.store import Store
from nba.store import schema as t


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
