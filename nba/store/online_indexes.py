"""Migrating a PostgreSQL store that is in use: indexes built without blocking writes, under a lock no one queues on.

A plain `CREATE INDEX` blocks every write to its table until the index is built: on a deployment with millions
of events that stops event ingest, rewards and budgeted decisions on every host for as long as the build takes.
The indexes a pending migration adds are therefore built first with `CREATE INDEX CONCURRENTLY`, outside any
transaction; the migration's own transaction then finds them built. An interrupted concurrent build leaves an
invalid index behind: it is dropped and built again.

One process migrates at a time, under a session advisory lock taken by polling (`migration_lock`) rather than
waited for in the server: a concurrent build waits for every transaction older than its snapshot, so a second
host queued on the lock inside a statement would make a cycle the server breaks with a deadlock error.

SQLite has no concurrent build: there the migration builds its indexes in its transaction (one machine, whose
processes open the store together).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Index, Table, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.schema import CreateIndex

from nba.store.schema import ONLINE_INDEXES, current_version

MIGRATION_LOCK = 7262010  # every schema: the same lock (as before this module, when it was a transaction's)
POLL_SECONDS = 0.05
SAY_WAITING_SECONDS = 5.0  # a wait longer than this is logged, once: an index build on a large table takes minutes
log = logging.getLogger(__name__)


@contextmanager
def migration_lock(conn: Connection) -> Iterator[None]:
    """Hold the migration lock for this connection's session; waits, polling, while another process holds it.

    The connection must be in autocommit mode, so that no snapshot is held between polls.
    """
    started = time.monotonic()
    said = False
    while not conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({MIGRATION_LOCK})").scalar():
        if not said and time.monotonic() - started > SAY_WAITING_SECONDS:
            log.warning("waiting for another process to finish migrating the store's schema (it holds the "
                        "migration lock, advisory lock %d)", MIGRATION_LOCK)
            said = True
        time.sleep(POLL_SECONDS)
    try:
        yield
    finally:
        try:
            conn.exec_driver_sql(f"SELECT pg_advisory_unlock({MIGRATION_LOCK})")
        except SQLAlchemyError:  # the session ends with its connection, and its lock with it
            conn.invalidate()


def pending_online_indexes(conn: Connection) -> list[tuple[Table, str]]:
    """The indexes that migrations after the stored schema version add and build concurrently (none for a new
    store: its tables are created empty, with every index)."""
    version = current_version(conn)
    if version == 0:
        return []
    return [index for target, indexes in ONLINE_INDEXES.items() if target > version for index in indexes]


def build_online_indexes(conn: Connection) -> list[str]:
    """Build concurrently the indexes pending migrations add, dropping first any an interrupted build left
    invalid; returns the names built. Runs in autocommit mode, holding `migration_lock`."""
    built: list[str] = []
    for table, name in pending_online_indexes(conn):
        valid = conn.execute(text(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = :name AND c.relnamespace = current_schema()::regnamespace"
        ), {"name": name}).scalar()
        if valid:
            continue
        if valid is not None:
            conn.exec_driver_sql(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
        conn.exec_driver_sql(concurrent_ddl(conn, next(i for i in table.indexes if i.name == name)))
        built.append(name)
    return built


def concurrent_ddl(conn: Connection, index: Index) -> str:
    """The index's `CREATE INDEX CONCURRENTLY IF NOT EXISTS` statement, as the metadata defines the index."""
    ddl = str(CreateIndex(index, if_not_exists=True).compile(dialect=conn.dialect))
    plain = "CREATE INDEX IF NOT EXISTS "
    assert ddl.startswith(plain), ddl
    return "CREATE INDEX CONCURRENTLY IF NOT EXISTS " + ddl[len(plain):]
