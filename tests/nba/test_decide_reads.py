"""The decide path's one-statement read returns what the separate reads return, on both backends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection

from nba.clock import epoch_ms
from nba.store import Store
from nba.store import schema as t
from nba.store.codec import dumps
from nba.store.customer_repo import load_state, resolve
from nba.store.decide_reads import customer_inputs
from nba.store.decision_repo import load_contacts
from nba.types import Contact

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
NOW_MS = epoch_ms(NOW)
DAY_MS = 86_400_000


def _seed(conn: Connection) -> None:
    state = {"attributes": {"age": 41}, "event_counts": {"purchase": 2}, "last_event_at": {}, "opt_outs": []}
    conn.execute(t.customers.insert(), [
        {"customer_id": "c-1", "state": dumps(state), "created_ms": 0, "updated_ms": 0},
    ])
    conn.execute(t.aliases.insert(), [{"alias": "email:ann@example.com", "customer_id": "c-1"}])
    rows = [
        ("a-1", "web", NOW_MS - DAY_MS // 2, "counted"),
        ("a-2", "email", NOW_MS - 2 * DAY_MS, "reserved"),
        ("a-1", "web", NOW_MS - 3 * DAY_MS, "released"),  # released: no longer counts
        ("a-3", "app", NOW_MS - 9 * DAY_MS, "counted"),  # before the lookback
    ]
    conn.execute(t.contacts.insert(), [
        {"customer_id": "c-1", "action_id": a, "channel": ch, "at_ms": at, "decision_id": f"d-{i}", "status": st}
        for i, (a, ch, at, st) in enumerate(rows)
    ] + [{"customer_id": "c-2", "action_id": "a-9", "channel": "web", "at_ms": NOW_MS - 1, "decision_id": "d-9",
          "status": "counted"}])


def test_one_statement_reads_what_the_separate_reads_do(store_url: str) -> None:
    store = Store(store_url)
    try:
        store.write(_seed)
        since = NOW_MS - 7 * DAY_MS

        def both(customer_id: str) -> tuple[object, object]:
            def separate(conn: Connection) -> tuple[str, object, list[Contact]]:
                canonical = resolve(conn, customer_id)
                return canonical, load_state(conn, canonical), load_contacts(conn, canonical, NOW_MS, timedelta(days=7))

            return store.read(lambda c: customer_inputs(c, customer_id, since)), store.read(separate)

        for customer_id in ("c-1", "email:ann@example.com", "c-2", "nobody"):
            one, separate = both(customer_id)
            canonical, state, contacts = one  # type: ignore[misc]
            assert (canonical, state, sorted(contacts, key=repr)) == (
                separate[0], separate[1], sorted(separate[2], key=repr))  # type: ignore[index]
        canonical, state, contacts = store.read(lambda c: customer_inputs(c, "email:ann@example.com", since))
        assert canonical == "c-1" and state is not None and state.attributes == {"age": 41}
        assert sorted(contacts, key=repr) == sorted([
            Contact("a-1", "web", datetime.fromtimestamp((NOW_MS - DAY_MS // 2) / 1000, UTC)),
            Contact("a-2", "email", datetime.fromtimestamp((NOW_MS - 2 * DAY_MS) / 1000, UTC)),
        ], key=repr)
        assert store.read(lambda c: customer_inputs(c, "nobody", since)) == ("nobody", None, [])
        assert store.read(lambda c: customer_inputs(c, "c-1", None))[2] == []  # no lookback: no contacts read
    finally:
        store.close()
