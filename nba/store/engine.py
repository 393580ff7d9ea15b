"""Database engines: SQLite in WAL mode with immediate write transactions, or PostgreSQL via psycopg."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from nba.store.checkpointer import WAL_LIMIT_BYTES
from nba.store.online_indexes import store_schema
from nba.store.prepared import driver_sql


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _normalise(url: str) -> str:
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql" and parsed.drivername in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return url


# PostgreSQL writer sessions. A group commit runs on one writer thread, so a lock that never comes would stall
# every later write of the process: lock waits are bounded (the batch fails, 503), and the server ends a session
# left idle inside a transaction (one whose client vanished mid-COMMIT, say: it holds its batch's locks) and
# probes silent peers, so such locks do not outlive their client for long. A group commit is never idle for long.
WRITER_LOCK_TIMEOUT_MS = 10_000
POSTGRES_WRITER_OPTIONS = (f"-c lock_timeout={WRITER_LOCK_TIMEOUT_MS} -c idle_in_transaction_session_timeout=30000 "
                           "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3")


def _with_options(url: str, options: str) -> str:
    """`options` after any the URL gives (`?options=-csearch_path=...`): connect arguments replace the URL's."""
    given = make_url(url).query.get("options")
    first = given if isinstance(given, str) else " ".join(given or ())
    return f"{first} {options}".strip()


