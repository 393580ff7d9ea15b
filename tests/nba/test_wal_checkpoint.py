"""SQLite checkpoints run beside the writer, never inside a group commit."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Connection
from sqlalchemy.engine import make_url

from nba.store import Store
from nba.store import schema as t
from nba.store.checkpointer import WAL_LIMIT_BYTES


def _wal_autocheckpoint(conn: Connection) -> int:
    return int(conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one())


def test_commits_do_not_checkpoint_and_the_checkpointer_does(sqlite_url: str) -> None:
    store = Store(sqlite_url, checkpoint_seconds=3600)  # only the explicit checkpoint below runs
    try:
        assert store.write(_wal_autocheckpoint) == 0  # the writer's COMMIT never copies the log
        assert store.read(_wal_autocheckpoint) > 0  # (SQLite's default elsewhere)
        for index in range(50):
            store.write(lambda c, i=index: c.execute(t.meta_kv.insert().values(key=f"k{i}", value="x" * 2000)))
        assert store._checkpointer is not None
        busy, logged, copied = store._checkpointer.checkpoint()
        assert (busy, copied) == (0, logged) and logged > 50
        assert store.read(lambda c: c.exec_driver_sql("SELECT count(*) FROM meta_kv WHERE key LIKE 'k%'")
                          .scalar_one()) == 50
    finally:
        store.close()


def test_postgres_needs_no_checkpointer(store: Store) -> None:
    assert (store._checkpointer is None) == (not store.local)


def test_the_log_starts_over_under_continuous_writes(sqlite_url: str) -> None:
    """With no pause between writes the log never empties by itself; the writer completes a checkpoint between
    two batches once the file passes the limit, and SQLite then reuses and truncates it."""
    store = Store(sqlite_url, checkpoint_seconds=3600)  # no background checkpoints: the writer alone
    wal = Path(make_url(sqlite_url).database + "-wal")  # type: ignore[operator]
    try:
        sizes = []
        for index in range(60):  # 60 x 512 KiB: about 4x the limit
            store.write(lambda c, i=index: c.execute(t.meta_kv.insert().values(key=f"big{i}", value="x" * 2**19)))
            sizes.append(wal.stat().st_size)
        assert max(sizes) < 2 * WAL_LIMIT_BYTES, sizes
        assert store.read(lambda c: c.exec_driver_sql("SELECT count(*) FROM meta_kv WHERE key LIKE 'big%'")
                          .scalar_one()) == 60
    finally:
        store.close()
