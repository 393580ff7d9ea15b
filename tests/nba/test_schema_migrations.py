"""Schema v3: the release index covers deferred decisions only, on both backends, and the sweep still uses it."""

from __future__ import annotations

from sqlalchemy import Connection

from nba.store import Store
from nba.store import schema as t
from nba.store.outcome_repo import due_decisions
from nba.store.schema import MIGRATIONS


def _release_index(conn: Connection) -> str:
    if conn.dialect.name == "sqlite":
        sql = "SELECT sql FROM sqlite_master WHERE name = 'ix_decisions_state_release'"
    else:
        sql = ("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_decisions_state_release'"
               " AND schemaname = current_schema()")  # each test has its own schema
    return str(conn.exec_driver_sql(sql).scalar_one())


def test_a_v2_database_gets_the_partial_release_index(store_url: str) -> None:
    store = Store(store_url)
    try:
        def to_v2(conn: Connection) -> None:  # the index as v2 created it: every decision in it
            conn.exec_driver_sql("DROP INDEX ix_decisions_state_release")
            conn.exec_driver_sql("CREATE INDEX ix_decisions_state_release ON decisions (state, release_ms)")
            conn.execute(t.meta_kv.update().where(t.meta_kv.c.key == "schema_version").values(value="2"))

        store.write(to_v2)
        assert "WHERE" not in _release_index_of(store).upper()
    finally:
        store.close()
    upgraded = Store(store_url)
    try:
        definition = _release_index_of(upgraded)
        assert "WHERE" in definition.upper() and "release_ms IS NOT NULL".upper() in definition.upper()
        version = upgraded.read(lambda c: c.execute(t.meta_kv.select().where(t.meta_kv.c.key == "schema_version"))
                                .one().value)
        assert version == str(MIGRATIONS[-1][0]) == "3"
    finally:
        upgraded.close()


def _release_index_of(store: Store) -> str:
    return store.read(_release_index)


def test_the_expiry_sweep_reads_the_partial_index(sqlite_url: str) -> None:
    store = Store(sqlite_url)
    try:
        plan = store.read(lambda c: " ".join(
            str(row[-1]) for row in c.exec_driver_sql(
                "EXPLAIN QUERY PLAN SELECT decision_id FROM decisions WHERE state = 'open' AND release_ms <= 5 "
                "AND activated_ms IS NULL LIMIT 10")))
        assert "ix_decisions_state_release" in plan, plan
        assert store.read(lambda c: due_decisions(c, 5, 10)) == []
    finally:
        store.close()
