"""Auth (API.md): `Authorization: Bearer <key>`; 401 without a valid key, 403 for a role the call does not allow.

Roles: `channel` decides, rewards, activates and sends events; `analyst` reads; `admin` may call everything.
`/health`, `/metrics` and `/schema/openapi.json` need no key.
"""

from __future__ import annotations

from typing import Any

import pytest
from litestar import Litestar
from prometheus_client import CONTENT_TYPE_LATEST

from tests.conftest import ADMIN, ANALYST, CHANNEL
from tests.serving.helpers import Client, assert_problem, decide, decision_count

HEADERS = {"channel": CHANNEL, "analyst": ANALYST, "admin": ADMIN}
ACTION = {"channels": ["web"], "attributes": {"category": "content"}}

# (method, path, body, role the call needs). `{decision}` is a deferred decision made for the test.
ENDPOINTS: list[tuple[str, str, Any, str]] = [
    ("POST", "/v1/decide", {"customer_id": "c-1", "channel": "web"}, "channel"),
    ("GET", "/v1/customers/c-0/next?channel=web", None, "channel"),
    ("POST", "/v1/decisions/{decision}/reward", {"value": 1.0}, "channel"),
    ("POST", "/v1/decisions/{decision}/activate", None, "channel"),
    ("POST", "/v1/events", {"customer_id": "c-1", "type": "page_view"}, "channel"),
    ("GET", "/v1/decisions/{decision}", None, "analyst"),
    ("GET", "/v1/customers/c-0", None, "analyst"),
    ("GET", "/v1/actions", None, "analyst"),
    ("GET", "/v1/policies", None, "analyst"),
    ("GET", "/v1/policies/web-offers", None, "analyst"),
    ("GET", "/v1/event-types", None, "analyst"),
    ("PUT", "/v1/actions/new-action", ACTION, "admin"),
    ("DELETE", "/v1/actions/loyalty-signup", None, "admin"),
    ("PUT", "/v1/policies/sms-offers", {"channels": ["sms"]}, "admin"),
    ("PUT", "/v1/event-types/signup", {"properties": {"plan": "string"}}, "admin"),
]
ENDPOINT_IDS = [f"{method} {path}" for method, path, _, _ in ENDPOINTS]
GRANTS = {"channel": {"channel", "admin"}, "analyst": {"analyst", "admin"}, "admin": {"admin"}}
FORBIDDEN = [
    pytest.param(endpoint, role, id=f"{role}-{method} {path}")
    for endpoint in ENDPOINTS
    for method, path, _, needed in [endpoint]
    for role in ("channel", "analyst")
    if role not in GRANTS[needed]
]
# What each call answers when it is allowed (API.md, and Litestar's defaults where API.md names none).
SUCCESS = {"POST": {200, 202}, "GET": {200}, "PUT": {200, 201}, "DELETE": {200, 204}}


@pytest.fixture
def store_url(sqlite_url: str) -> str:
    """Keys are checked before the store is asked anything: one backend is enough here."""
    return sqlite_url


@pytest.fixture
def decision_id(client: Client) -> str:
    decision_id: str = decide(client, "c-0", defer_activation=True)["decision_id"]
    return decision_id


def _call(client: Client, endpoint: tuple[str, str, Any, str], decision_id: str, headers: dict[str, str]) -> Any:
    method, path, body, _ = endpoint
    return client.request(method, path.format(decision=decision_id), json=body, headers=headers)


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=ENDPOINT_IDS)
@pytest.mark.parametrize(
    "headers",
    [pytest.param({}, id="no-header"), pytest.param({"Authorization": "Bearer not-a-key"}, id="unknown-key")],
)
def test_without_a_valid_key_is_401(
    app: Litestar, client: Client, decision_id: str, endpoint: tuple[str, str, Any, str], headers: dict[str, str]
) -> None:
    before = decision_count(app)
    assert_problem(_call(client, endpoint, decision_id, headers), 401)
    assert decision_count(app) == before


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param("Bearer ", id="empty-key"),
        pytest.param("test-admin", id="no-scheme"),
        pytest.param("Basic test-admin", id="basic-scheme"),
        pytest.param("Bearer test-admin-x", id="key-with-suffix"),
        pytest.param("Bearer test-admi", id="key-prefix"),
    ],
)
def test_a_malformed_or_near_miss_key_is_401(app: Litestar, client: Client, authorization: str) -> None:
    before = decision_count(app)
    response = client.post("/v1/decide", json={"customer_id": "c-1", "channel": "web"},
                           headers={"Authorization": authorization})
    assert_problem(response, 401)
    assert decision_count(app) == before


