"""Abusive input: oversized bodies, deep JSON, huge context maps, unicode and control characters in ids and feature
values, Vowpal Wabbit's own syntax (`|`, `:`, spaces, newlines) in context strings and action attributes.

Each one gets a clear 4xx problem, or is accepted, stored verbatim and escaped so that the model learns from it
correctly: never a 500, never a corrupted model.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar import Litestar
from litestar.testing import TestClient

from bandits.vw_args import build_args
from bandits.vw_policy import VWPolicy
from nba.store import Store
from tests.conftest import ADMIN, ANALYST, CHANNEL
from tests.faults.conftest import AppFactory, assert_distribution, row_counts, top_action
from tests.serving.helpers import assert_problem, decide, logged_decision
from training.online import OnlineLearner

# What the model's text format treats as syntax, and characters that look like it or are invisible.
VW_SYNTAX = "|: \t\n\r%="
TRICKY = list(VW_SYNTAX) + list("\x00\x0b\x1f\x7f\x85\xa0\u2028\u2029\u200b\u202e\ufeff\u0301") + ["é", "😀", "ǅ"]

# Attribute values that are VW syntax; ids and names are restricted by the contract, values are not.
ACTIONS: dict[str, dict[str, Any]] = {
    "a0": {"channels": ["web"], "attributes": {"category": "disc ount|A id=a1", "note": "line\nbreak:1"}},
    "a1": {"channels": ["web"], "attributes": {"category": "a:b c", "tags": ["x|y", "p q", "\u2028", "%7C"]}},
    "a2": {"channels": ["web"], "attributes": {"category": "|", "value": -0.0, "large": 1.0e9, "tiny": 5e-324}},
    "a3": {"channels": ["web"], "attributes": {"category": "émoji 😀\t\u202eRTL", "flag": True}},
}
CATALOG: dict[str, Any] = {
    "event_types": {"page_view": {"properties": {"page": "string"}}},
    "actions": {"plain": {"channels": ["web"], "attributes": {"category": "plain"}}},
    "policies": {"web": {"channels": ["web"], "reward": {"window": "1h", "aggregation": "first"}}},
}
JSON = {"content-type": "application/json"}


@pytest.fixture
def app(sqlite_url: str, make_app: AppFactory) -> Litestar:
    return make_app(sqlite_url, CATALOG)


@pytest.fixture
def client(app: Litestar) -> Iterator[TestClient[Litestar]]:
    with TestClient(app) as test_client:
        for action_id, spec in ACTIONS.items():  # over the admin API, so the JSON path is the one under test
            response = test_client.put(f"/v1/actions/{action_id}", json=spec, headers=ADMIN)
            assert response.status_code == 201, response.text
        yield test_client


@pytest.fixture
def decision_id(client: TestClient[Litestar]) -> str:
    return str(decide(client, "c-0")["decision_id"])


def _learner(app: Litestar) -> OnlineLearner:
    runtime = app.state.runtime
    return OnlineLearner(runtime.store, runtime.models, runtime.featurizer, runtime.catalog, runtime.clock)


def _routes(decision: str) -> list[tuple[str, str, dict[str, str], str]]:
    """Every route that takes a body: (method, path, auth, field that nests) ."""
    return [
        ("POST", "/v1/decide", CHANNEL, "context"),
        ("POST", "/v1/events", CHANNEL, "properties"),
        ("POST", f"/v1/decisions/{decision}/reward", CHANNEL, "value"),
        ("PUT", "/v1/actions/deep", ADMIN, "attributes"),
        ("PUT", "/v1/policies/deep", ADMIN, "learner"),
        ("PUT", "/v1/event-types/deep", ADMIN, "properties"),
    ]


ROUTE_IDS = ["decide", "events", "reward", "put-action", "put-policy", "put-event-type"]
ROUTES = [pytest.param(i, id=name, marks=[])
          for i, name in enumerate(ROUTE_IDS)]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("where", ["top-level", "in-a-field"])
def test_deep_json_is_a_client_error_on_every_route(
    app: Litestar, client: TestClient[Litestar], decision_id: str, route: int, where: str
) -> None:
    method, path, auth, field = _routes(decision_id)[route]
    nested = "[" * 100_000 + "]" * 100_000
    body = nested if where == "top-level" else f'{{"customer_id": "c-1", "channels": ["web"], "{field}": {nested}}}'
    before = row_counts(app.state.runtime.store)
    response = client.request(method, path, content=body.encode(), headers={**auth, **JSON})
    assert response.status_code in (400, 422), response.text[:300]
    assert_problem(response, response.status_code)
    assert row_counts(app.state.runtime.store) == before


def _chunks(size: int) -> Iterator[bytes]:
    yield b'{"customer_id": "c-1", "channel": "web", "context": {"k": "'
    for _ in range(size // 65536 + 1):
        yield b"x" * 65536
    yield b'"}}'


@pytest.mark.parametrize("route", range(len(ROUTE_IDS)), ids=ROUTE_IDS)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_oversized_body_is_413_on_every_route(
    app: Litestar, client: TestClient[Litestar], decision_id: str, route: int, framing: str
) -> None:
    method, path, auth, _ = _routes(decision_id)[route]
    before = row_counts(app.state.runtime.store)
    content: bytes | Iterator[bytes] = (
        b"".join(_chunks(2_100_000)) if framing == "content-length" else _chunks(2_100_000)
    )
    response = client.request(method, path, content=content, headers={**auth, **JSON})
    assert_problem(response, 413)
    assert row_counts(app.state.runtime.store) == before


BAD_IDS = ["c-\x00", "c-1\n", "c\t1", "c 1", "c|1", "c-é", "c-\u202e1", "c-\u200b", "c-😀", "c-１", "c" * 129]


@pytest.mark.parametrize("bad", BAD_IDS, ids=[repr(b)[1:-1][:20] for b in BAD_IDS])
def test_ids_with_unicode_or_control_characters_are_refused_naming_the_field(
    app: Litestar, client: TestClient[Litestar], decision_id: str, bad: str
) -> None:
    before = row_counts(app.state.runtime.store)
    calls = [
        ("customer_id", "/v1/decide", {"customer_id": bad, "channel": "web"}),
        ("request_id", "/v1/decide", {"customer_id": "c-1", "channel": "web", "request_id": bad}),
        ("candidates", "/v1/decide", {"customer_id": "c-1", "channel": "web", "candidates": [bad]}),
        ("customer_id", "/v1/events", {"customer_id": bad, "type": "page_view"}),
        ("event_id", "/v1/events", {"customer_id": "c-1", "type": "page_view", "event_id": bad}),
        ("[1].event_id", "/v1/events", [{"customer_id": "c-1", "type": "page_view"},
                                        {"customer_id": "c-1", "type": "page_view", "event_id": bad}]),
    ]
    for field, path, body in calls:
        assert_problem(client.post(path, json=body, headers=CHANNEL), 422, field)
    encoded = quote(bad, safe="")  # as a client puts an id in a path
    reads = [client.get(f"/v1/decisions/{encoded}", headers=ANALYST),
             client.get(f"/v1/customers/{encoded}", headers=ANALYST),
             client.post(f"/v1/decisions/{encoded}/reward", json={"value": 1.0}, headers=CHANNEL),
             client.put(f"/v1/actions/{encoded}", json={"channels": ["web"]}, headers=ADMIN)]
    for response in reads:
        assert response.status_code in (404, 422), (response.request.url, response.status_code, response.text[:200])
        assert_problem(response, response.status_code)
    assert row_counts(app.state.runtime.store) == before


# JSON integers have no size limit; these are too large for a float, as features, rules and the model see numbers.
HUGE = [10**400, -(10**309)]


@pytest.mark.parametrize("huge", HUGE, ids=["1e400", "-1e309"])
def test_integers_too_large_for_a_float_are_refused_naming_the_field(
    app: Litestar, client: TestClient[Litestar], huge: int
) -> None:
    """In a context, an event's properties (declared or not) or an action's attributes: a 422 naming the field,
    nothing stored, and decisions afterwards are made as before (a stored one would fail every decide)."""
    put = client.put("/v1/event-types/measure", json={"properties": {"n": "number", "i": "integer"}}, headers=ADMIN)
    assert put.status_code == 201, put.text
    before = row_counts(app.state.runtime.store)
    calls = [
        ("context.x", "POST", "/v1/decide", CHANNEL, {"customer_id": "c-1", "channel": "web", "context": {"x": huge}}),
        ("properties.x", "POST", "/v1/events", CHANNEL,
         {"customer_id": "c-1", "type": "profile_updated", "properties": {"x": huge}}),
        ("properties.n", "POST", "/v1/events", CHANNEL,
         {"customer_id": "c-1", "type": "measure", "properties": {"n": huge}}),
        ("[1].properties.i", "POST", "/v1/events", CHANNEL,
         [{"customer_id": "c-1", "type": "measure", "properties": {"i": 1}},
          {"customer_id": "c-1", "type": "measure", "properties": {"i": huge}}]),
        ("attributes", "PUT", "/v1/actions/a0", ADMIN, {"channels": ["web"], "attributes": {"x": huge}}),
    ]
    for field, method, path, auth, body in calls:
        response = client.request(method, path, json=body, headers=auth)
        problem = assert_problem(response, 422)
        assert any(error["field"] == field or error["field"].startswith(field + ".") for error in problem["errors"]), (
            field, problem)
    assert row_counts(app.state.runtime.store) == before
    answer = decide(client, "c-1", candidates=list(ACTIONS), context={"x": 2**70})  # large, but a float
    assert answer["policy"]["mode"] == "online" and len(answer["ranking"]) == len(ACTIONS), answer


@pytest.mark.parametrize("timestamp", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_event_times_past_the_calendar_in_utc_are_refused_naming_the_field(
    app: Litestar, client: TestClient[Litestar], timestamp: str
) -> None:
    """A valid date whose offset takes it before year 1 or after 9999 in UTC: 422, and none of the batch is stored."""
    before = row_counts(app.state.runtime.store)
    good = {"customer_id": "c-1", "type": "page_view"}
    assert_problem(client.post("/v1/events", json={**good, "timestamp": timestamp}, headers=CHANNEL), 422, "timestamp")
    assert_problem(client.post("/v1/events", json=[good, {**good, "timestamp": timestamp}], headers=CHANNEL), 422,
                   "[1].timestamp")
    assert row_counts(app.state.runtime.store) == before
    edge = timestamp[:-6] + "Z"  # the same wall time in UTC is in range: accepted if it is not in the future
    if edge.startswith("0001"):
        accepted = client.post("/v1/events", json={**good, "timestamp": edge}, headers=CHANNEL)
        assert accepted.status_code == 202, accepted.text
    else:
        problem = assert_problem(client.post("/v1/events", json={**good, "timestamp": edge}, headers=CHANNEL), 422,
                                 "timestamp")
        assert "in the future" in problem["detail"]


tricky_text = st.text(st.one_of(st.characters(exclude_categories=("Cs",)), st.sampled_from(TRICKY)),
                      min_size=1, max_size=24)
# Magnitudes a context carries in practice (amounts, rates, counts); extreme ones have their own tests below.
feature_values = st.one_of(
    tricky_text,
    st.lists(tricky_text, max_size=4),
    st.floats(min_value=-1e12, max_value=1e12).filter(lambda v: v == 0.0 or abs(v) >= 1e-12),
    st.sampled_from([-0.0, 2.0**53]),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.booleans(),
)
contexts = st.dictionaries(tricky_text, feature_values, max_size=8)
event_properties = st.dictionaries(tricky_text.filter(lambda k: k != "page"), feature_values, max_size=6)


def test_tricky_features_are_stored_verbatim_and_never_corrupt_the_model(
    app: Litestar, client: TestClient[Litestar], service_log: list[logging.LogRecord]
) -> None:
    """Context and customer-state features made of VW syntax, control and odd unicode characters: every decision
    scores online (the model parsed it), is logged verbatim, and its reward is learned; the learned model still
    scores probability vectors, and survives a snapshot and reload."""
    rewarded: list[str] = []
    customers = itertools.count()

    @settings(max_examples=60, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(context=contexts, properties=event_properties, slots=st.integers(1, 3))
    def decide_and_reward(context: dict[str, Any], properties: dict[str, Any], slots: int) -> None:
        customer = f"c-{next(customers)}"
        event = client.post("/v1/events", headers=CHANNEL, json={
            "customer_id": customer, "type": "page_view", "properties": properties})
        assert event.status_code == 202, event.text
        decision = decide(client, customer, context=context, slots=slots)
        assert decision["policy"]["mode"] == "online", "the model could not score these features"
        assert_distribution(decision)
        logged = logged_decision(client, decision["decision_id"])
        assert logged["context"] == context
        assert logged["customer"]["attributes"] == properties
        for slot in range(len(decision["actions"])):
            reward = client.post(f"/v1/decisions/{decision['decision_id']}/reward", headers=CHANNEL,
                                 json={"value": 1.0, "slot": slot})
            assert reward.status_code == 202, reward.text
            rewarded.append(decision["decision_id"])

    decide_and_reward()
    learner = _learner(app)
    assert learner.learn_pending() == len(rewarded)  # every example parsed and learned, none skipped
    learner.publish_all()
    after = decide(client, "c-after", context={"k|A id=a1": "v:1 |U x\n", "\x00": ["\u2028", "|"]})
    assert after["policy"]["mode"] == "online"
    assert_distribution(after)
    learner.snapshot_all()
    snapshot = app.state.runtime.store.latest_snapshot("web", 1)
    assert snapshot is not None and snapshot.examples == len(rewarded)
    policy = app.state.runtime.catalog().policies["web"][1]
    reloaded = VWPolicy(build_args(policy.learner), snapshot.model)
    scores = reloaded.score({"C": {"k=\x00|": 1.0}}, [{"A": {"id=a0": 1.0}}, {"A": {"id=a1": 1.0}}])
    assert abs(sum(scores) - 1.0) < 1e-6 and all(0.0 <= p <= 1.0 for p in scores)
    assert not [r.getMessage() for r in service_log if r.levelno >= logging.WARNING]


# Segment values that collide under plausible escaping mistakes: a space written as %20 without escaping `%`,
# a namespace break (`|A`) and a `:value` that would become features of their own, a newline ending the line.
SEGMENTS = {"x y": "a0", "x%20y": "a1", "x|A id=a0 :1\n|U z": "a2", "x\u00a0y": "a3"}
SEGMENT_KEY = "seg|ment: \n"


def test_escaping_keeps_tricky_segments_apart_so_the_model_learns_each(
    app: Litestar, client: TestClient[Litestar]
) -> None:
    """With correct escaping each segment value is one distinct feature and the model learns which action suits
    each; broken escaping would merge or split them, or inject features, and the mapping would not be learned."""
    learner = _learner(app)
    segments = list(SEGMENTS)
    for index in range(320):  # the unpublished model logs uniform propensities: clean exploration data
        segment = segments[index % len(segments)]
        decision = decide(client, f"c-{index}", candidates=list(ACTIONS), context={SEGMENT_KEY: segment})
        chosen = decision["actions"][0]["action_id"]
        reward = client.post(f"/v1/decisions/{decision['decision_id']}/reward", headers=CHANNEL,
                             json={"value": float(chosen == SEGMENTS[segment])})
        assert reward.status_code == 202
    assert learner.learn_pending() == 320
    learner.publish_all()
    learned = {segment: top_action(decide(client, "probe", candidates=list(ACTIONS),
                                          context={SEGMENT_KEY: segment}))
               for segment in segments}
    assert {segment: action for segment, (action, _) in learned.items()} == SEGMENTS
    assert all(probability > 0.5 for _, probability in learned.values()), learned


# Finite JSON numbers that Vowpal Wabbit could not score when written as they are: float32 overflow of a context
# value times an action attribute under the policy's interactions, and (a VW parsing quirk) magnitudes between
# about 1e-217 and 1e-129. `bandits/vw_text.py` bounds every feature value, so each is scored online.
UNSCORABLE = [1e308, -1e308, 3.4e38, 1e-160, -1e-200]
EXTREME = [*UNSCORABLE, 1e20, 5e-324, -0.0]


@pytest.mark.parametrize("value", UNSCORABLE, ids=str)
def test_extreme_numbers_are_scored_online(
    client: TestClient[Litestar], service_log: list[logging.LogRecord], value: float
) -> None:
    """The API accepts any finite number, in the request context, the customer's state (an event property) or an
    action's attributes, and the model scores it: no silent fallback to the uniform policy."""
    action = client.put("/v1/actions/extreme", headers=ADMIN, json={
        "channels": ["web"], "attributes": {"price": value}})
    assert action.status_code == 201, action.text
    event = client.post("/v1/events", headers=CHANNEL, json={
        "customer_id": "c-1", "type": "page_view", "properties": {"balance": value}})
    assert event.status_code == 202, event.text
    response = client.post("/v1/decide", headers=CHANNEL, json={
        "customer_id": "c-1", "channel": "web", "context": {"amount": value}})
    assert response.status_code == 200, response.text
    decision = response.json()
    assert decision["policy"]["mode"] == "online", "a valid number made the learning policy fail"
    assert_distribution(decision)
    assert "extreme" in {a["action_id"] for a in decision["ranking"]}
    assert not [r.getMessage() for r in service_log if r.levelno >= logging.WARNING]


