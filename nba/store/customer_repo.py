"""Customers: identity (aliases), the state events build, and the events themselves."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, String, bindparam, func, select, update
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.elements import BindParameter

from nba.clock import epoch_ms
from nba.errors import InvalidInput
from nba.store import schema as t
from nba.store.codec import dumps, encoded_size, loads
from nba.store.prepared import Prepared
from nba.types import CustomerState, Event, EventOutcome

Reducer = Callable[[CustomerState, Event], CustomerState]
# The most a customer's properties may take, as stored (UTF-8 JSON): every decision for the customer reads and
# decodes them (a 4 MB state took half a second). A batch that would grow them past it is a 422 naming the
# customer's last event in it; one that does not grow them (a consent event, a property set again) never is.
MAX_ATTRIBUTE_BYTES = 256 * 1024


_RESOLVE = select(t.aliases.c.customer_id).where(t.aliases.c.alias == bindparam("alias", type_=String))
_STATE = select(t.customers.c.state, t.customers.c.attribute_us).where(
    t.customers.c.customer_id == bindparam("customer_id"))
# The canonical id of `:alias` (an id nobody aliased is its own id).
CANONICAL = func.coalesce(
    select(t.aliases.c.customer_id).where(t.aliases.c.alias == bindparam("alias", type_=String)).scalar_subquery(),
    bindparam("alias", type_=String),
)


def resolve(conn: Connection, customer_id: str) -> str:
    """The canonical id for an id or alias (an id nobody aliased is its own canonical id)."""
    canonical = conn.execute(_RESOLVE, {"alias": customer_id}).scalar()
    return str(canonical) if canonical is not None else customer_id


def aliases_of(conn: Connection, customer_id: str) -> list[str]:
    rows = conn.execute(select(t.aliases.c.alias).where(t.aliases.c.customer_id == customer_id))
    return sorted(str(r.alias) for r in rows)


def load_state(conn: Connection, customer_id: str) -> CustomerState | None:
    row = conn.execute(_STATE, {"customer_id": customer_id}).first()
    return None if row is None else _state(customer_id, row.state, row.attribute_us)


def _state(customer_id: str, raw: str, times: str | None) -> CustomerState:
    state = CustomerState.from_json(customer_id, loads(raw))
    if times is not None:
        state.attribute_us = loads(times)
    return state


def _in_list(cache: dict[int, Prepared], build: Callable[[list[BindParameter[str]]], ClauseElement],
             values: Sequence[str], conn: Connection) -> list[Any]:
    """Rows of `build(params)` for `values`, in chunks, each padded to a power of two.

    Padding (repeating the last value, which an IN list ignores) keeps the prepared statements to one per
    power of two up to `IN_CHUNK`, instead of one per list length.
    """
    rows: list[Any] = []
    for start in range(0, len(values), IN_CHUNK):
        chunk = list(values[start:start + IN_CHUNK])
        size = 1 << (len(chunk) - 1).bit_length()
        chunk += [chunk[-1]] * (size - len(chunk))
        found = cache.get(size)
        if found is None:
            found = cache[size] = Prepared(build([bindparam(f"v{i}", type_=String) for i in range(size)]))
        rows += found.rows(conn, {f"v{i}": value for i, value in enumerate(chunk)})
    return rows


IN_CHUNK = 512
_ALIASES_IN: dict[int, Prepared] = {}
_EVENTS_IN: dict[int, Prepared] = {}
_STATES_IN: dict[int, Prepared] = {}
_EVENT_NEW = Prepared(t.events.insert())
_CUSTOMER_NEW = Prepared(t.customers.insert())
_CUSTOMER_SAVE = Prepared(
    update(t.customers).where(t.customers.c.customer_id == bindparam("s_customer_id"))
    .values(state=bindparam("s_state"), attribute_us=bindparam("s_attribute_us"), updated_ms=bindparam("s_updated_ms"))
)


def _canonical_ids(conn: Connection, ids: Sequence[str]) -> dict[str, str]:
    found = _in_list(_ALIASES_IN, lambda p: select(t.aliases.c.alias, t.aliases.c.customer_id)
                     .where(t.aliases.c.alias.in_(p)), ids, conn)
    canonical = {str(alias): str(customer_id) for alias, customer_id in found}
    return {i: canonical.get(i, i) for i in ids}


def _stored_event_ids(conn: Connection, ids: Sequence[str]) -> set[str]:
    found = _in_list(_EVENTS_IN, lambda p: select(t.events.c.event_id).where(t.events.c.event_id.in_(p)), ids, conn)
    return {str(row[0]) for row in found}


def _states(conn: Connection, ids: Sequence[str]) -> dict[str, CustomerState]:
    """Stored states of these customers, locked for this transaction on PostgreSQL (SQLite's writer is alone)."""
    c = t.customers.c
    found = _in_list(_STATES_IN, lambda p: select(c.customer_id, c.state, c.attribute_us)
                     .where(c.customer_id.in_(p)).with_for_update(), ids, conn)
    return {str(cid): _state(str(cid), raw, times) for cid, raw, times in found}


def ingest_events(conn: Connection, batch: Sequence[Event], reducer: Reducer, now_ms: int) -> list[EventOutcome]:
    """Store new events and fold each into its customer's state, in order; a repeated event id changes nothing.

    A batch reads and writes with a few set-wise statements (ids, duplicates and states in IN lists, events
    and states with executemany) rather than five statements per event.
    """
    canonical = _canonical_ids(conn, list(dict.fromkeys(e.customer_id for e in batch)))
    stored = _stored_event_ids(conn, list(dict.fromkeys(e.event_id for e in batch)))
    outcomes: list[EventOutcome] = []
    fresh: list[tuple[int, Event, str]] = []
    seen: set[str] = set()
    for index, event in enumerate(batch):
        customer_id = canonical[event.customer_id]
        duplicate = event.event_id in seen or event.event_id in stored
        outcomes.append(EventOutcome(event.event_id, customer_id, duplicate))
        if not duplicate:
            seen.add(event.event_id)
            fresh.append((index, event, customer_id))
    if not fresh:
        return outcomes
    loaded = _states(conn, list(dict.fromkeys(customer_id for _, _, customer_id in fresh)))
    states: dict[str, CustomerState] = {}
    last_index: dict[str, int] = {}  # the batch index of each customer's last new event
    rows: list[dict[str, Any]] = []
    for index, event, customer_id in fresh:
        rows.append({"event_id": event.event_id, "customer_id": customer_id, "type": event.type,
                     "ts_ms": epoch_ms(event.timestamp), "received_ms": now_ms,
                     "properties": dumps(event.properties)})
        state = states.get(customer_id) or loaded.get(customer_id) or CustomerState(customer_id)
        try:
            states[customer_id] = reducer(state, event)
        except InvalidInput as exc:  # the event the reducer refuses, named by its place in the batch
            raise InvalidInput(exc.message, field=f"[{index}].{exc.field or 'properties'}") from exc
        last_index[customer_id] = index
    for cid, state in states.items():
        size = encoded_size(state.attributes)
        before = loaded.get(cid)
        if size > MAX_ATTRIBUTE_BYTES and size > (encoded_size(before.attributes) if before is not None else 0):
            raise InvalidInput(f"customer {cid!r}'s properties would take {size:,} bytes, more than "
                               f"{MAX_ATTRIBUTE_BYTES:,}: send fewer or shorter properties",
                               field=f"[{last_index[cid]}].properties")
    _EVENT_NEW.execute_many(conn, rows)
    updates = [{"s_customer_id": cid, "s_state": dumps(state.to_json()), "s_attribute_us": dumps(state.attribute_us),
                "s_updated_ms": now_ms} for cid, state in states.items() if cid in loaded]
    inserts = [{"customer_id": cid, "state": dumps(state.to_json()), "attribute_us": dumps(state.attribute_us),
                "created_ms": now_ms, "updated_ms": now_ms} for cid, state in states.items() if cid not in loaded]
    if updates:
        _CUSTOMER_SAVE.execute_many(conn, updates)
    if inserts:
        _CUSTOMER_NEW.execute_many(conn, inserts)
    return outcomes