@pytest.mark.parametrize(("endpoint", "role"), FORBIDDEN)
def test_a_role_the_call_does_not_allow_is_403(
    app: Litestar, client: Client, decision_id: str, endpoint: tuple[str, str, Any, str], role: str
) -> None:
    before = decision_count(app)
    assert_problem(_call(client, endpoint, decision_id, HEADERS[role]), 403)
    assert decision_count(app) == before


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=ENDPOINT_IDS)
def test_admin_may_call_everything(client: Client, decision_id: str, endpoint: tuple[str, str, Any, str]) -> None:
    response = _call(client, endpoint, decision_id, ADMIN)
    assert response.status_code in SUCCESS[endpoint[0]], response.text


@pytest.mark.parametrize("endpoint", [e for e in ENDPOINTS if e[3] != "admin"], ids=lambda e: f"{e[0]} {e[1]}")
def test_the_role_named_in_the_contract_may_make_the_call(
    client: Client, decision_id: str, endpoint: tuple[str, str, Any, str]
) -> None:
    response = _call(client, endpoint, decision_id, HEADERS[endpoint[3]])
    assert response.status_code in SUCCESS[endpoint[0]], response.text


def test_the_scheme_name_is_case_insensitive(client: Client) -> None:
    """RFC 9110 §11.1: the auth scheme is matched case-insensitively."""
    decide(client, headers={"Authorization": "bearer test-channel"})


@pytest.mark.parametrize("path", ["/health", "/metrics", "/schema/openapi.json"])
def test_public_paths_need_no_key(client: Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200, response.text


def test_health_and_metrics_answer_in_their_formats(client: Client) -> None:
    health = client.get("/health")
    assert health.headers["content-type"].startswith("application/json")
    assert health.json()["status"] == "ok"
    decide(client)
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"] == CONTENT_TYPE_LATEST  # Prometheus's own, one charset
    assert any(line.startswith("# TYPE ") for line in metrics.text.splitlines())


def test_a_method_a_route_does_not_take_is_405_listing_those_it_does(client: Client) -> None:
    """RFC 9110 §15.5.6: a 405 carries `Allow`; as every error here, it is a problem."""
    response = client.delete("/v1/decide", headers=ADMIN)
    assert_problem(response, 405)
    assert set(response.headers["allow"].split(", ")) == {"POST", "OPTIONS"}, response.headers


def test_head_answers_every_get_route_as_get_without_the_body(client: Client) -> None:
    """RFC 9110 §9.3.2: HEAD wherever GET is served (load balancers probe `/health` so), with GET's status and
    headers and no body; auth and errors as for GET."""
    decision = decide(client)
    for path, headers in [("/health", {}), ("/metrics", {}), (f"/v1/decisions/{decision['decision_id']}", ANALYST),
                          ("/v1/actions", ADMIN), ("/schema/openapi.json", {})]:
        got, head = client.get(path, headers=headers), client.head(path, headers=headers)
        assert (head.status_code, head.content) == (got.status_code, b""), path
        assert head.headers["content-type"] == got.headers["content-type"], path
        if path != "/metrics":  # its figures (GC counts, CPU seconds) may change between the two requests
            assert head.headers["content-length"] == str(len(got.content)), path
        assert int(head.headers["content-length"]) > 0, path
    assert client.head("/v1/decisions/d-unknown", headers=ANALYST).status_code == 404
    assert client.head(f"/v1/decisions/{decision['decision_id']}").status_code == 401
    deciding = client.head("/v1/customers/c-head/next?channel=web", headers=CHANNEL)  # a GET that decides
    assert (deciding.status_code, deciding.content) == (405, b"") and deciding.headers["allow"] == "GET, OPTIONS"
    assert client.head("/v1/customers/c-head/next?channel=web").status_code == 401  # auth first, as for GET
    assert client.get("/v1/customers/c-head", headers=ANALYST).status_code == 404  # no decision was made
    refused = client.head("/v1/decide", headers=CHANNEL)  # a POST route
    assert (refused.status_code, refused.content) == (405, b"")
    assert set(refused.headers["allow"].split(", ")) == {"POST", "OPTIONS"}
    get_only = client.delete("/health")
    assert_problem(get_only, 405)
    assert set(get_only.headers["allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
