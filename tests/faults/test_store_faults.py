"""Disk and database errors under the store: the server answers 503 problem+json, never a wrong decision, logs
nothing it did not answer, uses up no cap, budget or idempotency key, and recovers when the store does.

Faults are injected under SQLAlchemy (see `StoreFaults`), on SQLite and PostgreSQL alike; on SQLite a full disk
is also made for real with `PRAGMA max_page_count`.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import pytest
from httpx import Response
from litestar.testing import TestClient
from sqlalchemy import Connection, event, select

from nba.clock import ManualClock
from nba.store import Store
from nba.store import schema as t
from tests.conftest import ADMIN, ANALYST, CHANNEL
from tests.faults.conftest import (
    SIM,
    SIM_CATALOG,
    AppFactory,
    StoreFaults,
    probe_context,
    row_counts,
    top_action,
    train_snapshot,
)
from tests.serving.helpers import assert_problem, decide, rewards_of

CATALOG: dict[str, Any] = {
    "event_types": {"page_view": {"properties": {"page": "string"}}},
    "actions": {
        "capped": {"channels": ["web"], "attributes": {"category": "discount"},
                   "caps": [{"per": "customer", "limit": 1, "window": "7d"}]},
        "budgeted": {"channels": ["web"], "attributes": {"category": "gift"}, "budget": {"limit": 1, "window": "1d"}},
        "open": {"channels": ["web"], "attributes": {"category": "content"}},
    },
    "policies": {"web": {"channels": ["web"], "learner": {"exploration": "epsilon", "epsilon": 0.1},
                         "reward": {"window": "1h", "aggregation": "first"}}},
}

OUTAGES = {
    "database-down": {"reads": True, "writes": True, "commits": True},
    "writes-fail": {"writes": True},  # a full disk, a read-only file system, a lost primary
    "commit-fails": {"commits": True},  # every statement of the batch ran; only its COMMIT failed
}

Faults = Callable[[Store], StoreFaults]


def _events(*event_ids: str, **properties: Any) -> list[dict[str, Any]]:
    return [{"customer_id": "c-1", "type": "page_view", "properties": {"page": "home", **properties},
             "event_id": e} for e in event_ids]


@pytest.mark.parametrize("outage", list(OUTAGES))
def test_outage_answers_503_and_uses_up_nothing(
    store_url: str, make_app: AppFactory, faults_for: Faults, outage: str
) -> None:
    app = make_app(store_url, CATALOG)
    store = app.state.runtime.store
    faults = faults_for(store)
    with TestClient(app) as client:
        served = decide(client, "c-0", candidates=["open"])["decision_id"]
        deferred = decide(client, "c-0", candidates=["open"], defer_activation=True)["decision_id"]
        before = row_counts(store)
        calls: dict[str, Callable[[], Response]] = {
            "decide a capped action": lambda: client.post("/v1/decide", headers=CHANNEL, json={
                "customer_id": "c-1", "channel": "web", "candidates": ["capped"], "request_id": "r-1"}),
            "decide a budgeted action": lambda: client.post("/v1/decide", headers=CHANNEL, json={
                "customer_id": "c-2", "channel": "web", "candidates": ["budgeted"]}),
            "poll the next action": lambda: client.get("/v1/customers/c-3/next?channel=web", headers=CHANNEL),
            "reward": lambda: client.post(f"/v1/decisions/{served}/reward", json={"value": 1.0}, headers=CHANNEL),
            "activate": lambda: client.post(f"/v1/decisions/{deferred}/activate", headers=CHANNEL),
            "events": lambda: client.post("/v1/events", json=_events("ev-1", "ev-2"), headers=CHANNEL),
            "put an action": lambda: client.put("/v1/actions/new", json={"channels": ["web"]}, headers=ADMIN),
            "change an action": lambda: client.put("/v1/actions/open", json={"channels": ["web"], "active": False},
                                                   headers=ADMIN),
            "delete an action": lambda: client.delete("/v1/actions/capped", headers=ADMIN),
            "put a policy": lambda: client.put("/v1/policies/web", headers=ADMIN, json={
                "channels": ["web"], "reward": {"window": "2h", "aggregation": "first"}}),
            "put an event type": lambda: client.put("/v1/event-types/signup", json={"properties": {}},
                                                    headers=ADMIN),
        }
        catalog = client.get("/v1/actions", headers=ADMIN).json(), client.get("/v1/policies", headers=ADMIN).json()
        with faults.broken(**OUTAGES[outage]):
            for name, call in calls.items():
                response = call()
                assert response.status_code == 503, f"{name}: {response.status_code} {response.text[:300]}"
                assert_problem(response, 503)
        assert faults.raised >= len(calls)
        assert row_counts(store) == before, "a call that answered 503 changed the store"
        assert (client.get("/v1/actions", headers=ADMIN).json(), client.get("/v1/policies", headers=ADMIN).json()
                ) == catalog, "a catalog change that answered 503 took effect"

        # The store is back: every call works, and none of the failed ones used anything up.
        again = decide(client, "c-1", candidates=["capped"], request_id="r-1", context={"retry": 1})
        assert [a["action_id"] for a in again["actions"]] == ["capped"]  # cap not consumed, key not used up
        budget = decide(client, "c-4", candidates=["budgeted"])
        assert [a["action_id"] for a in budget["actions"]] == ["budgeted"]  # the one unit of budget is still there
        reward = client.post(f"/v1/decisions/{served}/reward", json={"value": 1.0}, headers=CHANNEL)
        assert reward.status_code == 202 and reward.json()["status"] == "accepted"
        assert len(rewards_of(client, served)) == 1
        assert client.post(f"/v1/decisions/{deferred}/activate", headers=CHANNEL).status_code == 202
        answers = client.post("/v1/events", json=_events("ev-1", "ev-2"), headers=CHANNEL)
        assert answers.status_code == 202
        assert [a["duplicate"] for a in answers.json()] == [False, False]
        assert client.get("/health").status_code == 200


# What a decision must read to respect a limit, and a decide that reads it: (statement text, candidate, customer).
LIMIT_READS = {"contact-history": ("contacts", "capped", "c-1"), "budget-use": ("budget_counters", "budgeted", "c-2")}


@pytest.mark.parametrize("read", list(LIMIT_READS))
def test_a_decision_whose_limit_read_fails_is_refused_not_made_blind(
    store_url: str, make_app: AppFactory, faults_for: Faults, read: str
) -> None:
    """Only the read of contact history (caps, cooldowns) or of budget use fails; writes work. A decision made
    without it could break the limit the read would have shown, so the answer is 503 and nothing is stored."""
    matching, action, customer = LIMIT_READS[read]
    app = make_app(store_url, CATALOG)
    store = app.state.runtime.store
    faults = faults_for(store)
    with TestClient(app) as client:
        body = {"customer_id": customer, "channel": "web", "candidates": [action]}
        before = row_counts(store)
        with faults.broken(reads=True, matching=matching):
            assert_problem(client.post("/v1/decide", json=body, headers=CHANNEL), 503)
        assert faults.raised >= 1
        assert row_counts(store) == before
        made = client.post("/v1/decide", json=body, headers=CHANNEL)
        assert made.status_code == 200 and [a["action_id"] for a in made.json()["actions"]] == [action], made.text


def test_health_reports_a_store_that_cannot_be_read(
    store_url: str, make_app: AppFactory, faults_for: Faults
) -> None:
    app = make_app(store_url, CATALOG)
    faults = faults_for(app.state.runtime.store)
    with TestClient(app) as client:
        with faults.broken(reads=True, writes=True, commits=True):
            down = client.get("/health")
            read = client.get("/v1/customers/c-0", headers=ANALYST)
        assert down.status_code == 503 and down.json()["status"] == "down"
        assert_problem(read, 503)
        assert client.get("/health").status_code == 200


def test_the_catalog_reads_answer_from_memory_while_the_store_is_down(
    store_url: str, make_app: AppFactory, faults_for: Faults
) -> None:
    """They look at the store's catalog version first (another process may have changed it); while the store
    cannot be read, nobody can change it either, and the last catalog read stands."""
    app = make_app(store_url, CATALOG)
    faults = faults_for(app.state.runtime.store)
    with TestClient(app) as client:
        before = client.get("/v1/actions", headers=ANALYST).json()
        with faults.broken(reads=True, writes=True, commits=True):
            during = client.get("/v1/actions", headers=ANALYST)
        assert during.status_code == 200 and during.json() == before


def test_health_is_not_ok_while_the_store_cannot_commit(
    sqlite_url: str, make_app: AppFactory, faults_for: Faults
) -> None:
    app = make_app(sqlite_url, CATALOG)
    faults = faults_for(app.state.runtime.store)
    with TestClient(app) as client:
        with faults.broken(writes=True):
            assert_problem(client.post("/v1/decide", json={"customer_id": "c-1", "channel": "web"},
                                       headers=CHANNEL), 503)
            health = client.get("/health")
        assert health.status_code == 503, health.json()
        assert health.json()["status"] == "down" and "commit" in health.json()["store"]
        recovered = client.get("/health")  # the probe write succeeds once the store does
        assert recovered.status_code == 200 and recovered.json()["status"] == "ok"


def test_full_disk_answers_503_and_logs_no_partial_decision(sqlite_url: str, make_app: AppFactory) -> None:
    """A real SQLITE_FULL: the writer's connections may not grow the file past its current size."""
    app = make_app(sqlite_url, CATALOG)
    store: Store = app.state.runtime.store
    full = threading.Event()

    def limit_pages(conn: Connection) -> None:  # at the start of every write transaction
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        cursor.execute(f"PRAGMA max_page_count = {1 if full.is_set() else 4294967294}")  # 1: no growth at all
        cursor.close()

    for engine in store.writer_engines:
        event.listen(engine, "begin", limit_pages)
    answered: list[str] = []
    try:
        with TestClient(app) as client:
            answered.append(decide(client, "c-0", candidates=["open"])["decision_id"])
            full.set()
            bulky = {f"k{i}": "x" * 1000 for i in range(16)}  # each decision needs fresh pages soon
            refused = None
            for index in range(40):
                response = client.post("/v1/decide", headers=CHANNEL, json={
                    "customer_id": f"c-{index}", "channel": "web", "context": bulky, "candidates": ["capped"]})
                if response.status_code != 200:
                    refused = (index, response)
                    break
                answered.append(response.json()["decision_id"])
            assert refused is not None, "the disk never filled"
            index, response = refused
            assert_problem(response, 503)
            assert_problem(client.post("/v1/events", json=_events("ev-full", **bulky), headers=CHANNEL), 503)
            full.clear()

            stored = store.read(lambda c: [r[0] for r in c.execute(select(t.decisions.c.decision_id))])
            assert sorted(stored) == sorted(answered)
            with_slots = store.read(lambda c: {r[0] for r in c.execute(select(t.decision_slots.c.decision_id))})
            with_contacts = store.read(lambda c: {r[0] for r in c.execute(select(t.contacts.c.decision_id))})
            assert with_slots == with_contacts == set(answered)
            # The customer refused at the full disk was never contacted: the capped action is still theirs.
            after = decide(client, f"c-{index}", candidates=["capped"])
            assert [a["action_id"] for a in after["actions"]] == ["capped"]
            answers = client.post("/v1/events", json=_events("ev-full", **bulky), headers=CHANNEL).json()
            assert answers[0]["duplicate"] is False
    finally:
        for engine in store.writer_engines:
            event.remove(engine, "begin", limit_pages)


