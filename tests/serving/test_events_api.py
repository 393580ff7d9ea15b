"""`POST /v1/events`: one event or a list of up to 1,000; answers one entry per event; events shape decisions."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from litestar import Litestar

from nba.clock import ManualClock
from nba.ids import is_valid_id
from tests.conftest import ADMIN, ANALYST, CHANNEL
from tests.serving.helpers import Client, assert_problem, decide, decision_count, excluded_rules, ranked, send_events


def customer(client: Client, customer_id: str) -> dict[str, Any] | None:
    response = client.get(f"/v1/customers/{customer_id}", headers=ANALYST)
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def test_single_event_answers_a_list_of_one(client: Client) -> None:
    event = {"customer_id": "c-1042", "type": "payment_failed", "timestamp": "2026-11-24T09:14:58Z",
             "properties": {"amount": 84.5, "method": "card"}, "event_id": "evt-991"}
    answers = send_events(client, event)
    assert answers == [{"event_id": "evt-991", "duplicate": False, "triggered": [], "cancelled": []}]


def test_list_answers_one_entry_per_event_in_order(client: Client) -> None:
    events = [
        {"customer_id": "c-1", "type": "page_view", "event_id": "e-1", "properties": {"page": "home"}},
        {"customer_id": "c-2", "type": "purchase", "properties": {"amount": 12.0}},
        {"customer_id": "c-1", "type": "cart_abandoned", "event_id": "e-3", "properties": {"cart_value": 40.0}},
    ]
    answers = send_events(client, events)
    assert len(answers) == 3
    assert all(set(a) == {"event_id", "duplicate", "triggered", "cancelled"} for a in answers)
    assert [answers[0]["event_id"], answers[2]["event_id"]] == ["e-1", "e-3"]
    assert is_valid_id(answers[1]["event_id"]) and answers[1]["event_id"] not in ("e-1", "e-3")
    assert [a["duplicate"] for a in answers] == [False, False, False]


def test_repeated_event_id_is_a_duplicate_and_changes_nothing(client: Client) -> None:
    event = {"customer_id": "c-1", "type": "profile_updated", "event_id": "evt-1", "properties": {"age": 30}}
    send_events(client, event)
    state = customer(client, "c-1")
    repeat = {**event, "properties": {"age": 99}}
    assert send_events(client, repeat) == [{"event_id": "evt-1", "duplicate": True, "triggered": [], "cancelled": []}]
    answers = send_events(client, [repeat, {**event, "event_id": "evt-2"}])
    assert [(a["event_id"], a["duplicate"]) for a in answers] == [("evt-1", True), ("evt-2", False)]
    after = customer(client, "c-1")
    assert state is not None and after is not None
    assert after["state"]["attributes"] == state["state"]["attributes"] == {"age": 30}


def test_up_to_1000_events_in_one_call(client: Client) -> None:
    answers = send_events(client, [{"customer_id": f"c-{i % 7}", "type": "page_view"} for i in range(1000)])
    assert len(answers) == 1000
    assert len({a["event_id"] for a in answers}) == 1000


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"customer_id": "c-1", "type": "teleported"}, "type", id="unknown-type"),
        pytest.param([{"customer_id": "c-1", "type": "page_view"}, {"customer_id": "c-1", "type": "teleported"}],
                     "type", id="unknown-type-in-list"),
        pytest.param({"customer_id": "c-1", "type": "payment_failed", "properties": {"amount": "84.5"}}, "amount",
                     id="property-of-wrong-type"),
        pytest.param({"customer_id": "c-1", "type": "payment_failed", "properties": {"method": "card"}}, "amount",
                     id="required-property-missing"),
        pytest.param({"customer_id": "c-1", "type": "cart_abandoned", "properties": {"cart_value": 1, "items": [1]}},
                     "items", id="list-property-of-numbers"),
        pytest.param({"customer_id": "c-1", "type": "page_view", "properties": {"page": {"path": "/"}}},
                     "properties", id="nested-property"),
        pytest.param({"customer_id": "c 1", "type": "page_view"}, "customer_id", id="customer-id-with-space"),
        pytest.param({"customer_id": "c-1", "type": "page_view", "event_id": "e" * 129}, "event_id",
                     id="event-id-129-chars"),
        pytest.param({"customer_id": "c-1", "type": "page_view", "timestamp": "yesterday"}, "timestamp",
                     id="timestamp-not-rfc3339"),
        pytest.param({"customer_id": "c-1", "type": "page_view", "timestamp": "2026-11-24T09:14:58"}, "timestamp",
                     id="timestamp-without-offset"),
        pytest.param({"customer_id": "c-1", "type": "page_view", "colour": "red"}, "colour", id="unknown-field"),
        pytest.param({"type": "page_view"}, "customer_id", id="missing-customer-id"),
        pytest.param([{"customer_id": "c-1", "type": "page_view"}] * 1001, "body", id="1001-events"),
    ],
)
def test_invalid_events_are_422_and_change_nothing(client: Client, body: Any, field: str) -> None:
    assert_problem(client.post("/v1/events", json=body, headers=CHANNEL), 422, field)
    assert customer(client, "c-1") is None


@pytest.mark.parametrize(
    ("value", "says"),
    [
        pytest.param("x" * 1025, "is a string of 1025 characters, over 1024", id="long-string"),
        pytest.param(["x"] * 101, "is a list of 101 strings, over 100", id="long-list"),
        pytest.param(["ok", "x" * 1025], "has a string of 1025 characters (item 1), over 1024", id="long-item"),
        pytest.param(["ok", 3], "must be a list of strings only (item 1 is not a string)", id="list-of-mixed"),
        pytest.param(int("9" * 400), "must be a finite number within a float's range", id="400-digit-int"),
        pytest.param({"nested": 1}, "must be a string, number, bool or list of strings", id="object"),
    ],
)
def test_a_property_value_refused_says_which_limit_it_breaks(client: Client, value: Any, says: str) -> None:
    body = {"customer_id": "c-1", "type": "profile_updated", "properties": {"k": value}}
    problem = assert_problem(client.post("/v1/events", json=body, headers=CHANNEL), 422, "properties.k")
    assert problem["errors"] == [{"field": "properties.k", "message": f"property 'k' {says}"}]
    assert customer(client, "c-1") is None


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        pytest.param(b'{"customer_id": "c-1", "type": "purchase", "properties": {"amount": NaN}}', 400, None,
                     id="nan"),
        pytest.param(b'[{"customer_id": "c-1", "type": "purchase", "properties": {"amount": 1}', 400, None,
                     id="truncated"),
        # A value of the wrong type before the syntax error: still not JSON, a 400 (msgspec meets the type first).
        pytest.param(b"[1,2", 400, None, id="truncated-list-of-non-events"),
        pytest.param(b'{"customer_id": "c-1", "type": 7,', 400, None, id="truncated-after-a-wrong-type"),
        pytest.param(b'[{"customer_id": 5, "x": 1e999', 400, None, id="truncated-after-a-number-out-of-range"),
        pytest.param(b'{"customer_id": "c-1", "type": "purchase", "properties": {"amount": 1e999}}', 422,
                     "properties", id="number-1e999"),
    ],
)
def test_event_body_that_is_not_json_or_out_of_range(client: Client, body: bytes, status: int,
                                                     field: str | None) -> None:
    headers = {**CHANNEL, "content-type": "application/json"}
    assert_problem(client.post("/v1/events", content=body, headers=headers), status, field)
    assert customer(client, "c-1") is None


def test_registered_event_type_is_validated(client: Client) -> None:
    assert_problem(client.post("/v1/events", json={"customer_id": "c-1", "type": "signup"}, headers=CHANNEL), 422,
                   "type")
    spec = {"properties": {"plan": "string", "seats": "integer"}, "required": ["plan"]}
    assert client.put("/v1/event-types/signup", json=spec, headers=ADMIN).status_code in (200, 201)
    bad = {"customer_id": "c-1", "type": "signup", "properties": {"plan": "team", "seats": 2.5}}
    assert_problem(client.post("/v1/events", json=bad, headers=CHANNEL), 422, "seats")
    send_events(client, {**bad, "properties": {"plan": "team", "seats": 3}})
    found = customer(client, "c-1")
    assert found is not None and found["state"]["attributes"]["plan"] == "team"


def test_complaint_suppresses_the_offer_in_the_next_decision(client: Client) -> None:
    before = decide(client, "c-1", candidates=["offer-10pct", "service-callback"])
    assert "offer-10pct" in ranked(before)
    assert excluded_rules(before).get("service-callback", "").startswith("eligibility")
    send_events(client, {"customer_id": "c-2", "type": "complaint_filed", "properties": {"topic": "delivery"}})
    after = decide(client, "c-2", candidates=["offer-10pct", "service-callback"])
    assert excluded_rules(after) == {"offer-10pct": "suppressed_by:complaint_filed"}
    assert ranked(after) == ["service-callback"]


def test_suppression_runs_from_the_events_timestamp(client: Client, clock: ManualClock) -> None:
    fifteen_days_ago = (clock.now() - timedelta(days=15)).isoformat().replace("+00:00", "Z")
    send_events(client, {"customer_id": "c-1", "type": "complaint_filed", "timestamp": fifteen_days_ago})
    decision = decide(client, "c-1", channel="email", candidates=["offer-10pct", "credit-upsell"])
    rules = excluded_rules(decision)
    assert "offer-10pct" in ranked(decision)  # suppressed for 14d: over
    assert rules["credit-upsell"] == "suppressed_by:complaint_filed"  # suppressed for 30d: still on


def test_events_without_timestamp_happen_at_receipt(client: Client, clock: ManualClock) -> None:
    send_events(client, {"customer_id": "c-1", "type": "page_view", "properties": {"page": "home"}})
    found = customer(client, "c-1")
    assert found is not None
    assert datetime.fromisoformat(found["state"]["last_event_at"]["page_view"]) == clock.now()


def test_rejected_events_do_not_touch_the_decision_log(app: Litestar, client: Client) -> None:
    count = decision_count(app)
    assert_problem(client.post("/v1/events", json={"customer_id": "c-1", "type": "teleported"}, headers=CHANNEL), 422)
    assert decision_count(app) == count


def test_a_late_opt_out_for_one_channel_holds_whatever_another_channel_said_later(
    client: Client, clock: ManualClock
) -> None:
    """The opt-out (sent first, delivered late) is older than an opt-in for email, but that one is about email."""
    t0 = clock.now()
    send_events(client, {"customer_id": "c-1", "type": "opt_in", "properties": {"channel": "email"},
                         "timestamp": (t0 + timedelta(seconds=10)).isoformat()})
    send_events(client, {"customer_id": "c-1", "type": "opt_out", "properties": {"channel": "web"},
                         "timestamp": (t0 + timedelta(seconds=5)).isoformat()})
    clock.advance(timedelta(minutes=1))
    decision = decide(client, "c-1")
    assert decision["actions"] == [] and set(excluded_rules(decision).values()) == {"opt_out"}


def test_a_time_without_its_offset_is_refused_saying_what_is_expected(client: Client) -> None:
    problem = assert_problem(client.post("/v1/events", json={"customer_id": "c-1", "type": "page_view",
                                                             "timestamp": "2026-11-24T09:14:58"}, headers=CHANNEL),
                             422, "timestamp")
    assert "RFC 3339 with its UTC offset" in problem["errors"][0]["message"]


def test_an_event_dated_in_the_future_is_refused_and_a_little_clock_skew_is_not(
    client: Client, clock: ManualClock
) -> None:
    """A mis-dated event would outrank every real one of its kind until its date (an opt-in a year ahead would
    outlast a year of opt-outs): more than five minutes ahead of the server's clock is a 422."""
    ahead = (clock.now() + timedelta(minutes=6)).isoformat()
    problem = assert_problem(client.post("/v1/events", json=[
        {"customer_id": "c-1", "type": "page_view"},
        {"customer_id": "c-1", "type": "opt_in", "timestamp": ahead}], headers=CHANNEL), 422, "[1].timestamp")
    assert "in the future" in problem["detail"]
    assert customer(client, "c-1") is None
    send_events(client, {"customer_id": "c-1", "type": "opt_in",
                         "timestamp": (clock.now() + timedelta(minutes=4)).isoformat()})


