"""Model snapshots in the store: the checksum and fingerprint their writer records, stepping back past a
snapshot, and the v2 migration that adds those columns to a v1 database."""

from __future__ import annotations

from sqlalchemy import Connection, inspect, select

from nba.clock import ManualClock
from nba.store import Store
from nba.store import schema as t
from nba.store.schema import MIGRATIONS

POLICY = "web"


def test_checksum_and_fingerprint_are_stored_as_given(store: Store, clock: ManualClock) -> None:
    legacy = store.save_snapshot(POLICY, 1, b"model-1", 1, [], clock.now())
    recorded = store.save_snapshot(POLICY, 1, b"model-2", 2, [], clock.now(), checksum="sha256:ab",
                                   fingerprint="namespaces/1 --cb_explore_adf -q CA")
    latest = store.latest_snapshot(POLICY, 1)
    assert latest is not None and latest.snapshot_id == recorded
    assert (latest.model, latest.checksum, latest.fingerprint) == (
        b"model-2", "sha256:ab", "namespaces/1 --cb_explore_adf -q CA")
    older = store.latest_snapshot(POLICY, 1, older_than=recorded)
    assert older is not None and older.snapshot_id == legacy
    assert (older.model, older.checksum, older.fingerprint) == (b"model-1", None, None)


def test_older_than_steps_back_one_snapshot_at_a_time(store: Store, clock: ManualClock) -> None:
    made = [store.save_snapshot(POLICY, 1, bytes([i]), i, [], clock.now()) for i in range(3)]
    store.save_snapshot(POLICY, 2, b"other version", 9, [], clock.now())
    seen, older_than = [], None
    while (snapshot := store.latest_snapshot(POLICY, 1, older_than=older_than)) is not None:
        seen.append(snapshot.snapshot_id)
        older_than = snapshot.snapshot_id
    assert seen == made[::-1]
    latest = store.latest_snapshot(POLICY, 1, newer_than=made[0], older_than=made[2])
    assert latest is not None and latest.snapshot_id == made[1]


def test_a_v1_database_gains_the_columns_and_keeps_its_snapshots_as_legacy(store_url: str, clock: ManualClock) -> None:
    store = Store(store_url)
    try:
        def to_v1(conn: Connection) -> None:
            # What a database written by the v1 code looks like: no checksum or fingerprint columns.
            for column in ("checksum", "fingerprint"):
                conn.exec_driver_sql(f"ALTER TABLE model_snapshots DROP COLUMN {column}")
            conn.execute(t.meta_kv.update().where(t.meta_kv.c.key == "schema_version").values(value="1"))
            conn.execute(t.model_snapshots.insert().values(
                policy_name=POLICY, policy_version=1, created_ms=0, examples=7, model=b"v1 model"))

        store.write(to_v1)
    finally:
        store.close()

    upgraded = Store(store_url)
    try:
        def columns_and_version(conn: Connection) -> tuple[set[str], str | None]:
            names = {c["name"] for c in inspect(conn).get_columns("model_snapshots")}
            version = conn.execute(select(t.meta_kv.c.value).where(t.meta_kv.c.key == "schema_version")).scalar()
            return names, version

        names, version = upgraded.read(columns_and_version)
        assert {"checksum", "fingerprint"} <= names and version == str(MIGRATIONS[-1][0])
        legacy = upgraded.latest_snapshot(POLICY, 1)
        assert legacy is not None and (legacy.model, legacy.examples) == (b"v1 model", 7)
        assert (legacy.checksum, legacy.fingerprint) == (None, None)
        upgraded.save_snapshot(POLICY, 1, b"v2 model", 8, [], clock.now(), checksum="sha256:cd", fingerprint="f")
        latest = upgraded.latest_snapshot(POLICY, 1)
        assert latest is not None and (latest.checksum, latest.fingerprint) == ("sha256:cd", "f")
    finally:
        upgraded.close()


def test_migrating_an_up_to_date_database_changes_nothing(store_url: str) -> None:
    Store(store_url).close()
    again = Store(store_url)
    try:
        names = again.read(lambda conn: [c["name"] for c in inspect(conn).get_columns("model_snapshots")])
        assert names.count("checksum") == 1 and names.count("fingerprint") == 1
    finally:
        again.close()
