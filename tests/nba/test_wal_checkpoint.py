"""SQLite checkpoints run beside the writer, never inside a group commit, and the log stays bounded."""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import Connection
from sqlalchemy.engine import make_url

from nba.store import Store
from nba.store import schema as t
from nba.store.checkpointer import HARD_FACTOR

LIMIT = 2 * 1024 * 1024  # a small log limit keeps these tests quick; the service default is larger
ROW = 2**17  # 128 KiB per write: 32 pages of the log


def _wal_autocheckpoint(conn: Connection) -> int:
    return int(conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one())


def _wal(sqlite_url: str) -> Path:
    return Path(make_url(sqlite_url).database + "-wal")  # type: ignore[operator]


def _write_rows(store: Store, prefix: str, count: int, wal: Path) -> list[int]:
    sizes = []
    for index in range(count):
        store.write(lambda c, i=index: c.execute(t.meta_kv.insert().values(key=f"{prefix}{i}", value="x" * ROW)))
        sizes.append(wal.stat().st_size)
    return sizes


def _count(store: Store, prefix: str) -> int:
    return int(store.read(lambda c: c.exec_driver_sql(f"SELECT count(*) FROM meta_kv WHERE key LIKE '{prefix}%'")
                          .scalar_one()))


def _bounded_by_the_writer(store: Store, prefix: str, wal: Path) -> None:
    """Eight log limits' worth of rows: the log never passes the hard bound, the writer checkpoints at least
    twice, and every row is there."""
    assert store._checkpointer is not None
    sizes = _write_rows(store, prefix, 8 * LIMIT // ROW, wal)
    assert max(sizes) <= HARD_FACTOR * LIMIT + 2 * ROW, sizes
    assert store._checkpointer.writer_checkpoints >= 2
    assert _count(store, prefix) == 8 * LIMIT // ROW


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
        assert _count(store, "k") == 50
    finally:
        store.close()


def test_postgres_needs_no_checkpointer(store: Store) -> None:
    assert (store._checkpointer is None) == (not store.local)


def test_the_log_starts_over_and_the_writer_copies_only_the_tail(sqlite_url: str) -> None:
    """Under continuous writes the checkpointer thread copies the log pass after pass; the writer only finishes
    the checkpoint between two batches, copying what was written since the thread's last pass."""
    store = Store(sqlite_url, checkpoint_seconds=3600, wal_limit_bytes=LIMIT)  # woken by the writer only
    wal = _wal(sqlite_url)
    checkpointer = store._checkpointer
    assert checkpointer is not None
    try:
        sizes = _write_rows(store, "big", 4 * LIMIT // ROW, wal)
        assert max(sizes) <= HARD_FACTOR * LIMIT + 2 * ROW, sizes
        assert any(later < earlier for earlier, later in zip(sizes, sizes[1:], strict=False)), sizes  # truncated
        assert checkpointer.writer_checkpoints >= 1
        assert checkpointer.last_writer_pass is not None
        logged, copied_by_writer = checkpointer.last_writer_pass
        assert copied_by_writer < logged // 2, checkpointer.last_writer_pass
        assert _count(store, "big") == 4 * LIMIT // ROW
    finally:
        store.close()


def test_the_writer_bounds_the_log_by_itself_when_the_checkpointer_thread_is_gone(sqlite_url: str) -> None:
    store = Store(sqlite_url, checkpoint_seconds=3600, wal_limit_bytes=LIMIT)
    wal = _wal(sqlite_url)
    checkpointer = store._checkpointer
    assert checkpointer is not None
    try:
        checkpointer.close()  # the thread stops; the writer still calls between_batches
        _bounded_by_the_writer(store, "solo", wal)
    finally:
        store.close()


def test_the_writer_waits_out_a_slow_pass_of_the_thread_at_the_hard_limit(sqlite_url: str) -> None:
    """On a loaded machine a pass of the thread can take longer than any fixed wait of the writer's; at the hard
    limit the writer waits for it (and the thread makes way), or the log would grow for as long as passes are
    slow. Here every pass of the thread lasts until the writer is waiting for it."""
    store = Store(sqlite_url, checkpoint_seconds=3600, wal_limit_bytes=LIMIT)
    wal = _wal(sqlite_url)
    checkpointer = store._checkpointer
    assert checkpointer is not None
    real_pass = checkpointer.checkpoint

    def slow_pass() -> tuple[int, int, int]:
        with checkpointer._pass:
            checkpointer._writer_waits.wait(timeout=5)
        return real_pass()

    checkpointer.checkpoint = slow_pass  # type: ignore[method-assign]
    try:
        _bounded_by_the_writer(store, "slow", wal)
    finally:
        store.close()


def test_a_signal_for_a_log_that_started_over_is_dropped(sqlite_url: str) -> None:
    """A catch-up that ran while the log was short (it had just started over) must not leave the thread idle."""
    store = Store(sqlite_url, checkpoint_seconds=3600, wal_limit_bytes=LIMIT)
    checkpointer = store._checkpointer
    assert checkpointer is not None
    try:
        checkpointer.catch_up()
        assert checkpointer._caught_up.is_set()
        _write_rows(store, "short", 2, _wal(sqlite_url))  # the second batch runs after the first's hook
        assert not checkpointer._caught_up.is_set()
    finally:
        store.close()


def test_two_processes_writing_keep_the_log_bounded(sqlite_url: str) -> None:
    """Two stores on one file (two processes' writers, each with its own lock handle and checkpointer)."""
    stores = [Store(sqlite_url, wal_limit_bytes=LIMIT) for _ in range(2)]
    writes = 16 * LIMIT // ROW
    wal = _wal(sqlite_url)
    sizes: list[int] = []
    try:
        def writer(index: int) -> None:
            for row in range(writes // 2):
                stores[index].write(lambda c, k=f"two{index}-{row}": c.execute(
                    t.meta_kv.insert().values(key=k, value="x" * ROW)))
                sizes.append(wal.stat().st_size)

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert max(sizes) <= 2 * HARD_FACTOR * LIMIT, max(sizes)  # 16x the limit written
        assert sum(s._checkpointer.writer_checkpoints for s in stores if s._checkpointer) >= 1
        assert _count(stores[0], "two") == writes
    finally:
        for store in stores:
            store.close()
