"""SIGKILL a server with two worker processes while 12 clients decide (some deferred, then activated; some by
polling `/next`), reward and send events.

After the kill every answered decision, accepted activation, accepted reward and accepted event is in the store
exactly once, each with all of its effects (slots, contacts and their status, the customer's state); after a
restart, retrying what was in flight when the server died duplicates nothing.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from nba.store import Store
from nba.store import schema as t
from tests.conftest import CHANNEL
from tests.faults.conftest import SIM_CATALOG

pytestmark = pytest.mark.e2e

CATALOG: dict[str, Any] = {**SIM_CATALOG, "event_types": {"page_view": {"properties": {"page": "string"}}}}
CLIENTS = 12
CUSTOMERS_PER_CLIENT = 7


@dataclass
class Ledger:
    """What the clients were told: answered, or lost in flight when the server died (either may be stored)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    decided: dict[str, str] = field(default_factory=dict)  # request_id -> decision_id
    decide_in_flight: dict[str, dict[str, Any]] = field(default_factory=dict)  # request_id -> body
    rewarded: Counter[str] = field(default_factory=Counter)  # decision_id -> accepted rewards
    reward_in_flight: Counter[str] = field(default_factory=Counter)
    events: set[str] = field(default_factory=set)
    events_in_flight: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # first event id -> batch
    activated: set[str] = field(default_factory=set)  # deferred decisions whose activation was accepted
    activate_in_flight: set[str] = field(default_factory=set)
    polled: set[str] = field(default_factory=set)  # decisions answered to GET /v1/customers/{id}/next
    polls_in_flight: int = 0
    unexpected: list[str] = field(default_factory=list)


def _customer(worker: int, i: int) -> str:
    return f"c-{worker}-{i % CUSTOMERS_PER_CLIENT}"


def _client_loop(url: str, worker: int, ledger: Ledger, stop: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=10) as client:
        i = 0
        while not stop.is_set():
            i += 1
            request_id = f"r-{worker}-{i}"
            body = _decide_body(worker, i)
            try:
                decided = client.post("/v1/decide", json=body, headers=CHANNEL)
            except httpx.TransportError:
                with ledger.lock:
                    ledger.decide_in_flight[request_id] = body
                return
            if decided.status_code != 200:
                ledger.unexpected.append(f"decide {decided.status_code}: {decided.text[:200]}")
                continue
            decision_id = decided.json()["decision_id"]
            with ledger.lock:
                ledger.decided[request_id] = decision_id
            if body["defer_activation"]:  # shown a moment later: the channel confirms it
                try:
                    activated = client.post(f"/v1/decisions/{decision_id}/activate", headers=CHANNEL)
                except httpx.TransportError:
                    with ledger.lock:
                        ledger.activate_in_flight.add(decision_id)
                    return
                if activated.status_code == 202:
                    with ledger.lock:
                        ledger.activated.add(decision_id)
                else:
                    ledger.unexpected.append(f"activate {activated.status_code}: {activated.text[:200]}")
            if i % 5 == 0:  # a channel that polls for the current next best action
                try:
                    polled = client.get(f"/v1/customers/{_customer(worker, i)}/next", params={"channel": "web"},
                                        headers=CHANNEL)
                except httpx.TransportError:
                    with ledger.lock:
                        ledger.polls_in_flight += 1
                    return
                if polled.status_code == 200:
                    with ledger.lock:
                        ledger.polled.add(polled.json()["decision_id"])
                else:
                    ledger.unexpected.append(f"next {polled.status_code}: {polled.text[:200]}")
            try:
                reward = client.post(f"/v1/decisions/{decision_id}/reward", json={"value": 1.0}, headers=CHANNEL)
            except httpx.TransportError:
                with ledger.lock:
                    ledger.reward_in_flight[decision_id] += 1
                return
            if reward.status_code == 202:
                with ledger.lock:
                    ledger.rewarded[decision_id] += 1
            else:
                ledger.unexpected.append(f"reward {reward.status_code}: {reward.text[:200]}")
            batch = [{"customer_id": _customer(worker, i), "type": "page_view", "event_id": f"ev-{worker}-{i}-{k}",
                      "properties": {"page": f"p{k}"}} for k in range(3)]
            try:
                sent = client.post("/v1/events", json=batch, headers=CHANNEL)
            except httpx.TransportError:
                with ledger.lock:
                    ledger.events_in_flight[batch[0]["event_id"]] = batch
                return
            if sent.status_code == 202:
                with ledger.lock:
                    ledger.events.update(answer["event_id"] for answer in sent.json())
            else:
                ledger.unexpected.append(f"events {sent.status_code}: {sent.text[:200]}")


def _decide_body(worker: int, i: int) -> dict[str, Any]:
    return {"customer_id": _customer(worker, i), "channel": "web", "request_id": f"r-{worker}-{i}",
            "context": {"segment": f"s{i % 3}"}, "defer_activation": i % 4 == 0}


def _rows(store: Store, *columns: Any) -> list[Any]:
    return store.read(lambda conn: list(conn.execute(select(*columns))))