def test_learning_from_extreme_numbers_does_not_corrupt_the_model(
    app: Litestar, client: TestClient[Litestar]
) -> None:
    """Decisions made on extreme numbers are rewarded and learned; the model goes on learning ordinary data and
    serves it online, including requests that carry the same feature with an ordinary value."""
    learner = _learner(app)
    for index, value in enumerate(EXTREME):
        decision = decide(client, f"x-{index}", candidates=list(ACTIONS), context={"amount": value})
        assert_distribution(decision)
        reward = client.post(f"/v1/decisions/{decision['decision_id']}/reward", json={"value": 1.0},
                             headers=CHANNEL)
        assert reward.status_code == 202
    assert learner.learn_pending() == len(EXTREME)
    best = {"s0": "a0", "s1": "a1", "s2": "a2", "s3": "a3"}
    for index in range(240):
        segment = f"s{index % 4}"
        decision = decide(client, f"c-{index}", candidates=list(ACTIONS), context={"segment": segment})
        chosen = decision["actions"][0]["action_id"]
        client.post(f"/v1/decisions/{decision['decision_id']}/reward", headers=CHANNEL,
                    json={"value": float(chosen == best[segment])})
    assert learner.learn_pending() == 240
    learner.publish_all()
    for segment, action in best.items():
        probe = decide(client, "probe", candidates=list(ACTIONS), context={"segment": segment, "amount": 42.0})
        assert probe["policy"]["mode"] == "online"
        assert_distribution(probe)
        assert top_action(probe)[0] == action, (segment, probe["ranking"])


