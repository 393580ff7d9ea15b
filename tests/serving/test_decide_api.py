"""`POST /v1/decide` and `GET /v1/customers/{id}/next`: answers, propensities, hard constraints, idempotency, deferral.

The demo catalog (serving/demo/catalog.yaml) serves web and app with `web-offers` (reward window 1h) and email with
`email-offers` (window 24h); the constraints tested here are the ones it declares.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar import Litestar
from litestar.testing import TestClient

from nba.clock import ManualClock
from nba.ids import is_valid_id
from tests.conftest import ADMIN, ANALYST, CHANNEL
from tests.serving.helpers import (
    AppFactory,
    Client,
    assert_problem,
    decide,
    decision_count,
    excluded_rules,
    logged_decision,
    ranked,
    send_events,
)

CHANNEL_ACTIONS = {
    "web": {"offer-10pct", "free-shipping", "loyalty-signup", "credit-upsell", "service-callback"},
    "app": {"offer-10pct", "free-shipping", "loyalty-signup", "service-callback"},
    "email": {"offer-10pct", "loyalty-signup", "credit-upsell"},
}
POLICY_FOR = {"web": "web-offers", "app": "web-offers", "email": "email-offers"}
MODES = {"online", "apprentice", "fallback"}
# Five unconstrained actions, and one whose budget allows a single offer a day.
PLAIN = {
    "actions": {
        **{f"plain-{i}": {"channels": ["web"], "attributes": {"category": f"kind-{i}", "value": float(i)}}
           for i in range(5)},
        "one-a-day": {"channels": ["web"], "attributes": {"category": "gift"}, "budget": {"limit": 1, "window": "1d"}},
    },
    "policies": {"web": {"channels": ["web"], "learner": {"exploration": "epsilon", "epsilon": 0.2}}},
}
API_EXAMPLE = {
    "customer_id": "c-1042",
    "channel": "web",
    "context": {"device": "mobile", "page": "checkout", "cart_value": 84.5, "tags": ["returning"]},
    "candidates": ["offer-10pct", "free-shipping", "loyalty-signup"],
    "slots": 1,
    "request_id": "web-7f3a",
    "defer_activation": False,
}


def check_propensities(decision: dict[str, Any], slots: int, candidates: set[str]) -> None:
    """The invariants every decision keeps, whatever the policy and the constraints did."""
    ranking = {r["action_id"]: r["probability"] for r in decision["ranking"]}
    excluded = excluded_rules(decision)
    assert len(ranking) == len(decision["ranking"]), "an action is ranked twice"
    assert not ranking.keys() & excluded.keys(), "an action is both eligible and excluded"
    assert ranking.keys() | excluded.keys() == candidates
    assert all(0.0 <= p <= 1.0 and math.isfinite(p) for p in ranking.values())
    actions = decision["actions"]
    assert len(actions) == min(slots, len(ranking))
    assert [a["slot"] for a in actions] == list(range(len(actions)))
    chosen = [a["action_id"] for a in actions]
    assert len(set(chosen)) == len(chosen), "an action fills two slots"
    assert set(chosen) <= ranking.keys()
    if ranking:
        assert sum(ranking.values()) == pytest.approx(1.0, abs=1e-6)
        assert actions[0]["probability"] == pytest.approx(ranking[chosen[0]], abs=1e-9)
    for action in actions:
        assert 0.0 < action["probability"] <= 1.0
    if actions and len(actions) == len(ranking) and all(p > 0 for p in ranking.values()):
        # The last eligible action is the only one left to draw for the last slot.
        assert actions[-1]["probability"] == pytest.approx(1.0, abs=1e-6)


# -- the answer -------------------------------------------------------------------------------------------------


def test_the_api_example_gets_the_documented_answer(client: Client, clock: ManualClock) -> None:
    response = client.post("/v1/decide", json=API_EXAMPLE, headers=CHANNEL)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    decision = response.json()
    assert {"decision_id", "customer_id", "channel", "actions", "ranking", "excluded", "policy",
            "created_at"} <= decision.keys()
    assert is_valid_id(decision["decision_id"])
    assert (decision["customer_id"], decision["channel"]) == ("c-1042", "web")
    assert decision["policy"]["name"] == "web-offers"
    assert decision["policy"]["version"] == "1"
    assert decision["policy"]["mode"] in MODES
    assert decision["created_at"].endswith("Z")
    assert datetime.fromisoformat(decision["created_at"]) == clock.now()
    assert all(set(a) == {"slot", "action_id", "probability"} for a in decision["actions"])
    assert all(set(r) == {"action_id", "probability"} for r in decision["ranking"])
    assert all(set(e) == {"action_id", "rule", "detail"} for e in decision["excluded"])
    check_propensities(decision, 1, set(API_EXAMPLE["candidates"]))
    assert len(decision["actions"]) == 1


def test_the_answered_decision_is_logged_as_answered(client: Client) -> None:
    decision = decide(client, context={"device": "kiosk", "cart_value": 12.0, "tags": ["new"]}, slots=2)
    logged = logged_decision(client, decision["decision_id"])
    for key in ("decision_id", "customer_id", "channel", "actions", "ranking", "excluded", "policy", "created_at"):
        assert logged[key] == decision[key], key
    assert logged["context"] == {"device": "kiosk", "cart_value": 12.0, "tags": ["new"]}
    assert logged["rewards"] == []


@pytest.mark.parametrize("channel", sorted(CHANNEL_ACTIONS))
def test_default_candidates_are_the_channels_actions(client: Client, channel: str) -> None:
    decision = decide(client, channel=channel)
    check_propensities(decision, 1, CHANNEL_ACTIONS[channel])
    assert decision["policy"]["name"] == POLICY_FOR[channel]


def test_candidates_limit_the_choice_to_those_given(client: Client) -> None:
    for i in range(10):
        decision = decide(client, f"c-{i}", candidates=["offer-10pct", "free-shipping"], slots=2)
        check_propensities(decision, 2, {"offer-10pct", "free-shipping"})


def test_a_candidate_not_offered_on_the_channel_is_excluded_under_a_rule_name_api_md_lists(client: Client) -> None:
    """API.md's `excluded[].rule` names: eligibility, cap:..., budget:..., cooldown, suppressed_by:..., opt_out,
    inactive. A client switching on them met `channel`, which it was never told about."""
    decision = decide(client, "c-1", "email", candidates=["free-shipping", "offer-10pct"])  # free-shipping: web, app
    assert [(e["action_id"], e["rule"]) for e in decision["excluded"]] == [("free-shipping", "eligibility")]
    assert "channel 'email'" in decision["excluded"][0]["detail"]
    assert [a["action_id"] for a in decision["actions"]] == ["offer-10pct"]


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_propensities_are_consistent_for_any_request(client: Client, data: st.DataObject) -> None:
    channel = data.draw(st.sampled_from(sorted(CHANNEL_ACTIONS)), label="channel")
    offered = sorted(CHANNEL_ACTIONS[channel])
    candidates = data.draw(st.none() | st.lists(st.sampled_from(offered), min_size=1, unique=True), label="candidates")
    slots = data.draw(st.integers(1, 10), label="slots")
    context = data.draw(
        st.fixed_dictionaries({}, optional={"cart_value": st.floats(0, 500), "device": st.sampled_from(["a", "b"])}),
        label="context",
    )
    customer = data.draw(st.sampled_from(["c-1", "c-2", "c-3"]), label="customer")
    body: dict[str, Any] = {"slots": slots, "context": context}
    if candidates is not None:
        body["candidates"] = candidates
    decision = decide(client, customer, channel, **body)
    check_propensities(decision, slots, set(candidates or offered))


def test_slots_are_distinct_actions_and_fewer_when_fewer_are_eligible(make_app: AppFactory) -> None:
    with TestClient(make_app(PLAIN)) as client:
        three = decide(client, "c-1", candidates=[f"plain-{i}" for i in range(5)], slots=3)
        check_propensities(three, 3, {f"plain-{i}" for i in range(5)})
        assert len(three["actions"]) == 3
        everything = decide(client, "c-2", candidates=[f"plain-{i}" for i in range(5)], slots=10)
        check_propensities(everything, 10, {f"plain-{i}" for i in range(5)})
        assert len(everything["actions"]) == 5


# -- hard constraints -------------------------------------------------------------------------------------------


def test_eligibility_reads_customer_state_and_context(client: Client) -> None:
    no_age = decide(client, "c-1", candidates=["credit-upsell"])
    assert no_age["actions"] == []
    rule = excluded_rules(no_age)["credit-upsell"]
    assert rule == "eligibility" or rule.startswith("eligibility:")
    assert no_age["excluded"][0]["detail"]

    send_events(client, {"customer_id": "c-2", "type": "profile_updated", "properties": {"age": 16}})
    assert "credit-upsell" in excluded_rules(decide(client, "c-2", candidates=["credit-upsell"]))
    send_events(client, {"customer_id": "c-3", "type": "profile_updated", "properties": {"age": 30}})
    assert ranked(decide(client, "c-3", candidates=["credit-upsell"])) == ["credit-upsell"]

    small_cart = decide(client, "c-4", candidates=["free-shipping"], context={"cart_value": 10.0})
    assert excluded_rules(small_cart)["free-shipping"].startswith("eligibility")
    big_cart = decide(client, "c-5", candidates=["free-shipping"], context={"cart_value": 30.0})
    assert ranked(big_cart) == ["free-shipping"]


def test_suppressed_by_an_event_until_its_window_passes(client: Client, clock: ManualClock) -> None:
    send_events(client, [{"customer_id": "c-1", "type": "profile_updated", "properties": {"age": 30}},
                         {"customer_id": "c-1", "type": "payment_failed", "properties": {"amount": 84.5}}])
    suppressed = decide(client, "c-1", channel="email", candidates=["credit-upsell"])
    assert suppressed["actions"] == []
    assert excluded_rules(suppressed) == {"credit-upsell": "suppressed_by:payment_failed"}
    clock.advance(timedelta(days=7, minutes=1))
    assert ranked(decide(client, "c-1", channel="email", candidates=["credit-upsell"])) == ["credit-upsell"]


def test_cooldown_after_the_action_was_shown(client: Client, clock: ManualClock) -> None:
    shown = decide(client, candidates=["loyalty-signup"])
    assert [a["action_id"] for a in shown["actions"]] == ["loyalty-signup"]
    cooling = decide(client, candidates=["loyalty-signup"])
    assert excluded_rules(cooling) == {"loyalty-signup": "cooldown"}
    assert cooling["excluded"][0]["detail"]
    clock.advance(timedelta(hours=24, minutes=1))
    assert ranked(decide(client, candidates=["loyalty-signup"])) == ["loyalty-signup"]


def test_caps_per_customer_and_channel_and_per_customer(client: Client, clock: ManualClock) -> None:
    """offer-10pct: at most 1 a day on each channel, and 2 a week in all."""
    assert decide(client, channel="web", candidates=["offer-10pct"])["actions"][0]["action_id"] == "offer-10pct"
    web_again = decide(client, channel="web", candidates=["offer-10pct"])
    assert excluded_rules(web_again) == {"offer-10pct": "cap:customer_channel:1d"}
    assert decide(client, channel="app", candidates=["offer-10pct"])["actions"][0]["action_id"] == "offer-10pct"
    email = decide(client, channel="email", candidates=["offer-10pct"])
    assert excluded_rules(email) == {"offer-10pct": "cap:customer:7d"}
    assert email["actions"] == []
    clock.advance(timedelta(days=7, minutes=1))
    assert ranked(decide(client, channel="email", candidates=["offer-10pct"])) == ["offer-10pct"]


def test_budget_counts_offers_across_customers(make_app: AppFactory, clock: ManualClock) -> None:
    with TestClient(make_app(PLAIN)) as client:
        assert decide(client, "c-1", candidates=["one-a-day"])["actions"][0]["action_id"] == "one-a-day"
        spent = decide(client, "c-2", candidates=["one-a-day"])
        assert excluded_rules(spent) == {"one-a-day": "budget:1d"}
        clock.advance(timedelta(days=1))
        assert ranked(decide(client, "c-3", candidates=["one-a-day"])) == ["one-a-day"]


def test_opt_out_excludes_everything_and_nothing_eligible_is_200_with_no_actions(client: Client) -> None:
    send_events(client, {"customer_id": "c-1", "type": "opt_out"})
    decision = decide(client, "c-1", slots=3)
    assert decision["actions"] == []
    assert decision["ranking"] == []
    assert excluded_rules(decision) == {a: "opt_out" for a in CHANNEL_ACTIONS["web"]}
    send_events(client, {"customer_id": "c-1", "type": "opt_in"})
    assert decide(client, "c-1")["actions"] != []


def test_opt_out_of_one_channel_leaves_the_others(client: Client) -> None:
    send_events(client, {"customer_id": "c-1", "type": "opt_out", "properties": {"channel": "email"}})
    assert set(excluded_rules(decide(client, "c-1", channel="email")).values()) == {"opt_out"}
    assert "opt_out" not in excluded_rules(decide(client, "c-1", channel="web")).values()


def test_inactive_action_is_excluded(client: Client) -> None:
    spec = client.get("/v1/actions", headers=ANALYST).json()["items"]
    offer = next(item for item in spec if item.pop("action_id") == "offer-10pct")
    response = client.put("/v1/actions/offer-10pct", json={**offer, "active": False}, headers=ADMIN)
    assert response.status_code == 200, response.text
    assert excluded_rules(decide(client, candidates=["offer-10pct"])) == {"offer-10pct": "inactive"}


def test_nothing_eligible_is_200_with_no_actions(client: Client) -> None:
    decision = decide(client, "c-1", candidates=["credit-upsell"], slots=2)
    assert decision["actions"] == [] and decision["ranking"] == []
    assert set(excluded_rules(decision)) == {"credit-upsell"}


# -- idempotency ------------------------------------------------------------------------------------------------


def test_same_request_id_and_body_returns_the_same_decision_and_logs_nothing_new(
    app: Litestar, client: Client
) -> None:
    first = client.post("/v1/decide", json=API_EXAMPLE, headers=CHANNEL)
    count = decision_count(app)
    again = client.post("/v1/decide", json=API_EXAMPLE, headers=CHANNEL)
    assert again.status_code == 200
    assert again.json() == first.json()
    assert decision_count(app) == count


def test_same_request_id_with_another_body_is_409(app: Litestar, client: Client) -> None:
    first = decide(client, **{k: v for k, v in API_EXAMPLE.items() if k not in ("customer_id", "channel")})
    count = decision_count(app)
    assert_problem(client.post("/v1/decide", json={**API_EXAMPLE, "customer_id": "c-1", "slots": 2},
                               headers=CHANNEL), 409)
    assert decision_count(app) == count
    assert logged_decision(client, first["decision_id"])["actions"] == first["actions"]


def test_a_rejected_call_does_not_use_up_its_key(app: Litestar, client: Client) -> None:
    count = decision_count(app)
    body = {"customer_id": "c-1", "channel": "web", "request_id": "r-1"}
    assert_problem(client.post("/v1/decide", json={**body, "candidates": ["nope"]}, headers=CHANNEL), 422)
    assert_problem(client.post("/v1/decide", json={**body, "channel": "sms"}, headers=CHANNEL), 422)
    assert_problem(client.post("/v1/decide", json=body, headers=ANALYST), 403)
    assert decision_count(app) == count
    accepted = decide(client, **{k: v for k, v in body.items() if k not in ("customer_id", "channel")})
    assert decision_count(app) == count + 1
    assert decide(client, request_id="r-1")["decision_id"] == accepted["decision_id"]


def test_request_id_is_scoped_to_the_channel(app: Litestar, client: Client) -> None:
    web = decide(client, channel="web", request_id="r-1")
    app_channel = decide(client, channel="app", request_id="r-1")
    assert web["decision_id"] != app_channel["decision_id"]
    assert app_channel["channel"] == "app"


def test_concurrent_calls_with_one_key_make_one_decision(app: Litestar, client: Client) -> None:
    count = decision_count(app)
    body = {"customer_id": "c-1", "channel": "web", "request_id": "r-concurrent", "slots": 2}
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda _: client.post("/v1/decide", json=body, headers=CHANNEL), range(16)))
    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["decision_id"] for r in responses}) == 1
    assert decision_count(app) == count + 1


# -- deferred activation ----------------------------------------------------------------------------------------


def test_deferred_decision_is_activated_with_202(client: Client) -> None:
    decision = decide(client, defer_activation=True)
    response = client.post(f"/v1/decisions/{decision['decision_id']}/activate", headers=CHANNEL)
    assert response.status_code == 202, response.text


def test_activating_a_decision_that_was_not_deferred_is_409(client: Client) -> None:
    decision = decide(client)
    assert_problem(client.post(f"/v1/decisions/{decision['decision_id']}/activate", headers=CHANNEL), 409)


def test_activating_after_the_reservation_was_released_is_409(app: Litestar, client: Client,
                                                               clock: ManualClock) -> None:
    decision = decide(client, defer_activation=True)
    clock.advance(timedelta(hours=1, seconds=1))
    app.state.runtime.sweep()
    assert_problem(client.post(f"/v1/decisions/{decision['decision_id']}/activate", headers=CHANNEL), 409)


def test_activating_an_unknown_decision_is_404(client: Client) -> None:
    assert_problem(client.post("/v1/decisions/d-01NOSUCHDECISION/activate", headers=CHANNEL), 404)


# -- polling ----------------------------------------------------------------------------------------------------


def test_next_is_a_decision_logged_like_any_other(app: Litestar, client: Client) -> None:
    count = decision_count(app)
    response = client.get("/v1/customers/c-1/next", params={"channel": "app"}, headers=CHANNEL)
    assert response.status_code == 200, response.text
    decision = response.json()
    check_propensities(decision, 1, CHANNEL_ACTIONS["app"])
    assert (decision["customer_id"], decision["channel"]) == ("c-1", "app")
    assert decision_count(app) == count + 1
    assert logged_decision(client, decision["decision_id"])["actions"] == decision["actions"]


@pytest.mark.parametrize("params", [pytest.param({}, id="missing"), pytest.param({"channel": "sms"}, id="unserved")])
def test_next_without_a_served_channel_is_422_naming_channel(app: Litestar, client: Client,
                                                             params: dict[str, str]) -> None:
    count = decision_count(app)
    assert_problem(client.get("/v1/customers/c-1/next", params=params, headers=CHANNEL), 422, "channel")
    assert decision_count(app) == count