def test_flaky_store_under_concurrent_load_stores_exactly_what_was_answered(
    store_url: str, make_app: AppFactory, faults_for: Faults
) -> None:
    """Statements fail at random while 8 clients decide, reward and send events: a group commit that fails
    fails every call in it with 503; what answered 200/202 is stored exactly once, and nothing else is."""
    app = make_app(store_url, CATALOG)
    store = app.state.runtime.store
    faults = faults_for(store)
    outcomes: dict[str, list[str]] = {"decided": [], "refused": [], "rewarded": [], "reward_refused": [],
                                      "events": [], "events_refused": [], "chosen": []}
    unexpected: list[str] = []
    lock = threading.Lock()

    def record(kind: str, value: str) -> None:
        with lock:
            outcomes[kind].append(value)

    def client_loop(client: TestClient[Any], worker: int) -> None:
        for i in range(25):
            request_id = f"r-{worker}-{i}"
            response = client.post("/v1/decide", headers=CHANNEL, json={
                "customer_id": f"c-{worker}-{i % 5}", "channel": "web", "request_id": request_id})
            if response.status_code == 200:
                decision_id = response.json()["decision_id"]
                record("decided", decision_id)
                for action in response.json()["actions"]:
                    record("chosen", f"c-{worker}-{i % 5} {action['action_id']}")
                reward = client.post(f"/v1/decisions/{decision_id}/reward", json={"value": 1.0}, headers=CHANNEL)
                if reward.status_code == 202:
                    record("rewarded", decision_id)
                elif reward.status_code == 503:
                    record("reward_refused", decision_id)
                else:
                    unexpected.append(f"reward {reward.status_code}: {reward.text[:200]}")
            elif response.status_code == 503:
                record("refused", request_id)
            else:
                unexpected.append(f"decide {response.status_code}: {response.text[:200]}")
            event_id = f"ev-{worker}-{i}"
            sent = client.post("/v1/events", headers=CHANNEL, json={
                "customer_id": f"c-{worker}-{i % 5}", "type": "page_view", "event_id": event_id})
            if sent.status_code == 202:
                record("events", event_id)
            elif sent.status_code == 503:
                record("events_refused", event_id)
            else:
                unexpected.append(f"events {sent.status_code}: {sent.text[:200]}")

    with TestClient(app) as client:
        warm_up = decide(client, "warm-up")["decision_id"]  # the model is loaded before the store starts failing
        with faults.broken(reads=True, writes=True, commits=True, rate=0.03, seed=7):
            threads = [threading.Thread(target=client_loop, args=(client, w)) for w in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

    assert not unexpected, unexpected[:5]
    assert outcomes["refused"] and outcomes["events_refused"], "no fault reached a decide or an event"
    # A failed COMMIT refuses its whole group, so how many succeed varies; enough must for the checks to mean something.
    assert len(outcomes["decided"]) >= 20 and len(outcomes["events"]) >= 20
    store = Store(store_url)
    try:
        decisions = store.read(lambda c: list(c.execute(select(t.decisions.c.decision_id, t.decisions.c.request_id))))
        assert Counter(d for d, _ in decisions) == Counter([*outcomes["decided"], warm_up])
        assert not {r for _, r in decisions} & set(outcomes["refused"]), "a refused decide was logged"
        keys = store.read(lambda c: {r[0] for r in c.execute(select(t.idempotency.c.request_id))})
        assert not keys & set(outcomes["refused"]), "a refused decide used up its request_id"
        rewards = store.read(lambda c: [r[0] for r in c.execute(select(t.rewards.c.decision_id))])
        assert Counter(rewards) == Counter(outcomes["rewarded"])
        events = store.read(lambda c: [r[0] for r in c.execute(select(t.events.c.event_id))])
        assert Counter(events) == Counter(outcomes["events"])
        # Failures never let a limit slip: the cap (1 per customer) and the budget (1 in all), answered and stored.
        chosen = Counter(outcomes["chosen"])
        assert all(n <= 1 for key, n in chosen.items() if key.endswith(" capped")), chosen
        assert sum(n for key, n in chosen.items() if key.endswith(" budgeted")) <= 1, chosen
        contacts = store.read(lambda c: Counter(
            f"{r[0]} {r[1]}" for r in c.execute(select(t.contacts.c.customer_id, t.contacts.c.action_id))))
        assert all(n <= 1 for key, n in contacts.items() if key.endswith(" capped")), contacts
        assert sum(n for key, n in contacts.items() if key.endswith(" budgeted")) <= 1, contacts
        # Each customer's state counts exactly the events stored for it: no event without its state change.
        for worker in range(8):
            for slot in range(5):
                state = store.load_customer(f"c-{worker}-{slot}")
                stored = state.event_counts.get("page_view", 0) if state else 0
                expected = sum(1 for e in outcomes["events"]
                               if e.startswith(f"ev-{worker}-") and int(e.rsplit("-", 1)[1]) % 5 == slot)
                assert stored == expected, (worker, slot, stored, expected)
    finally:
        store.close()


def test_transient_error_loading_the_model_does_not_pin_a_blank_model(
    sqlite_url: str, clock: ManualClock, make_app: AppFactory, faults_for: Faults
) -> None:
    snapshot_id = train_snapshot(sqlite_url, clock, make_app)
    app = make_app(sqlite_url, SIM_CATALOG)
    faults = faults_for(app.state.runtime.store)
    body = {"customer_id": "c-1", "channel": "web", "context": probe_context("s1")}
    with ExitStack() as stack:
        with faults.broken(reads=True, matching="model_snapshots"):
            client = stack.enter_context(TestClient(app))  # models load at start: this load fails
            during = client.post("/v1/decide", json=body, headers=CHANNEL)  # and so does the retry here
        assert faults.raised >= 2
        if during.status_code == 200:
            assert during.json()["policy"]["mode"] == "fallback", "an untrained model answered as 'online'"
        else:
            assert_problem(during, 503)
        after = decide(client, **body)
        health = client.get("/health").json()
    assert top_action(after)[0] == SIM.best_action("s1")
    (model,) = health["models"]
    assert model["snapshot_id"] == snapshot_id and model["healthy"] is True