def test_huge_context_at_the_limits_is_decided_logged_and_learned(
    app: Litestar, client: TestClient[Litestar]
) -> None:
    """256 keys, each a list of 100 strings with VW syntax in them: just under the 2 MB body limit."""
    context = {f"k{i:03d}|: " + "x" * 100: [f"v{j}|: \n" + "y" * 40 for j in range(100)] for i in range(256)}
    body = json.dumps({"customer_id": "c-huge", "channel": "web", "context": context})
    assert 1_000_000 < len(body) < 2_000_000
    response = client.post("/v1/decide", content=body.encode(), headers={**CHANNEL, **JSON})
    assert response.status_code == 200, response.text[:300]
    decision = response.json()
    assert decision["policy"]["mode"] == "online"
    assert logged_decision(client, decision["decision_id"])["context"] == context
    reward = client.post(f"/v1/decisions/{decision['decision_id']}/reward", json={"value": 1.0}, headers=CHANNEL)
    assert reward.status_code == 202
    learner = _learner(app)
    assert learner.learn_pending() == 1
    learner.publish_all()
    again = client.post("/v1/decide", content=body.encode(), headers={**CHANNEL, **JSON})
    assert again.status_code == 200 and again.json()["policy"]["mode"] == "online"
    assert_distribution(again.json())


