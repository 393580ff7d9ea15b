"""Statements on the decide path: built with SQLAlchemy Core, compiled once per dialect, run on the driver.

SQLAlchemy's per-execution work (cache lookup, parameter processing, result wrapping) costs tens of
microseconds per statement, more than SQLite takes to run one. The decide path runs a handful of fixed
statements per request, so each is compiled once per dialect and then executed on the DBAPI cursor of the
same connection and transaction. Only plain parameters are supported (ints, floats, strings, bytes, None):
the decide path binds nothing that needs SQLAlchemy's type processing. Listeners of the engine's
`before_cursor_execute` event (tracing, fault injection) still see every statement, and driver errors are
raised as SQLAlchemy's exceptions, as if the statement had gone through `Connection.execute`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import Connection, Table, bindparam
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

T = TypeVar("T")


class _Compiled(NamedTuple):
    sql: str
    order: tuple[str, ...] | None  # parameter names in position order (positional paramstyles), else None
    constants: dict[str, Any]

    def args(self, params: Mapping[str, Any]) -> Any:
        """The driver's arguments for one set of named parameters (constants of the statement filled in)."""
        if self.constants:
            params = {**self.constants, **params}
        return tuple(params[name] for name in self.order) if self.order is not None else params


class Prepared:
    """One Core statement, compiled lazily for each dialect it runs on."""

    def __init__(self, statement: ClauseElement) -> None:
        self._statement = statement
        self._compiled: dict[str, _Compiled] = {}

    def _sql(self, conn: Connection) -> _Compiled:
        dialect = conn.dialect
        found = self._compiled.get(dialect.name)
        if found is None:
            compiled = self._statement.compile(dialect=dialect)
            assert isinstance(compiled, SQLCompiler)
            if "POSTCOMPILE" in str(compiled):
                raise ValueError("expanding IN parameters cannot be prepared: write the alternatives out")
            order = tuple(compiled.positiontup or ()) if compiled.positional else None
            # Values bound in the statement itself (literals such as a status) are constants of every call.
            constants = {k: v for k, v in compiled.params.items() if v is not None}
            found = _Compiled(str(compiled), order, constants)
            self._compiled[dialect.name] = found
        return found

    @classmethod
    def insert(cls, table: Table) -> Prepared:
        """An INSERT binding every column by name but the table's generated key (autoincrement)."""
        generated = table.autoincrement_column
        return cls(table.insert().values({c.name: bindparam(c.name) for c in table.columns if c is not generated}))

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """Run the statement; returns the DBAPI cursor (rows via fetchone/fetchall, `rowcount`)."""
        compiled = self._sql(conn)
        return _run(conn, compiled.sql, compiled.args(params))

    def execute_many(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run the statement once per parameter set, in one driver call (a batch's inserts and updates)."""
        if not rows:
            return
        compiled = self._sql(conn)
        _run(conn, compiled.sql, [compiled.args(params) for params in rows], many=True)

    def rows(self, conn: Connection, params: Mapping[str, Any]) -> list[Any]:
        cursor = self.execute(conn, params)
        return list(_fetch(conn, cursor.fetchall))

    def first(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        cursor = self.execute(conn, params)
        return _fetch(conn, cursor.fetchone)


def _fetch(conn: Connection, fetch: Callable[[], T]) -> T:
    """Read rows off the driver's cursor: a page that fails to read mid-scan raises there, after `execute`
    returned, and must reach callers as SQLAlchemy's error (a store failure, 503), like an error of `execute`."""
    dbapi_error = conn.dialect.loaded_dbapi.Error
    try:
        return fetch()
    except dbapi_error as exc:
        raise DBAPIError.instance("(fetching rows)", None, exc, dbapi_error, hide_parameters=True,
                                  dialect=conn.dialect) from exc


def _run(conn: Connection, sql: str, args: Any, many: bool = False) -> Any:
    """Execute on a DBAPI cursor in the connection's transaction (begun through SQLAlchemy, so its hooks ran)."""
    if not conn.in_transaction() and not conn.info.get(AUTOCOMMIT_READS):
        conn.begin()
    return driver_sql(conn, sql, args, many)


def driver_sql(conn: Connection, sql: str, args: Any = (), many: bool = False) -> Any:
    """Execute on the connection's DBAPI cursor as it stands (no transaction begun): for statements such as
    `BEGIN IMMEDIATE` in a `begin` hook, where `Connection.exec_driver_sql` costs several times the statement."""
    dbapi_error = conn.dialect.loaded_dbapi.Error
    try:
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]  # fails on a closed one
        if conn.dispatch.before_cursor_execute:
            conn.dispatch.before_cursor_execute(conn, cursor, sql, args, None, many)
        if many:
            cursor.executemany(sql, args)
        else:
            cursor.execute(sql, args)
    except dbapi_error as exc:
        raise DBAPIError.instance(sql, None, exc, dbapi_error, hide_parameters=True, dialect=conn.dialect) from exc
    return cursor


TRANSACTION_CACHE = "nba.transaction_cache"
# Set on a reader connection whose statements each run in their own implicit transaction (see Store.read_now).
AUTOCOMMIT_READS = "nba.autocommit_reads"


def transaction_cache(conn: Connection) -> dict[str, Any] | None:
    """Values a group-commit transaction may read once and share between its jobs (None outside one)."""
    cache: dict[str, Any] | None = conn.info.get(TRANSACTION_CACHE)
    return cache