@pytest.mark.parametrize("scope", [None, "web"], ids=["every-channel", "one-channel"])
def test_an_event_dated_ahead_of_its_receipt_does_not_outrank_what_arrives_after_it(
    client: Client, clock: ManualClock, scope: str | None
) -> None:
    """A client whose clock runs four minutes ahead opts the customer in; the customer opts out a second later,
    through a channel whose clock is right. The opt-out is the newer of the two and holds, after those four
    minutes as before (the opt-in counts from its receipt, not from its date); so does a property."""
    channel = {"channel": scope} if scope else {}
    ahead = (clock.now() + timedelta(minutes=4)).isoformat()
    send_events(client, [{"customer_id": "c-1", "type": "opt_in", "timestamp": ahead, "properties": channel},
                         {"customer_id": "c-1", "type": "profile_updated", "timestamp": ahead,
                          "properties": {"tier": "gold"}}])
    clock.advance(timedelta(seconds=1))
    send_events(client, [{"customer_id": "c-1", "type": "opt_out", "properties": channel},
                         {"customer_id": "c-1", "type": "profile_updated", "properties": {"tier": "silver"}}])
    clock.advance(timedelta(minutes=10))
    decision = decide(client, "c-1")
    assert decision["actions"] == [] and set(excluded_rules(decision).values()) == {"opt_out"}
    found = customer(client, "c-1")
    assert found is not None
    assert found["state"]["opt_outs"] == [scope or "*"] and found["state"]["attributes"]["tier"] == "silver"


