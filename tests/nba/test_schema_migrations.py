"""Schema migrations on both backends: v3 makes the release index partial (deferred decisions only), v4 makes the
contacts index cover the decide path's read, v5 makes the learner's pending index partial (pending rows of every
version of a policy, in seq order); the queries that need them still use them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Connection, create_engine, select, text

from features.state import apply_event
from nba.catalog import Action, Budget
from nba.store import Store, decide_reads
from nba.store import schema as t
from nba.store.decision_repo import _CONTACTS
from nba.store.online_indexes import MIGRATION_LOCK
from nba.store.outcome_repo import due_decisions
from nba.store.prepared import Prepared
from nba.store.schema import MIGRATIONS
from nba.types import Event
from tests.conftest import _pg_url


def _index(conn: Connection, name: str) -> str:
    if conn.dialect.name == "sqlite":
        sql = f"SELECT sql FROM sqlite_master WHERE name = '{name}'"
    else:
        sql = (f"SELECT indexdef FROM pg_indexes WHERE indexname = '{name}'"
               " AND schemaname = current_schema()")  # each test has its own schema
    return str(conn.exec_driver_sql(sql).scalar_one())


def _release_index(conn: Connection) -> str:
    return _index(conn, "ix_decisions_state_release")


def _schema_version(store: Store) -> str:
    return str(store.read(lambda c: c.execute(t.meta_kv.select().where(t.meta_kv.c.key == "schema_version"))
                          .one().value))


@contextmanager
def _upgraded_from(
    store_url: str, version: int, downgrade: Callable[[Connection], None],
    before: Callable[[Store], None] | None = None,
) -> Iterator[Store]:
    """The store taken back to schema `version` by `downgrade` (`before` checks it so), then opened again: the
    migrations from `version` on have run, and the recorded schema version is the newest."""
    store = Store(store_url)
    try:
        def to_old(conn: Connection) -> None:
            downgrade(conn)
            conn.execute(t.meta_kv.update().where(t.meta_kv.c.key == "schema_version").values(value=str(version)))

        store.write(to_old)
        if before is not None:
            before(store)
    finally:
        store.close()
    upgraded = Store(store_url)
    try:
        assert _schema_version(upgraded) == str(MIGRATIONS[-1][0])
        yield upgraded
    finally:
        upgraded.close()


def test_a_v2_database_gets_the_partial_release_index(store_url: str) -> None:
    def to_v2(conn: Connection) -> None:  # the index as v2 created it: every decision in it
        conn.exec_driver_sql("DROP INDEX ix_decisions_state_release")
        conn.exec_driver_sql("CREATE INDEX ix_decisions_state_release ON decisions (state, release_ms)")

    def before(store: Store) -> None:
        assert "WHERE" not in _release_index_of(store).upper()

    with _upgraded_from(store_url, 2, to_v2, before) as upgraded:
        definition = _release_index_of(upgraded)
        assert "WHERE" in definition.upper() and "release_ms IS NOT NULL".upper() in definition.upper()


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


def test_a_v3_database_gets_the_covering_contacts_index(store_url: str) -> None:
    def to_v3(conn: Connection) -> None:  # the index as v3 had it
        conn.exec_driver_sql("DROP INDEX ix_contacts_customer_at")
        conn.exec_driver_sql("CREATE INDEX ix_contacts_customer_at ON contacts (customer_id, at_ms)")

    def before(store: Store) -> None:
        assert "channel" not in store.read(lambda c: _index(c, "ix_contacts_customer_at"))

    with _upgraded_from(store_url, 3, to_v3, before) as upgraded:
        definition = upgraded.read(lambda c: _index(c, "ix_contacts_customer_at"))
        assert all(column in definition for column in ("customer_id", "at_ms", "status", "action_id", "channel"))


def test_the_decide_paths_contact_reads_are_answered_from_the_index(sqlite_url: str) -> None:
    """Both the decide path's read (with identity and state) and the writer's re-check of counter rules."""
    store = Store(sqlite_url)
    try:
        def plan(statement: Prepared) -> str:
            def explain(conn: Connection) -> str:
                compiled = statement._sql(conn)
                args = compiled.args({"customer_id": "c1", "alias": "c1", "since_ms": 0})
                return " ".join(str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled.sql}",
                                                                              args))
            return store.read(explain)

        for statement in (_CONTACTS["sqlite"], decide_reads._BY_DIALECT["sqlite"]):
            found = plan(statement)
            assert "COVERING INDEX ix_contacts_customer_at (customer_id=? AND at_ms>?)" in found, found
    finally:
        store.close()


def test_a_v4_database_gets_the_partial_pending_index(store_url: str) -> None:
    def to_v4(conn: Connection) -> None:  # the index as v4 had it: every row, by version
        conn.exec_driver_sql("DROP INDEX ix_learn_pending")
        conn.exec_driver_sql("CREATE INDEX ix_learn_pending ON learn_queue "
                             "(policy_name, policy_version, snapshot_id, seq)")

    with _upgraded_from(store_url, 4, to_v4) as upgraded:
        definition = upgraded.read(lambda c: _index(c, "ix_learn_pending"))
        assert "snapshot_id IS NULL".upper() in definition.upper(), definition


def test_the_learners_pending_read_uses_the_partial_index(sqlite_url: str) -> None:
    store = Store(sqlite_url)
    try:
        plan = store.read(lambda c: " ".join(
            str(row[-1]) for row in c.exec_driver_sql(
                "EXPLAIN QUERY PLAN SELECT seq FROM learn_queue WHERE policy_name = 'p' AND snapshot_id IS NULL "
                "AND policy_version <= 3 ORDER BY seq LIMIT 10")))
        assert "COVERING INDEX ix_learn_pending" in plan and "TEMP B-TREE" not in plan, plan
    finally:
        store.close()


def test_a_v5_database_gets_the_attribute_times_column_and_its_states_keep_working(store_url: str) -> None:
    """States stored before v6 have no attribute times: they adopt their newest event's (features/state.py)."""
    def to_v5(conn: Connection) -> None:
        conn.exec_driver_sql("ALTER TABLE customers DROP COLUMN attribute_us")
        conn.execute(t.customers.insert().values(
            customer_id="c-old", created_ms=0, updated_ms=0,
            state='{"attributes": {"tier": "gold"}, "last_event_at": {"x": "2026-11-24T10:00:00+00:00"}}'))

    with _upgraded_from(store_url, 5, to_v5) as upgraded:
        late = Event("e-late", "c-old", "profile_updated", datetime(2026, 11, 24, 9, tzinfo=UTC),
                     {"tier": "bronze", "city": "Oslo"})
        upgraded.ingest_events([late], apply_event, datetime(2026, 11, 24, 11, tzinfo=UTC))
        state = upgraded.load_customer("c-old")
        assert state is not None and state.attributes == {"tier": "gold", "city": "Oslo"}
        assert set(state.attribute_us) == {"tier", "city"}


