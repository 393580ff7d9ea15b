"""Bad input gets the right 4xx problem+json, never a 500, and leaves the decision log and rewards as they were.

API.md: a body that is not JSON (including `NaN`) is a 400; JSON that fails validation is a 422 whose `errors`
name the field; oversize bodies (over the 2 MB limit) are a 413; unknown decisions are a 404.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from litestar import Litestar

from features.events import validate_event
from nba.catalog import EventType
from nba.errors import InvalidInput
from tests.conftest import ADMIN, ANALYST, CHANNEL
from tests.serving.helpers import Client, assert_problem, decide, decision_count, rewards_of

JSON_HEADERS = {**CHANNEL, "content-type": "application/json"}


def _body(**fields: Any) -> bytes:
    return json.dumps({"customer_id": "c-1", "channel": "web", **fields}).encode()


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


NOT_JSON = [
    pytest.param(b'{"customer_id": "c-1", "channel": ', id="truncated"),
    pytest.param(b"{customer_id: c-1}", id="unquoted"),
    pytest.param(b"", id="empty-body"),
    pytest.param(b'{"customer_id": "c-1", "channel": "web", "context": {"x": NaN}}', id="nan-in-context"),
    pytest.param(b"NaN", id="bare-nan"),
    pytest.param(b'{"customer_id": "c-1", "channel": "web", "context": {"x": Infinity}}', id="infinity"),
    pytest.param(b'{"customer_id": "c-\xff\xfe", "channel": "web"}', id="invalid-utf8"),
    # Not JSON, though a field's type or name fails first (msgspec validates as it parses): still a 400.
    pytest.param(b'{"nope": NaN}', id="unknown-field-then-nan"),
    pytest.param(b'{"customer_id": 5,', id="wrong-type-then-truncated"),
    pytest.param(b"[1,", id="array-then-truncated"),
    pytest.param(b'{"customer_id": 5, "context": {"x": 1e999}, ', id="out-of-range-then-truncated"),
]
DEEP = [  # the body, and the fields a 422 may name: the map holding the bad value, or its key
    pytest.param(_nested(100_000).encode(), {"body"}, id="top-level"),
    pytest.param(b'{"customer_id": "c-1", "channel": "web", "context": {"x": ' + _nested(20_000).encode() + b"}}",
                 {"context", "context.x"}, id="in-context"),
    pytest.param(b'{"customer_id": "c-1", "channel": "web", "context": {"x": ' + _nested(100_000).encode() + b"}}",
                 {"context", "context.x"}, id="in-context-past-pythons-parser"),
    pytest.param(b'{"customer_id": "c-1", "channel": "web", "context": {"x": '
                 + b'{"y": ' * 50_000 + b"1" + b"}" * 50_000 + b"}}", {"context", "context.x"},
                 id="objects-in-context"),
]

INVALID_DECIDE = [
    pytest.param(json.dumps({"channel": "web"}).encode(), "customer_id", id="missing-customer-id"),
    pytest.param(json.dumps({"customer_id": "c-1"}).encode(), "channel", id="missing-channel"),
    pytest.param(b"[]", "body", id="array-body"),
    pytest.param(b"null", "body", id="null-body"),
    pytest.param(_body(surprise=1), "surprise", id="unknown-field"),
    pytest.param(json.dumps({"customer_id": 1042, "channel": "web"}).encode(), "customer_id", id="customer-id-number"),
    pytest.param(_body(channel=["web"]), "channel", id="channel-list"),
    pytest.param(_body(slots="2"), "slots", id="slots-string"),
    pytest.param(_body(slots=1.5), "slots", id="slots-float"),
    pytest.param(_body(slots=True), "slots", id="slots-bool"),
    pytest.param(_body(slots=0), "slots", id="slots-0"),
    pytest.param(_body(slots=11), "slots", id="slots-11"),
    pytest.param(_body(defer_activation="true"), "defer_activation", id="defer-activation-string"),
    pytest.param(_body(candidates="offer-10pct"), "candidates", id="candidates-string"),
    pytest.param(_body(candidates=["no-such-action"]), "candidates", id="unknown-candidate"),
    pytest.param(_body(candidates=["offer-10pct", "no-such-action"]), "candidates", id="one-unknown-candidate"),
    pytest.param(_body(candidates=["offer 10pct"]), "candidates", id="candidate-with-space"),
    pytest.param(_body(channel="sms"), "channel", id="channel-without-policy"),
    pytest.param(_body(customer_id="c 1"), "customer_id", id="id-with-space"),
    pytest.param(_body(customer_id="c-ü"), "customer_id", id="id-with-unicode"),
    pytest.param(_body(customer_id="c" * 129), "customer_id", id="id-129-chars"),
    pytest.param(_body(customer_id=""), "customer_id", id="id-empty"),
    pytest.param(_body(request_id="web 7f3a"), "request_id", id="request-id-with-space"),
    pytest.param(_body(context=["returning"]), "context", id="context-list"),
    pytest.param(_body(context={"cart": {"value": 84.5}}), "context", id="context-nested-object"),
    pytest.param(_body(context={"x": json.loads(_nested(64))}), "context", id="context-nested-64-deep"),
    pytest.param(_body(context={"tags": [1, 2]}), "context", id="context-list-of-numbers"),
    pytest.param(_body(context={f"k{i}": i for i in range(257)}), "context", id="context-257-keys"),
    pytest.param(b'{"customer_id": "c-1", "channel": "web", "context": {"x": 1e999}}', "context", id="number-1e999"),
]


@pytest.fixture
def store_url(sqlite_url: str) -> str:
    """Input is rejected before the store is asked anything: one backend is enough here."""
    return sqlite_url


@pytest.fixture
def before(app: Litestar, client: Client) -> int:
    decide(client, "c-0")
    return decision_count(app)


@pytest.mark.parametrize("body", NOT_JSON)
def test_decide_body_that_is_not_json_is_400(app: Litestar, client: Client, before: int, body: bytes) -> None:
    assert_problem(client.post("/v1/decide", content=body, headers=JSON_HEADERS), 400)
    assert decision_count(app) == before


@pytest.mark.parametrize(("body", "fields"), DEEP)
def test_decide_body_nested_past_any_parser_limit_is_a_client_error(
    app: Litestar, client: Client, before: int, body: bytes, fields: set[str]
) -> None:
    """A parser may refuse deep nesting (RFC 8259 §9): then the body cannot be read, a 400. A decoder that checks the
    schema as it goes stops at the first value that is not flat, a 422 naming a field the body has. Either keeps
    API.md; a 500 does not."""
    response = client.post("/v1/decide", content=body, headers=JSON_HEADERS)
    assert response.status_code in (400, 422), response.text[:500]
    problem = assert_problem(response, response.status_code)
    if response.status_code == 422:
        assert {error["field"] for error in problem["errors"]} <= fields, problem["errors"]
    assert decision_count(app) == before


@pytest.mark.parametrize(("body", "field"), INVALID_DECIDE)
def test_decide_invalid_json_is_422_naming_the_field(
    app: Litestar, client: Client, before: int, body: bytes, field: str
) -> None:
    assert_problem(client.post("/v1/decide", content=body, headers=JSON_HEADERS), 422, field)
    assert decision_count(app) == before


def test_decide_at_the_limits_is_accepted(app: Litestar, client: Client, before: int) -> None:
    """The boundaries next to the rejected values above are fine, so those rejections are about the values."""
    decide(client, "c" * 128, slots=10, context={f"k{i}": i for i in range(256)}, request_id="r." + "x" * 126)
    decide(client, "c-1.a_b:C", slots=1, context={"tags": ["a", "b"], "ok": True, "n": 1e308})
    assert decision_count(app) == before + 2


def test_body_over_the_size_limit_is_413(app: Litestar, client: Client, before: int) -> None:
    body = _body(context={"note": "x" * 2_100_000})
    assert len(body) > 2_000_000
    assert_problem(client.post("/v1/decide", content=body, headers=JSON_HEADERS), 413)
    assert decision_count(app) == before


BAD_REWARDS = [
    pytest.param(b'{"value": NaN}', 400, None, id="nan"),
    pytest.param(b'{"value": -Infinity}', 400, None, id="infinity"),
    pytest.param(b'{"value": 1.0', 400, None, id="truncated"),
    pytest.param(b'{"value": "1", ', 400, None, id="wrong-type-then-truncated"),
    pytest.param(b'{"value": "1.0"}', 422, "value", id="numeric-string"),
    pytest.param(b'{"value": "high"}', 422, "value", id="word"),
    pytest.param(b'{"value": true}', 422, "value", id="bool"),
    pytest.param(b'{"value": null}', 422, "value", id="null"),
    pytest.param(b'{"value": [1.0]}', 422, "value", id="list"),
    pytest.param(b"{}", 422, "value", id="missing-value"),
    pytest.param(b'{"value": 1e999}', 422, "value", id="number-1e999"),
    pytest.param(b'{"value": 1e308}', 422, "value", id="number-1e308"),  # would turn the model's weights NaN
    pytest.param(b'{"value": -1000000000.5}', 422, "value", id="below-the-reward-limit"),
    pytest.param(b'{"value": 1.0, "slot": 1}', 422, "slot", id="slot-not-filled"),
    pytest.param(b'{"value": 1.0, "slot": -1}', 422, "slot", id="slot-negative"),
    pytest.param(b'{"value": 1.0, "slot": 10}', 422, "slot", id="slot-10"),
    pytest.param(b'{"value": 1.0, "bonus": 1}', 422, "bonus", id="unknown-field"),
]


@pytest.mark.parametrize(("body", "status", "field"), BAD_REWARDS)
def test_rejected_reward_changes_nothing(
    app: Litestar, client: Client, body: bytes, status: int, field: str | None
) -> None:
    decision_id = decide(client)["decision_id"]
    assert client.post(f"/v1/decisions/{decision_id}/reward", json={"value": 0.5}, headers=CHANNEL).status_code == 202
    rewards, count = rewards_of(client, decision_id), decision_count(app)

    response = client.post(f"/v1/decisions/{decision_id}/reward", content=body, headers=JSON_HEADERS)

    assert_problem(response, status, field)
    assert rewards_of(client, decision_id) == rewards
    assert decision_count(app) == count


def test_rewards_at_the_limit_are_accepted(client: Client) -> None:
    """The limits above are about the values: a reward of exactly 1e9 (or -1e9) is accepted."""
    decision_id = decide(client)["decision_id"]
    for value in (1e9, -1e9):
        response = client.post(f"/v1/decisions/{decision_id}/reward", json={"value": value}, headers=CHANNEL)
        assert response.status_code == 202, response.text
    assert [r["value"] for r in rewards_of(client, decision_id)] == [1e9, -1e9]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("POST", "/v1/decisions/d-01UNKNOWN/reward", id="reward"),
        pytest.param("POST", "/v1/decisions/d-01UNKNOWN/activate", id="activate"),
        pytest.param("GET", "/v1/decisions/d-01UNKNOWN", id="read"),
    ],
)
def test_unknown_decision_is_404(app: Litestar, client: Client, before: int, method: str, path: str) -> None:
    headers = ANALYST if method == "GET" else CHANNEL
    body = {"value": 1.0} if path.endswith("reward") else None
    assert_problem(client.request(method, path, json=body, headers=headers), 404)
    assert decision_count(app) == before


EXACT_FIELDS = [
    pytest.param("/v1/decide", json.dumps({"channel": "web"}).encode(), ["customer_id"], id="missing-field"),
    pytest.param("/v1/decide", _body(surprise=1), ["surprise"], id="unknown-field"),
    pytest.param("/v1/decide", _body(context={"ok": 1, "cart": {"value": 84.5}}), ["context.cart"], id="nested-object"),
    pytest.param("/v1/decide", _body(context={"tags": ["a", 2]}), ["context.tags[1]"], id="list-item"),
    pytest.param("/v1/decide", _body(context={"ok": "x", "note": "x" * 1025}), ["context.note"], id="long-string"),
    pytest.param("/v1/decide", _body(context={"ok": 1, "k" * 129: 1}), ["context." + "k" * 129], id="long-key"),
    pytest.param("/v1/decide", b'{"customer_id": "c-1", "channel": "web", "context": {"ok": 1, "x": 1e999}}',
                 ["context.x"], id="number-out-of-range"),
    pytest.param("/v1/decisions/{decision}/reward", b"{}", ["value"], id="reward-missing-value"),
    pytest.param("/v1/events", json.dumps([{"customer_id": "c-1", "type": "page_view"}, {"type": "page_view"}]
                                          ).encode(), ["[1].customer_id"], id="event-in-a-batch"),
    pytest.param("/v1/events", json.dumps({"customer_id": "c-1", "type": "page_view", "properties": {"p": {}}}
                                          ).encode(), ["properties.p"], id="event-property"),
]


@pytest.mark.parametrize(("path", "body", "fields"), EXACT_FIELDS)
def test_errors_name_exactly_the_input_at_fault(
    app: Litestar, client: Client, before: int, path: str, body: bytes, fields: list[str]
) -> None:
    """The field of each error is the path to the input at fault: not doubled (`customer_id.customer_id`), and
    inside a map it names the key (`context.cart`), not just the map."""
    target = path.format(decision=decide(client, "c-9")["decision_id"]) if "{" in path else path
    count = decision_count(app)
    problem = assert_problem(client.post(target, content=body, headers=JSON_HEADERS), 422)
    assert [error["field"] for error in problem["errors"]] == fields, problem
    assert decision_count(app) == count


STRICT_ADMIN = [
    pytest.param("/v1/actions/x", {"channels": ["web"], "active": "yes"}, ["active"], id="bool-as-string"),
    pytest.param("/v1/actions/x", {"channels": ["web"], "active": 1}, ["active"], id="bool-as-number"),
    pytest.param("/v1/actions/x", {"channels": ["web"], "caps": [{"per": "customer", "limit": "5", "window": "1d"}]},
                 ["caps.0.limit"], id="int-as-string"),
    pytest.param("/v1/actions/x", {"channels": ["web"], "attributes": {"ok": 1, "a": {"b": 1}}}, ["attributes.a"],
                 id="attribute-object"),
    pytest.param("/v1/policies/p", {"channels": ["kiosk"], "learner": {"exploration": "epsilon", "epsilon": "0.1"}},
                 ["learner.epsilon"], id="float-as-string"),
    pytest.param("/v1/policies/p", {"channels": ["kiosk"], "reward": {"window": "1h", "default": True}},
                 ["reward.default"], id="float-as-bool"),
    pytest.param("/v1/event-types/t", {"properties": {"a": 5}}, ["properties.a"], id="kind-as-number"),
    pytest.param("/v1/actions/x", {"channels": "web", "caps": {}}, ["channels", "caps"], id="two-fields"),
    pytest.param("/v1/actions/x", {"channels": ["web"], "attributes": {"a": "x" * 1025}}, ["attributes.a"],
                 id="attribute-too-long"),
    pytest.param("/v1/actions/x", {"channels": ["web"], "attributes": {"a": [1]}}, ["attributes.a"],
                 id="attribute-list-of-numbers"),
    pytest.param("/v1/actions/x", {"channels": ["web"], "eligibility": "1 + 2"}, ["eligibility"],
                 id="eligibility-not-a-condition"),
    pytest.param("/v1/actions/x", {"channels": ["web"], "eligibility": "nosuchfn(customer.age)"}, ["eligibility"],
                 id="eligibility-unknown-function"),
]


@pytest.mark.parametrize(("path", "body", "fields"), STRICT_ADMIN)
def test_admin_bodies_are_strict_naming_the_field(
    client: Client, path: str, body: dict[str, Any], fields: list[str]
) -> None:
    """API.md: JSON that fails validation is a 422. A wrong type is not converted (`"5"` to 5, `"yes"` to true),
    and nothing changes; the same body with the right types is accepted."""
    listing = {path: client.get(path.rsplit("/", 1)[0], headers=ADMIN).json()}
    problem = assert_problem(client.put(path, json=body, headers=ADMIN), 422)
    assert [error["field"] for error in problem["errors"]] == fields, problem
    assert {path: client.get(path.rsplit("/", 1)[0], headers=ADMIN).json()} == listing


def test_admin_bodies_take_an_integer_where_a_number_is_asked(client: Client) -> None:
    """Strict is about types, not about JSON's one kind of number: 1 is a valid epsilon or reward default."""
    response = client.put("/v1/policies/p", headers=ADMIN, json={"channels": ["kiosk"], "reward": {
        "window": "1h", "default": 0}, "learner": {"exploration": "epsilon", "epsilon": 1}})
    assert response.status_code == 201, response.text
    assert response.json()["learner"]["epsilon"] == 1.0