def _check_store(store: Store, ledger: Ledger) -> None:
    """Answered work is stored exactly once, in-flight work at most once, nothing else, all effects included."""
    decisions = {r.decision_id: r.request_id for r in _rows(store, t.decisions.c.decision_id, t.decisions.c.request_id)}
    assert set(ledger.decided.values()) | ledger.polled <= set(decisions), "an answered decision was lost"
    polls = [d for d, request_id in decisions.items() if request_id is None]
    assert len(ledger.polled) <= len(polls) <= len(ledger.polled) + ledger.polls_in_flight, "a poll nobody made"
    per_request = Counter(r for r in decisions.values() if r is not None)
    assert max(per_request.values()) == 1, "a request_id was logged twice"
    assert set(per_request) <= set(ledger.decided) | set(ledger.decide_in_flight), "a decision nobody asked for"
    for request_id, decision_id in ledger.decided.items():
        assert decisions[decision_id] == request_id
    slotted = Counter(r.decision_id for r in _rows(store, t.decision_slots.c.decision_id))
    contacted = Counter(r.decision_id for r in _rows(store, t.contacts.c.decision_id))
    assert slotted == contacted == Counter(set(decisions)), "a decision without its slot or contact, or vice versa"
    rows = _rows(store, t.decisions.c.decision_id, t.decisions.c.deferred, t.decisions.c.activated_ms)
    activated = {r.decision_id for r in rows if r.activated_ms is not None}
    assert ledger.activated <= activated <= ledger.activated | ledger.activate_in_flight, "activation lost or made up"
    deferred = {r.decision_id for r in rows if r.deferred}
    statuses = {r.decision_id: r.status for r in _rows(store, t.contacts.c.decision_id, t.contacts.c.status)}
    for decision_id in deferred:  # an activation and its contacts' counting are one transaction
        assert statuses[decision_id] == ("counted" if decision_id in activated else "reserved"), decision_id

    rewards = Counter(r.decision_id for r in _rows(store, t.rewards.c.decision_id))
    for decision_id in set(rewards) | set(ledger.rewarded):
        stored, accepted = rewards[decision_id], ledger.rewarded[decision_id]
        assert accepted <= stored <= accepted + ledger.reward_in_flight[decision_id], (decision_id, stored, accepted)
    queued = Counter(r.decision_id for r in _rows(store, t.learn_queue.c.decision_id))
    assert queued == Counter(set(rewards)), "a final reward without its learning example, or one queued twice"

    events = Counter(r.event_id for r in _rows(store, t.events.c.event_id))
    assert ledger.events <= set(events), "an accepted event was lost"
    in_flight = {e["event_id"] for batch in ledger.events_in_flight.values() for e in batch}
    assert set(events) <= ledger.events | in_flight
    assert max(events.values()) == 1
    for batch in ledger.events_in_flight.values():  # a batch is one transaction: all of it or none
        assert len({batch_event["event_id"] in events for batch_event in batch}) == 1, batch
    per_customer = Counter(r.customer_id for r in _rows(store, t.events.c.customer_id))
    for customer, count in per_customer.items():
        state = store.load_customer(customer)
        assert state is not None and state.event_counts["page_view"] == count, (customer, count)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_sigkill_under_load_loses_and_duplicates_nothing(
    start_server: Any, request: pytest.FixtureRequest, sqlite_url: str, backend: str
) -> None:
    database = sqlite_url if backend == "sqlite" else str(request.getfixturevalue("postgres_url"))
    server = start_server(CATALOG, workers=2, database_url=database, NBA_SNAPSHOT_SECONDS="0.5")
    ledger = Ledger()
    stop = threading.Event()
    threads = [threading.Thread(target=_client_loop, args=(server.url, w, ledger, stop)) for w in range(CLIENTS)]
    for thread in threads:
        thread.start()
    store = Store(database)
    try:
        # Kill once the clients have been answered plenty and the server has written on every path.
        while (len(ledger.decided) < 400 or len(ledger.events) < 600 or len(ledger.activated) < 50
               or len(ledger.polled) < 40 or store.count_decisions() < 400):
            assert not ledger.unexpected, ledger.unexpected[:5]
            assert all(thread.is_alive() for thread in threads), "a client stopped before the kill"
            stop.wait(0.05)  # polling for progress, not timing
        server.kill()  # SIGKILL to both workers and the supervisor, mid-request
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        assert not ledger.unexpected, ledger.unexpected[:5]
        _check_store(store, ledger)

        restarted = start_server(CATALOG, workers=2, database_url=database, NBA_SNAPSHOT_SECONDS="0.5")
        with httpx.Client(base_url=restarted.url, timeout=10) as client:
            for request_id, body in ledger.decide_in_flight.items():  # the clients retry what got no answer
                retried = client.post("/v1/decide", json=body, headers=CHANNEL)
                assert retried.status_code == 200, retried.text
                ledger.decided[request_id] = retried.json()["decision_id"]
            for request_id in list(ledger.decided)[:: max(1, len(ledger.decided) // 25)]:
                worker, i = (int(part) for part in request_id.split("-")[1:])
                again = client.post("/v1/decide", json=_decide_body(worker, i), headers=CHANNEL)
                assert again.status_code == 200 and again.json()["decision_id"] == ledger.decided[request_id]
            for decision_id in ledger.activate_in_flight | set(list(ledger.activated)[:10]):  # retried: idempotent
                retried = client.post(f"/v1/decisions/{decision_id}/activate", headers=CHANNEL)
                assert retried.status_code == 202, retried.text
                ledger.activated.add(decision_id)
            for batch in ledger.events_in_flight.values():
                retried = client.post("/v1/events", json=batch, headers=CHANNEL)
                assert retried.status_code == 202, retried.text
                ledger.events.update(answer["event_id"] for answer in retried.json())
            ledger.decide_in_flight.clear()
            ledger.events_in_flight.clear()
            ledger.activate_in_flight.clear()
            health = client.get("/health")
        assert health.status_code == 200
        _check_store(store, ledger)  # nothing retried was stored twice
        polls = store.read(lambda conn: conn.execute(
            select(func.count()).select_from(t.decisions).where(t.decisions.c.request_id.is_(None))).scalar_one())
        assert store.count_decisions() == len(ledger.decided) + polls
    finally:
        stop.set()
        store.close()