def make_engine(url: str, *, writer: bool, synchronous: str = "NORMAL",
                wal_limit_bytes: int = WAL_LIMIT_BYTES, busy_timeout_ms: int = 30_000) -> Engine:
    """An engine for reads or for a group-commit writer of this process.

    SQLite: WAL journal, a busy timeout so processes queue for the write lock instead of failing, and
    `BEGIN IMMEDIATE` for the writer so a write transaction holds the lock from its first statement.
    """
    url = _normalise(url)
    if not is_sqlite(url):
        connect_args = {"options": _with_options(url, POSTGRES_WRITER_OPTIONS)} if writer else {}
        return create_engine(url, pool_size=2 if writer else 16, max_overflow=4 if writer else 16,
                             pool_pre_ping=True, hide_parameters=True, connect_args=connect_args)
    # The writer keeps one connection for its thread (no reconnect and PRAGMAs per batch); readers get a pool
    # large enough for every request thread.
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000},
        hide_parameters=True,  # errors are logged; customer data must not be
        pool_size=1 if writer else 32,
        max_overflow=0 if writer else 32,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # A new file is created with incremental auto-vacuum, so retention can give its free pages back to the file
        # system (`free_space.release_pages`). It must come before the switch to WAL, which writes the file's
        # header. Only on a new file: setting it runs a write transaction, which on every connect would queue
        # behind the group commits (and fail at once with the inline engine's busy timeout of 0, a 503).
        if cursor.execute("PRAGMA page_count").fetchone()[0] == 0:
            cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        if writer:  # checkpoints run beside or between group commits (checkpointer.py), never inside one
            cursor.execute("PRAGMA wal_autocheckpoint=0")
            cursor.execute(f"PRAGMA journal_size_limit={wal_limit_bytes}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        driver_sql(conn, "BEGIN IMMEDIATE" if writer else "BEGIN")

    return engine


def lock_id(key: str, namespace: str = "") -> int:
    """A signed 64-bit id for a PostgreSQL advisory lock on `key` in `namespace` (`lock_namespace`)."""
    return int.from_bytes(hashlib.blake2b((namespace + key).encode(), digest_size=8).digest(), "big", signed=True)


SHARED = "shared:"


LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE for a lock wait that ran out of time


class KeysBusy(Exception):
    """Lock keys another session held for longer than the caller would wait (`lock_keys`); the transaction must
    be rolled back."""

    def __init__(self, key_ids: frozenset[int]) -> None:
        super().__init__(f"{len(key_ids)} advisory lock(s) held elsewhere")
        self.key_ids = key_ids


def key_modes(keys: Sequence[str], namespace: str = "") -> dict[int, bool]:
    """Write keys as advisory lock ids -> whether the key is needed exclusively (any of its keys not `shared:`).

    PostgreSQL's advisory locks belong to a database, not a schema: `namespace` (`lock_namespace`) keeps the
    keys of deployments in other schemas of the same database apart."""
    modes: dict[int, bool] = {}
    for key in keys:
        key_id = lock_id(key.removeprefix(SHARED), namespace)
        modes[key_id] = modes.get(key_id, False) or not key.startswith(SHARED)
    return modes


def lock_timed_out(exc: Exception) -> bool:
    """Whether a database error is PostgreSQL's lock wait running out of time (`lock_timeout`)."""
    return getattr(getattr(exc, "orig", None), "sqlstate", None) == LOCK_NOT_AVAILABLE


def lock_namespace(conn: Connection) -> str:
    """The prefix of this connection's lock keys: none in the `public` schema (or on SQLite), else the schema's
    name, so that two deployments in two schemas of one PostgreSQL database do not hold each other's locks.

    The schema is the one the store's tables are in, as this session finds them, not the first schema of its
    search path: a schema created later at the head of the path (PostgreSQL's default path starts with the
    role's name) would otherwise give processes started after it other locks for the same tables.
    """
    if conn.dialect.name != "postgresql":
        return ""
    schema = store_schema(conn)
    return "" if schema in (None, "public") else f"{schema}/"


def lock_keys(conn: Connection, keys: list[str], patience_ms: int | None = None, try_first: bool = True,
              no_wait: frozenset[int] = frozenset(), namespace: str = "", last: frozenset[int] = frozenset(),
              last_patience_ms: int = 0) -> None:
    """Take transaction-scoped advisory locks (PostgreSQL) in a fixed order, so batches never deadlock.

    A key written `shared:<key>` takes the lock in shared mode (readers of something that `<key>` writers
    change); a batch that needs both modes of one key takes it exclusively. On SQLite the write transaction
    already excludes every other writer, so this does nothing.

    With `patience_ms`, every key is first tried without waiting (one statement each, as a plain lock costs);
    those another session holds are then waited for, in order, for `patience_ms` in all, and the ones not had by
    then raise `KeysBusy`. The group commit moves the writes that need them to a lane of their own, so that a
    host frozen mid-transaction holds up only those. (Waiting for an earlier key while holding later ones breaks
    the fixed order, but only for `patience_ms`, less than PostgreSQL's deadlock timeout: a cycle ends in
    `KeysBusy` here, not in a deadlock error.) With `try_first=False` the keys are waited for in order, for
    `patience_ms` in all, none tried first: a wait that may be long keeps the order. Keys in `no_wait` (found held
    elsewhere lately) are not waited for: held still, they raise `KeysBusy` at once. `namespace` as in `key_modes`.

    With `try_first=False`, keys in `last` are neither waited for nor held while the others are: they are taken
    once the others are had, waiting `last_patience_ms` in all for those held elsewhere (as briefly as the group
    commit does: an ordinary write may hold one for a few milliseconds), then `KeysBusy`. A patient write waiting
    for a frozen host's customer key held its budget keys meanwhile, and every other decision of its own host
    left those budgets out for as long (a two-host run).
    """
    if conn.dialect.name != "postgresql":
        return
    modes = key_modes(keys, namespace)
    shared = {key_id for key_id, exclusive in modes.items() if not exclusive}
    ordered = sorted(modes)
    if patience_ms is None:
        for key_id in ordered:
            conn.execute(select(_lock(key_id, key_id in shared, wait=True)))
        return
    if try_first:
        busy, later = [key_id for key_id in ordered if not _try(conn, key_id, key_id in shared)], []
    else:
        busy = [key_id for key_id in ordered if key_id not in last]
        later = [key_id for key_id in ordered if key_id in last]
    still_held = no_wait.intersection(busy)
    if still_held:
        raise KeysBusy(frozenset(still_held))
    if busy:
        _wait_briefly(conn, busy, shared, patience_ms)
    held = [key_id for key_id in later if not _try(conn, key_id, key_id in shared)]
    if held:
        _wait_briefly(conn, held, shared, last_patience_ms)


def _try(conn: Connection, key_id: int, shared: bool) -> bool:
    return bool(conn.execute(select(_lock(key_id, shared, wait=False))).scalar())


def _lock(key_id: int, shared: bool, wait: bool) -> Any:
    if wait:
        return func.pg_advisory_xact_lock_shared(key_id) if shared else func.pg_advisory_xact_lock(key_id)
    return func.pg_try_advisory_xact_lock_shared(key_id) if shared else func.pg_try_advisory_xact_lock(key_id)


def _wait_briefly(conn: Connection, busy: list[int], shared: set[int], patience_ms: int) -> None:
    """Wait for the busy keys, `patience_ms` in all; `KeysBusy` with those not had by then. The session's lock
    timeout stands again for the rest of the transaction."""
    deadline = time.monotonic() + patience_ms / 1000
    usual = conn.execute(select(func.current_setting("lock_timeout"))).scalar_one()
    for index, key_id in enumerate(busy):
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        if remaining_ms < 1:
            raise KeysBusy(frozenset(busy[index:]))
        conn.execute(select(func.set_config("lock_timeout", f"{remaining_ms}ms", True)))
        try:
            conn.execute(select(_lock(key_id, key_id in shared, wait=True)))
        except OperationalError as exc:
            if lock_timed_out(exc):
                raise KeysBusy(frozenset(busy[index:])) from exc
            raise
    conn.execute(select(func.set_config("lock_timeout", usual, True)))