V7_INDEXES = {"events": "ix_events_received", "learn_queue": "ix_learn_decision", "budget_counters": "ix_budget_start"}


def _to_v6(conn: Connection) -> None:
    for name in V7_INDEXES.values():
        conn.exec_driver_sql(f"DROP INDEX {name}")


def _valid_indexes(store: Store) -> dict[str, bool]:
    """The v7 indexes present, and whether each is valid (always, on SQLite)."""
    def read(conn: Connection) -> dict[str, bool]:
        if conn.dialect.name == "sqlite":
            names = {r[0] for r in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'index'")}
            return {name: True for name in V7_INDEXES.values() if name in names}
        rows = conn.exec_driver_sql(
            "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relnamespace = current_schema()::regnamespace")
        return {name: bool(valid) for name, valid in rows if name in V7_INDEXES.values()}
    return store.read(read)


def test_a_v6_database_gets_the_retention_indexes(store_url: str) -> None:
    def before(store: Store) -> None:
        assert _valid_indexes(store) == {}

    with _upgraded_from(store_url, 6, _to_v6, before) as upgraded:
        assert _valid_indexes(upgraded) == dict.fromkeys(V7_INDEXES.values(), True)


def _event_row(event_id: str) -> dict[str, Any]:
    return {"event_id": event_id, "customer_id": "c-1", "type": "page_view", "ts_ms": 0, "received_ms": 0,
            "properties": "{}"}


@pytest.mark.postgres
def test_on_postgresql_they_are_built_while_writes_go_on(postgres_url: str) -> None:
    """A plain CREATE INDEX waits for the transactions writing to its table, and every write that comes after it
    queues behind it: on a busy deployment, ingest and rewards stop on every host for the whole build. Built
    concurrently, the index waits for the writer in progress while the next write goes through; and a host of an
    older version starting meanwhile takes the migration lock at once (the build held it, and the old host,
    waiting for it inside a statement, held a snapshot the build waited for: a deadlock, in a review)."""
    store = Store(postgres_url)
    store.write(lambda conn: (_to_v6(conn), conn.execute(
        t.meta_kv.update().where(t.meta_kv.c.key == "schema_version").values(value="6"))))
    store.close()
    engine = create_engine(postgres_url)
    try:
        with ThreadPoolExecutor(1) as pool, engine.connect() as running:  # a failure ends `running` first
            running.execute(t.events.insert().values(**_event_row("e-in-progress")))  # its transaction stays open
            opening = pool.submit(Store, postgres_url)
            with engine.connect() as watcher:
                deadline = time.monotonic() + 30
                while not watcher.execute(text(
                        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE :building "
                        "AND wait_event_type = 'Lock'"), {"building": "CREATE INDEX%ix_events_received%"}).scalar():
                    assert time.monotonic() < deadline and not opening.done(), "the build never waited for the writer"
                    watcher.rollback()
            with engine.connect() as next_write, next_write.begin():
                next_write.exec_driver_sql("SET LOCAL lock_timeout = '10s'")
                next_write.execute(t.events.insert().values(**_event_row("e-meanwhile")))  # plain: lock timeout
            with engine.connect() as older_host, older_host.begin():  # its migration, as 2d26cae took the lock
                older_host.exec_driver_sql("SET LOCAL lock_timeout = '10s'")
                older_host.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            running.commit()
            upgraded = opening.result(timeout=60)
        try:
            assert _schema_version(upgraded) == str(MIGRATIONS[-1][0])
            assert _valid_indexes(upgraded) == dict.fromkeys(V7_INDEXES.values(), True)
        finally:
            upgraded.close()
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_on_postgresql_an_invalid_index_is_built_again_whatever_the_schema_version(postgres_url: str) -> None:
    """A build interrupted after a host of an older version recorded the version left the index invalid for good:
    it was rebuilt only for a pending migration (a review). Every start checks them."""
    store = Store(postgres_url)
    store.write(lambda conn: conn.exec_driver_sql(
        "UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'ix_events_received'::regclass"))
    assert _valid_indexes(store)["ix_events_received"] is False
    store.close()
    again = Store(postgres_url)
    try:
        assert _schema_version(again) == str(MIGRATIONS[-1][0])
        assert _valid_indexes(again) == dict.fromkeys(V7_INDEXES.values(), True)
    finally:
        again.close()


@pytest.mark.postgres
def test_on_postgresql_a_migration_goes_where_the_tables_are(postgres_url: str) -> None:
    """A schema created later at the head of the search path (PostgreSQL's default path starts with the role's
    name): the v9 table was created there, apart from the others, and an invalid index beside the tables was
    not seen (a review)."""
    schema = postgres_url.rsplit("%3D", 1)[1]

    def to_v8_with_an_invalid_index(conn: Connection) -> None:
        conn.exec_driver_sql("DROP TABLE budget_history")
        conn.exec_driver_sql("UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'ix_events_received'::regclass")
        conn.execute(t.meta_kv.update().where(t.meta_kv.c.key == "schema_version").values(value="8"))

    store = Store(postgres_url)
    store.write(to_v8_with_an_invalid_index)
    store.close()
    ahead = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(_pg_url())
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{ahead}"')
    try:
        upgraded = Store(_pg_url(f"{ahead},{schema}"))
        upgraded.close()
        with admin.connect() as conn:
            tables = conn.execute(text("SELECT table_schema FROM information_schema.tables "
                                       "WHERE table_name = 'budget_history' AND table_schema IN (:a, :s)"),
                                  {"a": ahead, "s": schema}).scalars().all()
        assert tables == [schema]
        again = Store(postgres_url)
        try:
            assert _valid_indexes(again) == dict.fromkeys(V7_INDEXES.values(), True)
        finally:
            again.close()
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{ahead}" CASCADE')
        admin.dispose()


@pytest.mark.postgres
def test_on_postgresql_an_index_an_interrupted_build_left_invalid_is_built_again(postgres_url: str) -> None:
    """An interrupted concurrent build leaves an invalid index, which PostgreSQL keeps up to date but never
    reads: IF NOT EXISTS alone would leave it so for good."""
    def to_v6_with_an_invalid_index(conn: Connection) -> None:
        conn.exec_driver_sql("UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'ix_events_received'::regclass")

    def before(store: Store) -> None:
        assert _valid_indexes(store)["ix_events_received"] is False

    with _upgraded_from(postgres_url, 6, to_v6_with_an_invalid_index, before) as upgraded:
        assert _valid_indexes(upgraded) == dict.fromkeys(V7_INDEXES.values(), True)


def test_a_v7_database_gets_the_carried_budget_column_and_its_counters_keep_counting(store_url: str) -> None:
    """Counters stored before v8 carried nothing that is known: all their units count as taken in their window."""
    def to_v7(conn: Connection) -> None:
        conn.exec_driver_sql("ALTER TABLE budget_counters DROP COLUMN carried")
        conn.execute(t.budget_counters.insert().values(action_id="x", window_s=3600, window_start_ms=0, used=3))

    with _upgraded_from(store_url, 7, to_v7) as upgraded:
        rows = upgraded.read(lambda c: c.execute(select(t.budget_counters.c.used, t.budget_counters.c.carried)).all())
        assert [tuple(row) for row in rows] == [(3, None)]


def test_budget_history_as_v9_first_made_it_gets_its_window_length(store_url: str) -> None:
    """v9 first created the table without `window_s` (85b2d8c), and the change to it came without a migration:
    a store made then failed every save of a budgeted action (review). Its rows count for every length."""
    def to_first_v9(conn: Connection) -> None:
        conn.exec_driver_sql("DROP TABLE budget_history")
        conn.exec_driver_sql("CREATE TABLE budget_history (action_id VARCHAR(128) NOT NULL, day_start_ms BIGINT NOT "
                             "NULL, taken INTEGER NOT NULL, PRIMARY KEY (action_id, day_start_ms))")
        conn.exec_driver_sql("INSERT INTO budget_history VALUES ('a', 0, 2)")

    with _upgraded_from(store_url, 9, to_first_v9) as upgraded:
        rows = upgraded.read(lambda c: c.execute(select(t.budget_history)).all())
        assert [tuple(row) for row in rows] == [("a", 0, 0, 2)]
        now = datetime(1970, 1, 1, 12, tzinfo=UTC)
        upgraded.put_action("a", Action(channels=["web"], budget=Budget(limit=5, window="1d")), now)
        used = upgraded.read(lambda c: c.execute(select(t.budget_counters.c.used)).scalars().all())
        assert used == [2]