@pytest.mark.parametrize("order", [1, -1], ids=["newer-first", "newer-last"])
def test_events_of_one_request_dated_ahead_are_ordered_by_their_dates(
    client: Client, clock: ManualClock, order: int
) -> None:
    """They share their receipt, from which they count: their dates still order them, whatever their places in
    the batch (the batch's place decided: an opt-out dated 3 minutes ahead lost to an opt-in dated 1 minute ahead
    sent after it, in a review), for consent in every scope and for properties."""
    now = clock.now()

    def event(type_: str, minutes: int, **properties: Any) -> dict[str, Any]:
        return {"customer_id": "c-1", "type": type_, "timestamp": (now + timedelta(minutes=minutes)).isoformat(),
                "properties": properties}

    batch = [event("opt_out", 3), event("opt_in", 1), event("opt_out", 3, channel="web"),
             event("opt_in", 4), event("profile_updated", 3, tier="gold"), event("profile_updated", 1, tier="silver")]
    pairs = [batch[i:i + 2][::order] for i in (0, 4)] + [batch[2:4][::order]]
    send_events(client, [e for pair in pairs[:2] for e in pair])
    found = customer(client, "c-1")
    assert found is not None and found["state"]["opt_outs"] == ["*"] and found["state"]["attributes"]["tier"] == "gold"
    send_events(client, pairs[2])  # an opt-out for web 3 minutes ahead, an opt-in for everything 4 minutes ahead
    found = customer(client, "c-1")
    assert found is not None and found["state"]["opt_outs"] == []


