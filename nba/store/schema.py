"""Tables, and the migrations that create and change them."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    inspect,
    select,
    text,
)

metadata = MetaData()
ID = String(128)

meta_kv = Table("meta_kv", metadata, Column("key", String(64), primary_key=True), Column("value", Text))

actions = Table(
    "actions",
    metadata,
    Column("action_id", ID, primary_key=True),
    Column("spec", Text, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)

policies = Table(
    "policies",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("spec", Text, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)

policy_versions = Table(
    "policy_versions",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("spec", Text, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
)

event_types = Table(
    "event_types",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("spec", Text, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)

customers = Table(
    "customers",
    metadata,
    Column("customer_id", ID, primary_key=True),
    Column("state", Text, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    # When each attribute was set (JSON: name -> microseconds); read by event ingest only, so the decide path's
    # read of `state` stays as small as before. NULL on rows stored before v6.
    Column("attribute_us", Text),
)

aliases = Table(
    "aliases",
    metadata,
    Column("alias", ID, primary_key=True),
    Column("customer_id", ID, nullable=False, index=True),
)

events = Table(
    "events",
    metadata,
    Column("event_id", ID, primary_key=True),
    Column("customer_id", ID, nullable=False),
    Column("type", String(64), nullable=False),
    Column("ts_ms", BigInteger, nullable=False),
    Column("received_ms", BigInteger, nullable=False),
    Column("properties", Text, nullable=False),
    Index("ix_events_customer_ts", "customer_id", "ts_ms"),
    # The oldest events first, for retention (v7); appended at the right edge, so cheap to keep.
    Index("ix_events_received", "received_ms"),
)

decisions = Table(
    "decisions",
    metadata,
    Column("decision_id", ID, primary_key=True),
    Column("customer_id", ID, nullable=False),
    Column("channel", String(64), nullable=False),
    Column("policy_name", String(64), nullable=False),
    Column("policy_version", Integer, nullable=False),
    Column("mode", String(16), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("request_id", ID),
    Column("deferred", Boolean, nullable=False),
    Column("activated_ms", BigInteger),
    Column("window_end_ms", BigInteger),
    Column("release_ms", BigInteger),
    Column("state", String(16), nullable=False),
    Column("body", Text, nullable=False),
    Index("ix_decisions_customer_created", "customer_id", "created_ms"),
    Index("ix_decisions_state_window", "state", "window_end_ms"),
    # Only deferred decisions have a release time: the others never touch this index (v3).
    Index("ix_decisions_state_release", "state", "release_ms", sqlite_where=text("release_ms IS NOT NULL"),
          postgresql_where=text("release_ms IS NOT NULL")),
    Index("ix_decisions_policy_created", "policy_name", "created_ms"),
)

decision_slots = Table(
    "decision_slots",
    metadata,
    Column("decision_id", ID, primary_key=True),
    Column("slot", Integer, primary_key=True),
    Column("action_id", ID, nullable=False),
    Column("probability", Float, nullable=False),
    Column("reward_sum", Float, nullable=False, default=0.0),
    Column("reward_count", Integer, nullable=False, default=0),
    Column("final", Boolean, nullable=False, default=False),
)

rewards = Table(
    "rewards",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("decision_id", ID, nullable=False, index=True),
    Column("slot", Integer, nullable=False),
    Column("value", Float, nullable=False),
    Column("received_ms", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
)

contacts = Table(
    "contacts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("customer_id", ID, nullable=False),
    Column("action_id", ID, nullable=False),
    Column("channel", String(64), nullable=False),
    Column("at_ms", BigInteger, nullable=False),
    Column("decision_id", ID, nullable=False, index=True),
    Column("status", String(16), nullable=False),
    Column("budget_window_s", Integer),
    Column("budget_window_ms", BigInteger),
    # Covers the decide path's contact read (v4): the range scan answers it without a table lookup per row.
    Index("ix_contacts_customer_at", "customer_id", "at_ms", "status", "action_id", "channel"),
)

budget_counters = Table(
    "budget_counters",
    metadata,
    Column("action_id", ID, primary_key=True),
    Column("window_s", Integer, primary_key=True),
    Column("window_start_ms", BigInteger, primary_key=True),
    Column("used", Integer, nullable=False),
    # Of `used`, the units carried in from windows of other lengths when the action was saved with this window's
    # length (`catalog_repo.carry_budget_use`; v8): the rest were taken here, and only those are carried on.
    # NULL: none (or stored before v8).
    Column("carried", Integer),
    Index("ix_budget_start", "window_start_ms"),  # past windows, for retention (v7)
)

# Budget units taken in windows that ended before the retention period, per action, UTC day (the day each window
# ended in) and window length, for as long as a budget window may last (v9). A budget saved later with a window of
# another length still counts them (`catalog_repo.carry_budget_use`); one row a day and length, however short the
# windows were.
budget_history = Table(
    "budget_history",
    metadata,
    Column("action_id", ID, primary_key=True),
    Column("day_start_ms", BigInteger, primary_key=True),
    Column("window_s", Integer, primary_key=True),
    Column("taken", Integer, nullable=False),
    Index("ix_budget_history_day", "day_start_ms"),
)

idempotency = Table(
    "idempotency",
    metadata,
    Column("channel", String(64), primary_key=True),
    Column("request_id", ID, primary_key=True),
    Column("body_hash", String(64), nullable=False),
    Column("decision_id", ID, nullable=False),
    Column("created_ms", BigInteger, nullable=False, index=True),
)

learn_queue = Table(
    "learn_queue",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("policy_name", String(64), nullable=False),
    Column("policy_version", Integer, nullable=False),
    Column("decision_id", ID, nullable=False),
    Column("slot", Integer, nullable=False),
    Column("reward", Float, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("snapshot_id", Integer),
    # The pending rows of a policy, of every version, in seq order (v5: the learner of a policy's current version
    # also learns what earlier versions' decisions were rewarded with).
    Index("ix_learn_pending", "policy_name", "seq", "policy_version", "snapshot_id",
          sqlite_where=text("snapshot_id IS NULL"),
          postgresql_where=text("snapshot_id IS NULL")),
    # A decision's rows, so that retention forgets them with it and never leaves a row the learner cannot join (v7).
    Index("ix_learn_decision", "decision_id"),
)

model_snapshots = Table(
    "model_snapshots",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("policy_name", String(64), nullable=False),
    Column("policy_version", Integer, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("examples", BigInteger, nullable=False),
    Column("model", LargeBinary, nullable=False),
    # Written by the learner from the bytes it serialized, so damage after the save is detectable; NULL on
    # snapshots saved before schema v2 (legacy: nothing to verify them against).
    Column("checksum", String(80)),
    # What the model was trained with (feature encoding and Vowpal Wabbit arguments); NULL on legacy snapshots.
    Column("fingerprint", Text),
    Index("ix_snapshots_policy", "policy_name", "policy_version", "id"),
)

leases = Table(
    "leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(128), nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
)


def _v1(conn: Connection) -> None:
    metadata.create_all(conn)


def _add_missing_columns(conn: Connection, table: Table, names: list[str]) -> None:
    """`ALTER TABLE ... ADD COLUMN` for each named (nullable) column the table lacks.

    A database created at this code's version already has them: `_v1` creates tables from the current metadata.
    """
    present = {column["name"] for column in inspect(conn).get_columns(table.name)}
    for name in names:
        if name not in present:
            column = table.c[name]
            kind = column.type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {name} {kind}")


def _v2(conn: Connection) -> None:
    _add_missing_columns(conn, model_snapshots, ["checksum", "fingerprint"])


def _recreate_index(conn: Connection, table: Table, name: str) -> None:
    """Replace an index with its current definition in the metadata."""
    conn.exec_driver_sql(f"DROP INDEX IF EXISTS {name}")
    next(index for index in table.indexes if index.name == name).create(conn)


def _v3(conn: Connection) -> None:
    """The release index becomes partial: one B-tree page less written per decision commit (of about 14)."""
    _recreate_index(conn, decisions, "ix_decisions_state_release")


def _v4(conn: Connection) -> None:
    """The contacts index covers the decide path's read (status, action and channel beside the time)."""
    _recreate_index(conn, contacts, "ix_contacts_customer_at")