def test_a_thousand_events_with_tricky_properties_are_all_stored(
    app: Litestar, client: TestClient[Litestar]
) -> None:
    events = [{"customer_id": f"c-{i % 7}", "type": "page_view", "event_id": f"e-{i}",
               "properties": {TRICKY[i % len(TRICKY)] + "key": f"v|{i}: \n" + TRICKY[-i % len(TRICKY)],
                              "page": f"p {i}|x"}}
              for i in range(1000)]
    response = client.post("/v1/events", json=events, headers=CHANNEL)
    assert response.status_code == 202, response.text[:300]
    assert [a["event_id"] for a in response.json()] == [e["event_id"] for e in events]
    store: Store = app.state.runtime.store
    assert row_counts(store)["events"] == 1000
    state = store.load_customer("c-0")
    assert state is not None and state.event_counts["page_view"] == len(range(0, 1000, 7))
    last = events[994]  # the newest event of customer c-0 wins each property
    assert state.attributes["page"] == last["properties"]["page"]


def test_learner_args_refuse_tricky_text(client: TestClient[Litestar]) -> None:
    """Free-form `vw_args` is the one place text reaches Vowpal Wabbit's command line: syntax there is a 422."""
    for vw_args in ["--data /etc/passwd", "-f /tmp/model", "-q '\x00'", "--cb_type 'mtr\n--quiet'", "-b 64"]:
        response = client.put("/v1/policies/tricky", json={"channels": ["tricky"], "learner": {"vw_args": vw_args}},
                              headers=ADMIN)
        assert_problem(response, 422, "learner")
    assert client.get("/v1/policies/tricky", headers=ANALYST).status_code == 404