def test_the_state_is_the_same_whatever_order_events_arrive_in(client: Client, clock: ManualClock) -> None:
    """Through the store on both backends: a late event neither rolls a property back (`category` below, set by
    a newer event of another type) nor loses the properties no newer event has set (`tier`)."""
    t0 = clock.now()

    def made(customer_id: str) -> list[dict[str, Any]]:
        def event(name: str, type_: str, before: timedelta, **properties: Any) -> dict[str, Any]:
            return {"customer_id": customer_id, "event_id": f"{customer_id}-{name}", "type": type_,
                    "timestamp": (t0 - before).isoformat(), "properties": properties}

        return [event("purchase", "purchase", timedelta(hours=1), amount=30.0, category="shoes"),
                event("profile", "profile_updated", timedelta(hours=2), email="a@x", age=20),
                event("signup", "profile_updated", timedelta(days=3), category="books", age=18, tier="new")]

    purchase, profile, signup = made("in-order")
    send_events(client, [signup, profile, purchase])
    for customer_id, order in (("newest-first", [0, 1, 2]), ("oldest-late", [0, 2, 1])):
        events = made(customer_id)
        for i in order:  # each in a request of its own
            send_events(client, events[i])
    expected = {"amount": 30.0, "category": "shoes", "email": "a@x", "age": 20, "tier": "new"}
    for customer_id in ("in-order", "newest-first", "oldest-late"):
        found = customer(client, customer_id)
        assert found is not None and found["state"]["attributes"] == expected, customer_id
        assert "attribute_us" not in found["state"]  # bookkeeping, not part of the customer's view


