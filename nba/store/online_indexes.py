"""Migrating a PostgreSQL store that is in use: indexes built without blocking writes.

A plain `CREATE INDEX` blocks every write to its table until the index is built: on a deployment with millions
of events that stops event ingest, rewards and budgeted decisions on every host for as long as the build takes.
The indexes migrations add are therefore built with `CREATE INDEX CONCURRENTLY`, outside any transaction, before
the migration's own transaction, which then finds them built. At every start each of them is checked: one that is
missing or invalid (a concurrent build interrupted: by a crash, a deadlock, a host of an older version that went
on without it) is dropped and built again, whatever the schema version says.

Builds run under a lock of their own (`BUILD_LOCK`), taken by polling rather than waited for in the server: a
concurrent build waits for every transaction older than its snapshot, so a host queued on the lock inside a
statement would make a cycle the server breaks with a deadlock error. The migration's transaction still takes
`MIGRATION_LOCK`, as hosts of older versions do: a build never holds it, so they never wait for a build.

Everything is looked up in the schema the store's tables are in (`store_schema`), not the head of the search path.

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

MIGRATION_LOCK = 7262010  # the migration's transaction, in every version (every schema: the same lock)
BUILD_LOCK = 7262011  # concurrent index builds, session-long, taken by polling
POLL_SECONDS = 0.05
SAY_WAITING_SECONDS = 5.0  # a wait longer than this is logged, once: an index build on a large table takes minutes
log = logging.getLogger(__name__)


def store_schema(conn: Connection) -> str:
    """The schema the store's tables are in, as this session finds them (the head of its search path for a store
    not created yet)."""
    return str(conn.execute(text(
        "SELECT coalesce((SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = to_regclass('meta_kv')), current_schema())")).scalar())


@contextmanager
def build_lock(conn: Connection) -> Iterator[None]:
    """Hold the build lock for this connection's session; waits, polling, while another process holds it.

    The connection must be in autocommit mode, so that no snapshot is held between polls.
    """
    started = time.monotonic()
    said = False
    while not conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({BUILD_LOCK})").scalar():
        if not said and time.monotonic() - started > SAY_WAITING_SECONDS:
            log.warning("waiting for another process to finish building the store's indexes (it holds advisory "
                        "lock %d)", BUILD_LOCK)
            said = True
        time.sleep(POLL_SECONDS)
    try:
        yield
    finally:
        try:
            conn.exec_driver_sql(f"SELECT pg_advisory_unlock({BUILD_LOCK})")
        except SQLAlchemyError:  # the session ends with its connection, and its lock with it
            conn.invalidate()


def indexes_to_build(conn: Connection, schema: str) -> list[tuple[Table, str, bool]]:
    """The indexes migrations add that are missing or invalid in `schema`: (table, name, present). None for a new
    store: its tables are created empty, with every index."""
    if current_version(conn) == 0:
        return []
    valid: dict[str, bool] = dict(conn.execute(text(
        "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :schema"), {"schema": schema}).all())
    return [(table, name, name in valid) for indexes in ONLINE_INDEXES.values() for table, name in indexes
            if not valid.get(name, False)]


def build_online_indexes(conn: Connection, schema: str) -> list[str]:
    """Build concurrently each index migrations add that is missing or invalid in `schema` (`store_schema`),
    dropping an invalid one first; returns the names built. Runs in autocommit mode; takes `build_lock` only when
    there is something to build."""
    if not indexes_to_build(conn, schema):
        return []
    built: list[str] = []
    with build_lock(conn):
        for table, name, present in indexes_to_build(conn, schema):  # again: another process may have built them
            if present:
                conn.exec_driver_sql(f'DROP INDEX CONCURRENTLY IF EXISTS "{schema}"."{name}"')
            conn.exec_driver_sql(concurrent_ddl(conn, next(i for i in table.indexes if i.name == name), schema))
            built.append(name)
    return built


def concurrent_ddl(conn: Connection, index: Index, schema: str) -> str:
    """The index's `CREATE INDEX CONCURRENTLY IF NOT EXISTS` statement on its table in `schema`, as the metadata
    defines the index."""
    table = index.table
    assert table is not None
    ddl = str(CreateIndex(index, if_not_exists=True).compile(dialect=conn.dialect))
    plain = f"CREATE INDEX IF NOT EXISTS {index.name} ON {table.name} "
    assert ddl.startswith(plain), ddl
    return f'CREATE INDEX CONCURRENTLY IF NOT EXISTS {index.name} ON "{schema}".{table.name} ' + ddl[len(plain):]
