"""SQLite checkpoints run beside the writer, never inside a group commit."""

from __future__ import annotations

from sqlalchemy import Connection

from nba.store import Store
from nba.store import schema as t


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
