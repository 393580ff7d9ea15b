"""Statements run on the driver (`nba/store/prepared.py`) behave as if SQLAlchemy had run them."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Connection, event, select
from sqlalchemy.exc import DBAPIError

from nba.store import schema as t
from nba.store.engine import make_engine
from nba.store.prepared import AUTOCOMMIT_READS, Prepared

_META = Prepared(select(t.meta_kv.c.value).where(t.meta_kv.c.key == "k"))


def test_a_writer_begins_on_the_driver_where_listeners_see_it(sqlite_url: str) -> None:
    """`BEGIN IMMEDIATE` goes to the driver directly, yet fault injection and tracing still see it."""
    engine = make_engine(sqlite_url, writer=True)
    seen: list[str] = []

    def record(_conn: Connection, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        with engine.connect() as conn:
            t.meta_kv.create(conn)
            conn.commit()
            seen.clear()
            with conn.begin():
                assert _META.first(conn, {}) is None
            # The write lock was taken by the begin (IMMEDIATE), not by a later statement.
        assert seen[0] == "BEGIN IMMEDIATE"
    finally:
        engine.dispose()


def test_a_failing_begin_is_raised_as_sqlalchemys_error(sqlite_url: str) -> None:
    """The group commit retries or fails a batch on SQLAlchemy's errors: a driver error must arrive as one."""
    engine = make_engine(sqlite_url, writer=True)

    def fail(_conn: Connection, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("BEGIN"):
            raise engine.dialect.loaded_dbapi.OperationalError("database is locked")

    try:
        with engine.connect() as conn:
            event.listen(engine, "before_cursor_execute", fail)
            with pytest.raises(DBAPIError, match="locked"):
                conn.begin()
    finally:
        event.remove(engine, "before_cursor_execute", fail)
        engine.dispose()


def test_a_statement_on_a_closed_driver_connection_raises_sqlalchemys_error(sqlite_url: str) -> None:
    """A kept connection that died (closed under it) fails with a DBAPIError, which the store answers by
    reconnecting; the driver's own error (raised as the cursor is made) would escape that handling. The decide
    path's reads run without a transaction, so no BEGIN fails first."""
    engine = make_engine(sqlite_url, writer=False)
    try:
        with engine.connect() as conn:
            t.meta_kv.create(conn)
            conn.commit()
            conn.info[AUTOCOMMIT_READS] = True
            conn.connection.dbapi_connection.close()  # type: ignore[union-attr]
            with pytest.raises(DBAPIError, match="closed database"):
                _META.first(conn, {})
            conn.invalidate()
    finally:
        engine.dispose()