@pytest.mark.parametrize(("path", "body"), [
    pytest.param("/v1/policies/p", {"channels": ["kiosk", "kiosk"]}, id="policy"),
    pytest.param("/v1/actions/x", {"channels": ["web", "app", "web"]}, id="action"),
])
def test_a_channel_listed_twice_is_422(client: Client, path: str, body: dict[str, Any]) -> None:
    problem = assert_problem(client.put(path, json=body, headers=ADMIN), 422)
    assert [error["field"] for error in problem["errors"]] == ["channels"], problem


@pytest.mark.parametrize("name", ["opt_out", "opt_in"])
def test_a_built_in_event_type_can_be_extended_but_not_changed(client: Client, name: str) -> None:
    """What the service reads of a built-in type keeps its meaning: `opt_out` with `channel` as a number would
    refuse every opt-out (422, nothing stored). Adding properties, required ones too, is allowed; and a schema
    under that name from elsewhere (a YAML catalog, an older store) cannot change the built-in property either."""
    before = client.get("/v1/event-types", headers=ADMIN).json()
    assert_problem(client.put(f"/v1/event-types/{name}", json={"properties": {"channel": "number"}}, headers=ADMIN),
                   422, "properties.channel")
    assert client.get("/v1/event-types", headers=ADMIN).json() == before
    extended = client.put(f"/v1/event-types/{name}", headers=ADMIN, json={
        "properties": {"channel": "string", "reason": "string"}, "required": ["reason"]})
    assert extended.status_code == 201, extended.text
    event = {"customer_id": "c-1", "type": name, "properties": {"channel": "web"}}
    assert_problem(client.post("/v1/events", headers=CHANNEL, json=event), 422, "properties.reason")
    event["properties"]["reason"] = "moved"
    assert client.post("/v1/events", headers=CHANNEL, json=event).status_code == 202
    elsewhere = {name: EventType(properties={"channel": "number"})}
    assert validate_event(name, {"channel": "web"}, elsewhere) is None
    with pytest.raises(InvalidInput):
        validate_event(name, {"channel": 3}, elsewhere)