def _v5(conn: Connection) -> None:
    """The pending index holds only pending rows, of every version of a policy, in seq order."""
    _recreate_index(conn, learn_queue, "ix_learn_pending")


def _v6(conn: Connection) -> None:
    _add_missing_columns(conn, customers, ["attribute_us"])


# The indexes each migration adds, which PostgreSQL builds before the migration's transaction without blocking
# writes (`online_indexes`); the migration creates whichever is still missing (all of them on SQLite).
ONLINE_INDEXES: dict[int, tuple[tuple[Table, str], ...]] = {
    7: ((events, "ix_events_received"), (learn_queue, "ix_learn_decision"), (budget_counters, "ix_budget_start")),
}


def _v7(conn: Connection) -> None:
    """Indexes for retention: events by arrival, learning rows by decision, budget counters by window."""
    for table, name in ONLINE_INDEXES[7]:
        next(index for index in table.indexes if index.name == name).create(conn, checkfirst=True)


def _v8(conn: Connection) -> None:
    _add_missing_columns(conn, budget_counters, ["carried"])


def _v9(conn: Connection) -> None:
    budget_history.create(conn, checkfirst=True)


def _v10(conn: Connection) -> None:
    """`budget_history` as v9 first created it (85b2d8c) had no `window_s`: rebuilt with it, its rows kept with
    window_s 0, a length no window has, so they are carried into a window of any length, as they were."""
    if "window_s" in {column["name"] for column in inspect(conn).get_columns(budget_history.name)}:
        return
    rows = conn.execute(text("SELECT action_id, day_start_ms, taken FROM budget_history")).all()
    conn.exec_driver_sql("DROP TABLE budget_history")
    budget_history.create(conn)
    if rows:
        conn.execute(budget_history.insert(), [{"action_id": a, "day_start_ms": d, "window_s": 0, "taken": n}
                                               for a, d, n in rows])


MIGRATIONS: list[tuple[int, Callable[[Connection], None]]] = [
    (1, _v1), (2, _v2), (3, _v3), (4, _v4), (5, _v5), (6, _v6), (7, _v7), (8, _v8), (9, _v9), (10, _v10),
]


def current_version(conn: Connection) -> int:
    """The schema version recorded in the database, 0 for an empty one."""
    if not conn.dialect.has_table(conn, "meta_kv"):
        return 0
    value = conn.execute(select(meta_kv.c.value).where(meta_kv.c.key == "schema_version")).scalar()
    return int(value) if value is not None else 0


def migrate(conn: Connection) -> int:
    """Apply every pending migration inside the caller's transaction; return the resulting version."""
    version = current_version(conn)
    for target, step in MIGRATIONS:
        if target > version:
            step(conn)
            conn.execute(meta_kv.delete().where(meta_kv.c.key == "schema_version"))
            conn.execute(meta_kv.insert().values(key="schema_version", value=str(target)))
            version = target
    return version
