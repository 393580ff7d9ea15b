"""Event batches are read and written set-wise; the result is what folding each event in order would give."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event as sqlalchemy_event

from features.events import validate_event
from features.state import apply_event
from nba.catalog import EventType
from nba.errors import CatalogChanged, InvalidInput
from nba.store import Store
from nba.store import schema as t
from nba.store.customer_repo import IN_CHUNK
from nba.types import CustomerState, Event

START = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def _events(rng: random.Random, count: int, customers: int, prefix: str) -> list[Event]:
    kinds = ["profile_updated", "product_viewed", "email_opened"]
    return [
        Event(f"{prefix}-{i}", f"c-{rng.randrange(customers)}", rng.choice(kinds),
              START + timedelta(seconds=rng.randrange(-3600, 3600)),
              {"segment": f"s{rng.randrange(5)}", "score": rng.randrange(100)})
        for i in range(count)
    ]


def _reference(batches: list[list[Event]], aliases: dict[str, str]) -> dict[str, CustomerState]:
    """Each event folded one at a time, in arrival order, into its canonical customer; repeats skipped."""
    states: dict[str, CustomerState] = {}
    seen: set[str] = set()
    for batch in batches:
        for event in batch:
            if event.event_id in seen:
                continue
            seen.add(event.event_id)
            customer_id = aliases.get(event.customer_id, event.customer_id)
            states[customer_id] = apply_event(states.get(customer_id) or CustomerState(customer_id), event)
    return states


def test_a_large_batch_gives_what_one_event_at_a_time_gives(store: Store) -> None:
    rng = random.Random(7)
    aliases = {f"c-{i}": f"main-{i}" for i in range(0, 40, 4)}  # some ids are aliases of another customer
    store.write(lambda c: c.execute(t.aliases.insert(), [{"alias": a, "customer_id": m} for a, m in aliases.items()]))
    first = _events(rng, 300, 200, "a")
    second = _events(rng, 2 * IN_CHUNK + 100, 700, "b")  # more ids than one IN list holds, and a padded tail
    second += [first[i] for i in range(0, 60, 2)]  # already stored: duplicates
    second += [second[i] for i in range(5, 200, 5)]  # repeated within the batch
    rng.shuffle(second)
    store.ingest_events(first, apply_event, START)
    outcomes = store.ingest_events(second, apply_event, START)

    stored_first = {e.event_id for e in first}
    seen: set[str] = set()
    for event, outcome in zip(second, outcomes, strict=True):
        assert outcome.event_id == event.event_id
        assert outcome.customer_id == aliases.get(event.customer_id, event.customer_id)
        assert outcome.duplicate == (event.event_id in stored_first or event.event_id in seen)
        seen.add(event.event_id)

    expected = _reference([first, second], aliases)
    for customer_id, state in expected.items():
        assert store.load_customer(customer_id) == state, customer_id
    for alias in aliases:
        assert store.load_customer(alias) is None  # state lives under the canonical id only
    unique = {e.event_id for e in first} | {e.event_id for e in second}
    assert store.read(lambda c: c.execute(t.events.select()).all().__len__()) == len(unique)
    assert store.read(lambda c: c.execute(t.customers.select()).all().__len__()) == len(expected)


def test_a_batch_of_repeats_only_changes_nothing(store: Store) -> None:
    batch = _events(random.Random(3), 20, 5, "r")
    store.ingest_events(batch, apply_event, START)
    before = {e.customer_id: store.load_customer(e.customer_id) for e in batch}
    outcomes = store.ingest_events(list(reversed(batch)), apply_event, START + timedelta(hours=1))
    assert all(o.duplicate for o in outcomes)
    assert {cid: store.load_customer(cid) for cid in before} == before


def test_a_catalog_read_straddling_another_hosts_change_never_lets_through_what_the_change_refuses(
    store_url: str,
) -> None:
    """Host B tightens an event type while host A reads the catalog: B's change commits before each of A's
    statements in turn. Whatever A's view then holds, an event it accepts but the new type refuses must not
    commit (`CatalogChanged`: validated again). The view's reads do not share one snapshot."""
    host_a, host_b = Store(store_url), Store(store_url)
    now = datetime(2026, 11, 24, tzinfo=UTC)
    loose = EventType.model_validate({"properties": {"k": "number"}, "required": ["k"]})
    tight = EventType.model_validate({"properties": {"k": "number", "z": "string"}, "required": ["k", "z"]})
    statements, inject_at, name = 0, 0, ""
    injected = refused_at_once = refused_at_commit = 0

    def before_statement(*_: object) -> None:
        nonlocal statements, injected
        statements += 1
        if statements == inject_at:
            host_b.put_event_type(name, tight, now)
            injected += 1

    sqlalchemy_event.listen(host_a._reader, "before_cursor_execute", before_statement)
    try:
        for position in range(1, 8):
            name = f"order{position}"
            host_b.put_event_type(name, loose, now)
            statements, inject_at, before = 0, position, injected
            view = host_a.load_catalog()
            if injected == before:  # past A's last statement: nothing straddled
                continue
            try:
                validate_event(name, {"k": 1}, view.event_types)
            except InvalidInput:
                refused_at_once += 1
                continue
            with pytest.raises(CatalogChanged):
                host_a.run(host_a.events_write([Event(f"ev-{position}", "c1", name, now, {"k": 1})], apply_event,
                                               now, event_types_version=view.event_types_version))
            refused_at_commit += 1
    finally:
        sqlalchemy_event.remove(host_a._reader, "before_cursor_execute", before_statement)
        host_a.close()
        host_b.close()
    assert injected >= 3 and refused_at_once >= 1, (injected, refused_at_once, refused_at_commit)