def _properties(prefix: str, n: int, value: Any = 1) -> dict[str, Any]:
    return {f"{prefix}{i}": value for i in range(n)}


def test_a_customer_state_holds_at_most_1024_properties(client: Client) -> None:
    """Every decision for the customer reads the whole state: events cannot grow it without bound."""
    for part in range(4):  # 4 x 256 distinct properties: at the limit
        send_events(client, {"customer_id": "c-big", "type": "profile_updated",
                             "properties": _properties(f"p{part}_", 256)})
    before = customer(client, "c-big")
    assert before is not None and len(before["state"]["attributes"]) == 1024

    one_more = {"customer_id": "c-big", "type": "profile_updated", "properties": {"p0_0": 2, "new": 1}}
    assert_problem(client.post("/v1/events", json=one_more, headers=CHANNEL), 422, "properties")
    other = {"customer_id": "c-other", "type": "profile_updated", "properties": {"a": 1}}
    assert_problem(client.post("/v1/events", json=[other, one_more], headers=CHANNEL), 422, "[1].properties")
    assert customer(client, "c-big") == before  # nothing of either request was stored
    assert customer(client, "c-other") is None

    send_events(client, {"customer_id": "c-big", "type": "profile_updated", "properties": {"p0_0": 2}})  # no growth
    after = customer(client, "c-big")
    assert after is not None and after["state"]["attributes"]["p0_0"] == 2


def test_a_customers_properties_take_at_most_256_kib_counted_in_bytes(client: Client) -> None:
    big = {"customer_id": "c-wide", "type": "profile_updated", "properties": _properties("k", 200, "x" * 1000)}
    send_events(client, big)  # about 200 KB: fine
    more = {"customer_id": "c-wide", "type": "profile_updated", "properties": _properties("m", 100, "y" * 1000)}
    response = client.post("/v1/events", json=more, headers=CHANNEL)
    assert_problem(response, 422, "properties")
    assert "bytes" in response.json()["detail"]
    found = customer(client, "c-wide")
    assert found is not None and sorted(found["state"]["attributes"]) == sorted(big["properties"])

    # 100,000 characters, but three bytes each in UTF-8: 300 KB as stored
    euros = {"customer_id": "c-euro", "type": "profile_updated", "properties": _properties("k", 100, "€" * 1000)}
    assert_problem(client.post("/v1/events", json=euros, headers=CHANNEL), 422, "properties")
    assert customer(client, "c-euro") is None


def test_a_customer_at_the_size_limit_can_still_opt_out_and_update_what_it_has(client: Client) -> None:
    """Only growing the properties past the limit is refused: consent and counts are not the client's to bound."""
    full = _properties("k", 256, "x" * 1000)  # just under 256 KiB as stored
    send_events(client, {"customer_id": "c-full", "type": "profile_updated", "properties": full})
    send_events(client, {"customer_id": "c-full", "type": "opt_out"})
    send_events(client, {"customer_id": "c-full", "type": "page_view"})
    send_events(client, {"customer_id": "c-full", "type": "profile_updated", "properties": {"k0": "z" * 1000}})
    found = customer(client, "c-full")
    assert found is not None and found["state"]["opt_outs"] == ["*"] and found["state"]["attributes"]["k0"][0] == "z"
    grow = {"customer_id": "c-full", "type": "profile_updated", "properties": {"k1": "x" * 2000}}
    assert_problem(client.post("/v1/events", json=grow, headers=CHANNEL), 422, "properties")