def test_an_attribute_out_of_a_floats_range_is_named(client: Client) -> None:
    body = b'{"channels": ["web"], "attributes": {"ok": 1, "v": 1e999, "n": 1' + b"0" * 400 + b"}}"
    response = client.put("/v1/actions/x", headers={**ADMIN, "content-type": "application/json"}, content=body)
    problem = assert_problem(response, 422)
    assert sorted(error["field"] for error in problem["errors"]) == ["attributes.n", "attributes.v"], problem


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "field", "says"),
    [
        pytest.param("POST", "/v1/decide", CHANNEL, {"customer_id": "c 1", "channel": "web"}, "customer_id",
                     "must be 1 to 128 characters, each a letter, a digit, '.', '_', ':' or '-'", id="id-in-body"),
        pytest.param("POST", "/v1/decide", CHANNEL, {"customer_id": "c-1", "channel": "-web"}, "channel",
                     "must be 1 to 64 characters", id="name-in-body"),
        pytest.param("PUT", "/v1/actions/a%20b", ADMIN, {"channels": ["web"]}, "action_id",
                     "must be 1 to 128 characters", id="id-in-path"),
        pytest.param("PUT", "/v1/actions/a", ADMIN, {"channels": ["web"], "cooldown": "2w"}, "cooldown",
                     "must be a whole number from 1 to 9999999 followed by s, m, h or d", id="duration"),
    ],
)
def test_a_pattern_refused_is_said_in_words_not_as_a_regex(
    client: Client, method: str, path: str, headers: dict[str, str], body: dict[str, Any], field: str, says: str
) -> None:
    problem = assert_problem(client.request(method, path, json=body, headers=headers), 422, field)
    [error] = problem["errors"]
    assert says in error["message"] and problem["detail"].startswith(f"{field}: {says}")
    assert "regex" not in problem["detail"] and "pattern" not in problem["detail"]
