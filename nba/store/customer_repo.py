"""Customers: identity (aliases), the state events build, and the events themselves."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy import Connection, String, bindparam, func, select, update

from nba.clock import epoch_ms
from nba.store import schema as t
from nba.store.codec import dumps, loads
from nba.store.prepared import Prepared
from nba.types import CustomerState, Event, EventOutcome

Reducer = Callable[[CustomerState, Event], CustomerState]


_RESOLVE = select(t.aliases.c.customer_id).where(t.aliases.c.alias == bindparam("alias", type_=String))
_STATE = select(t.customers.c.state).where(t.customers.c.customer_id == bindparam("customer_id"))
# The canonical id and its state in one statement (the decide path's first read).
_CANONICAL = func.coalesce(
    select(t.aliases.c.customer_id).where(t.aliases.c.alias == bindparam("alias", type_=String)).scalar_subquery(),
    bindparam("alias", type_=String),
)
_IDENTITY = Prepared(
    select(
        _CANONICAL.label("canonical"),
        select(t.customers.c.state).where(t.customers.c.customer_id == _CANONICAL).scalar_subquery(),
    )
)


def resolve(conn: Connection, customer_id: str) -> str:
    """The canonical id for an id or alias (an id nobody aliased is its own canonical id)."""
    canonical = conn.execute(_RESOLVE, {"alias": customer_id}).scalar()
    return str(canonical) if canonical is not None else customer_id


def identity(conn: Connection, customer_id: str) -> tuple[str, CustomerState | None]:
    """The canonical id for an id or alias, and that customer's state if events made one."""
    canonical, raw = _IDENTITY.first(conn, {"alias": customer_id})
    return str(canonical), None if raw is None else CustomerState.from_json(str(canonical), loads(raw))


def aliases_of(conn: Connection, customer_id: str) -> list[str]:
    rows = conn.execute(select(t.aliases.c.alias).where(t.aliases.c.customer_id == customer_id))
    return sorted(str(r.alias) for r in rows)


def load_state(conn: Connection, customer_id: str, for_update: bool = False) -> CustomerState | None:
    query = _STATE
    if for_update and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    raw = conn.execute(query, {"customer_id": customer_id}).scalar()
    return None if raw is None else CustomerState.from_json(customer_id, loads(raw))


def save_state(conn: Connection, state: CustomerState, now_ms: int, existed: bool) -> None:
    encoded = dumps(state.to_json())
    if existed:
        conn.execute(
            update(t.customers)
            .where(t.customers.c.customer_id == state.customer_id)
            .values(state=encoded, updated_ms=now_ms)
        )
    else:
        conn.execute(
            t.customers.insert().values(
                customer_id=state.customer_id, state=encoded, created_ms=now_ms, updated_ms=now_ms
            )
        )


def ingest_events(conn: Connection, batch: Sequence[Event], reducer: Reducer, now_ms: int) -> list[EventOutcome]:
    """Store new events and fold each into its customer's state; a repeated event id changes nothing."""
    outcomes: list[EventOutcome] = []
    states: dict[str, tuple[CustomerState, bool]] = {}
    seen: set[str] = set()
    for event in batch:
        customer_id = resolve(conn, event.customer_id)
        duplicate = event.event_id in seen or (
            conn.execute(select(t.events.c.event_id).where(t.events.c.event_id == event.event_id)).first()
            is not None
        )
        if duplicate:
            outcomes.append(EventOutcome(event.event_id, customer_id, True))
            continue
        seen.add(event.event_id)
        conn.execute(
            t.events.insert().values(
                event_id=event.event_id,
                customer_id=customer_id,
                type=event.type,
                ts_ms=epoch_ms(event.timestamp),
                received_ms=now_ms,
                properties=dumps(event.properties),
            )
        )
        if customer_id not in states:
            loaded = load_state(conn, customer_id, for_update=True)
            states[customer_id] = (loaded or CustomerState(customer_id), loaded is not None)
        state, existed = states[customer_id]
        states[customer_id] = (reducer(state, event), existed)
        outcomes.append(EventOutcome(event.event_id, customer_id, False))
    for state, existed in states.values():
        save_state(conn, state, now_ms, existed)
    return outcomes
