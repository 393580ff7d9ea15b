"""`GET /v1/customers/{id}` (analyst): `{customer_id, aliases, state, recent_decisions}`; unknown customers are 404."""

from __future__ import annotations

from datetime import datetime, timedelta

from nba.clock import ManualClock, to_rfc3339
from tests.conftest import ANALYST
from tests.serving.helpers import Client, assert_problem, decide, send_events


def test_unknown_customer_is_404(client: Client) -> None:
    assert_problem(client.get("/v1/customers/c-nobody", headers=ANALYST), 404)


def test_state_is_what_the_events_built(client: Client, clock: ManualClock) -> None:
    send_events(client, [
        {"customer_id": "c-1", "type": "profile_updated", "properties": {"age": 34, "tier": "gold"}},
        {"customer_id": "c-1", "type": "cart_abandoned", "properties": {"cart_value": 40.0, "items": ["a", "b"]}},
        {"customer_id": "c-1", "type": "cart_abandoned", "properties": {"cart_value": 55.0}},
    ])
    response = client.get("/v1/customers/c-1", headers=ANALYST)
    assert response.status_code == 200, response.text
    body = response.json()
    assert {"customer_id", "aliases", "state", "recent_decisions"} <= body.keys()
    assert body["customer_id"] == "c-1"
    assert body["aliases"] == []
    assert body["recent_decisions"] == []
    assert body["state"]["attributes"] == {"age": 34, "tier": "gold", "cart_value": 55.0, "items": ["a", "b"]}
    assert body["state"]["event_counts"] == {"profile_updated": 1, "cart_abandoned": 2}
    # Times as everywhere in the API (API.md: RFC 3339 in UTC), in the form decisions use: milliseconds and `Z`.
    assert body["state"]["last_event_at"] == {"profile_updated": to_rfc3339(clock.now()),
                                              "cart_abandoned": to_rfc3339(clock.now())}


def test_recent_decisions_are_the_newest_50_newest_first(client: Client, clock: ManualClock) -> None:
    made = []
    for i in range(52):
        made.append(decide(client, "c-1", channel=("web", "app", "email")[i % 3]))
        clock.advance(timedelta(minutes=1))
    decide(client, "c-2")
    response = client.get("/v1/customers/c-1", headers=ANALYST)
    assert response.status_code == 200, response.text
    recent = response.json()["recent_decisions"]
    assert len(recent) == 50
    assert [d["decision_id"] for d in recent] == [d["decision_id"] for d in reversed(made)][:50]
    for entry, decision in zip(recent, reversed(made), strict=False):
        assert {"decision_id", "channel", "actions", "created_at"} <= entry.keys()
        assert entry["channel"] == decision["channel"]
        assert entry["actions"] == decision["actions"]
        assert datetime.fromisoformat(entry["created_at"]) == datetime.fromisoformat(decision["created_at"])


def test_a_customer_known_only_from_decisions_has_an_empty_state_of_the_same_shape(client: Client) -> None:
    decide(client, "c-decided")
    send_events(client, [{"customer_id": "c-evented", "type": "page_view", "properties": {}}])
    decided = client.get("/v1/customers/c-decided", headers=ANALYST).json()["state"]
    evented = client.get("/v1/customers/c-evented", headers=ANALYST).json()["state"]
    assert decided.keys() == evented.keys() and decided["attributes"] == {}
    assert decided["event_counts"] == {} and evented["event_counts"] == {"page_view": 1}
