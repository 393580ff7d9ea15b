"""Giving a SQLite file's free pages back to the file system.

Deleted rows leave free pages that SQLite reuses for new rows, but the file never shrinks by itself: after
retention is shortened, or traffic falls, it keeps its high-water mark for good. A file created by this service
has incremental auto-vacuum (`engine.make_engine`), so free pages can be released a few at a time, each batch a
short write transaction, instead of by a `VACUUM` that rewrites the whole file under the write lock. A file
created before that keeps its size until `nba compact` converts it (`compact`). PostgreSQL reuses its own free
space (autovacuum); shrinking its files is the operator's `VACUUM FULL`.
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass

from sqlalchemy import Connection, make_url

from nba.errors import StoreUnavailable
from nba.store.engine import is_sqlite
from nba.store.write_lock import DEFAULT_TIMEOUT, ProcessWriteLock

INCREMENTAL = 2  # PRAGMA auto_vacuum's value for incremental
RELEASE_SECONDS = 0.005  # the longest a release holds the write lock, as a retention chunk of deletes does


@dataclass(frozen=True)
class FreeSpace:
    """A SQLite file's pages: all of them, the free ones, and whether those can be released (`release_pages`)."""

    pages: int
    free_pages: int
    page_size: int
    releasable: bool

    @property
    def free_bytes(self) -> int:
        return self.free_pages * self.page_size

    @property
    def free_share(self) -> float:
        return self.free_pages / self.pages if self.pages else 0.0


def _pragma(conn: Connection, name: str) -> int:
    return int(conn.exec_driver_sql(f"PRAGMA {name}").scalar_one())


def free_space(conn: Connection) -> FreeSpace | None:
    """The file's free space; None on PostgreSQL."""
    if conn.dialect.name != "sqlite":
        return None
    return FreeSpace(_pragma(conn, "page_count"), _pragma(conn, "freelist_count"), _pragma(conn, "page_size"),
                     _pragma(conn, "auto_vacuum") == INCREMENTAL)


def release_pages(conn: Connection, pages: int, seconds: float = RELEASE_SECONDS) -> int:
    """Release up to `pages` free pages from the end of the file, in the caller's write transaction, stopping once
    `seconds` have passed (moving a page costs from 10 to over 150 us, by what points to it: the write lock is held
    meanwhile); returns by how many pages the file shrank (a pointer-map page may go with them). The file shrinks
    once the transaction is checkpointed."""
    before = _pragma(conn, "page_count")
    until = time.monotonic() + seconds
    # Python's sqlite3 steps a statement without result columns once: `incremental_vacuum(n)` would release one
    # page whatever n is. One page per call, then.
    for _ in range(min(pages, _pragma(conn, "freelist_count"))):
        conn.exec_driver_sql("PRAGMA incremental_vacuum(1)").close()
        if time.monotonic() >= until:
            break
    return before - _pragma(conn, "page_count")


def compact(url: str, timeout: float = DEFAULT_TIMEOUT, checkpoint_wait: float = 5.0) -> tuple[int, int]:
    """Rewrite a SQLite file with incremental auto-vacuum and without free pages (`nba compact`); returns its size
    in bytes (with its write-ahead log) before and after. Meant for a stopped service: the running writers of this
    machine wait for it (it takes their write lock), and give up with a 503 after their timeout. `VACUUM` needs
    about twice the file's size of free disk (a copy, and the log). Raises `StoreUnavailable` when a reader kept
    the rewritten file from being checkpointed into place (the service is running): it is whole, but not smaller."""
    path = make_url(url).database
    if not is_sqlite(url) or path in (None, "", ":memory:"):
        raise ValueError("only a SQLite file can be compacted (PostgreSQL: VACUUM FULL)")
    assert path is not None
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    before = _file_bytes(path)
    with ProcessWriteLock(path, timeout=timeout), closing(sqlite3.connect(
            path, isolation_level=None, timeout=timeout)) as conn:
        conn.execute(f"PRAGMA auto_vacuum={INCREMENTAL}")
        conn.execute("VACUUM")
        conn.execute(f"PRAGMA busy_timeout={int(checkpoint_wait * 1000)}")  # for readers to finish, not for ever
        busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    if busy:
        raise StoreUnavailable("the database is in use (a reader kept the log from being copied back): the file "
                               "is whole but not smaller; stop the service and run `nba compact` again")
    return before, _file_bytes(path)


def _file_bytes(path: str) -> int:
    wal = f"{path}-wal"
    return os.path.getsize(path) + (os.path.getsize(wal) if os.path.exists(wal) else 0)
