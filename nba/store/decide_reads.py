"""What a decision reads about its customer, in one statement: canonical id, state and recent contacts.

On SQLite the decide path reads inline on the event loop's thread, and Python's driver lets go of the GIL for
every row it steps through; each time, another thread (the group-commit writer, the server's I/O threads) may
take it, and the loop waits for it back. One statement that returns one row, with the contacts aggregated as
JSON, hands the GIL over once per decision instead of once per contact; on PostgreSQL it is one round trip.
"""

from __future__ import annotations

from sqlalchemy import Connection, select

from nba.store import schema as t
from nba.store.codec import loads
from nba.store.customer_repo import CANONICAL
from nba.store.decision_repo import contacts_json, parse_contacts
from nba.store.prepared import Prepared
from nba.types import Contact, CustomerState


def _statement(dialect: str) -> Prepared:
    ident = select(CANONICAL.label("canonical")).subquery("ident")
    state = select(t.customers.c.state).where(t.customers.c.customer_id == ident.c.canonical).scalar_subquery()
    return Prepared(select(ident.c.canonical, state, contacts_json(dialect, ident.c.canonical)).select_from(ident))


_BY_DIALECT = {name: _statement(name) for name in ("sqlite", "postgresql")}


def customer_inputs(
    conn: Connection, customer_id: str, since_ms: int | None
) -> tuple[str, CustomerState | None, list[Contact]]:
    """The canonical id for an id or alias, its state if events made one, and its active contacts after
    `since_ms` (none read when it is None)."""
    canonical, raw_state, raw_contacts = _BY_DIALECT[conn.dialect.name].first(
        conn, {"alias": customer_id, "since_ms": since_ms}
    )
    canonical = str(canonical)
    state = None if raw_state is None else CustomerState.from_json(canonical, loads(raw_state))
    return canonical, state, parse_contacts(raw_contacts)
