"""What a decision reads about its customer, in one statement: canonical id, state and recent contacts.

On SQLite the decide path reads inline on the event loop's thread, and Python's driver lets go of the GIL for
every row it steps through; each time, another thread (the group-commit writer, the server's I/O threads) may
take it, and the loop waits for it back. One statement that returns one row, with the contacts aggregated as
JSON, hands the GIL over once per decision instead of once per contact; on PostgreSQL it is one round trip.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Connection, bindparam, func, or_, select
from sqlalchemy.sql import ColumnElement

from nba.clock import from_epoch_ms
from nba.store import schema as t
from nba.store.codec import loads
from nba.store.customer_repo import CANONICAL
from nba.store.decision_repo import ACTIVE_CONTACT
from nba.store.prepared import Prepared
from nba.types import Contact, CustomerState

_C = t.contacts.c
_IDENT = select(CANONICAL.label("canonical")).subquery("ident")


def _statement(aggregate: Any, row: Any) -> Prepared:
    contacts: ColumnElement[Any] = select(aggregate(row(_C.action_id, _C.channel, _C.at_ms))).where(
        _C.customer_id == _IDENT.c.canonical,
        _C.at_ms > bindparam("since_ms", type_=BigInteger),
        or_(*(_C.status == status for status in ACTIVE_CONTACT)),
    ).scalar_subquery()
    state = select(t.customers.c.state).where(t.customers.c.customer_id == _IDENT.c.canonical).scalar_subquery()
    return Prepared(select(_IDENT.c.canonical, state, contacts).select_from(_IDENT))


_BY_DIALECT = {
    "sqlite": _statement(func.json_group_array, func.json_array),
    "postgresql": _statement(func.json_agg, func.json_build_array),
}


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
    if raw_contacts is None:  # PostgreSQL's json_agg of no rows
        return canonical, state, []
    rows = loads(raw_contacts) if isinstance(raw_contacts, str | bytes) else raw_contacts
    return canonical, state, [Contact(action_id, channel, from_epoch_ms(at_ms)) for action_id, channel, at_ms in rows]
