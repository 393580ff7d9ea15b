"""`GET /schema/openapi.json` (no auth) describes every route of API.md that this build serves."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest

from tests.conftest import ADMIN, ANALYST
from tests.serving.helpers import Client, decide, send_events

# (method, path as API.md spells it, the status API.md gives for success where it names one)
CONTRACT = [
    ("post", "/v1/decide", "200"),
    ("post", "/v1/decisions/{decision_id}/reward", "202"),
    ("post", "/v1/decisions/{decision_id}/activate", "202"),
    ("post", "/v1/events", "202"),
    ("get", "/v1/decisions/{decision_id}", "200"),
    ("get", "/v1/customers/{customer_id}", "200"),
    ("get", "/v1/customers/{customer_id}/next", "200"),
    ("get", "/v1/actions", "200"),
    ("put", "/v1/actions/{action_id}", None),
    ("delete", "/v1/actions/{action_id}", None),
    ("get", "/v1/policies", "200"),
    ("get", "/v1/policies/{name}", "200"),
    ("put", "/v1/policies/{name}", None),
    ("put", "/v1/event-types/{type}", None),
    ("get", "/health", "200"),
    ("get", "/metrics", "200"),
    ("get", "/schema/openapi.json", "200"),
]
IDS = [f"{method.upper()} {path}" for method, path, _ in CONTRACT]


@pytest.fixture
def store_url(sqlite_url: str) -> str:
    """The document does not depend on the store: one backend is enough here."""
    return sqlite_url


@pytest.fixture
def document(client: Client) -> dict[str, Any]:
    response = client.get("/schema/openapi.json")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/")
    doc: dict[str, Any] = response.json()
    assert doc["openapi"].startswith("3.")
    return doc


def _shape(path: str) -> str:
    """The path with its parameters unnamed: `/v1/actions/{action_id}` -> `/v1/actions/{}`."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def _operation(document: dict[str, Any], method: str, path: str) -> dict[str, Any] | None:
    for documented, operations in document["paths"].items():
        if _shape(documented) == _shape(path) and method in operations:
            operation: dict[str, Any] = operations[method]
            return operation
    return None


@pytest.mark.parametrize(("method", "path", "status"), CONTRACT, ids=IDS)
def test_every_contract_route_is_documented(document: dict[str, Any], method: str, path: str,
                                            status: str | None) -> None:
    operation = _operation(document, method, path)
    assert operation is not None, f"{method.upper()} {path} is not in the OpenAPI document"
    if status is not None:
        assert status in operation["responses"], sorted(operation["responses"])


def test_path_parameters_are_named_as_in_the_contract(document: dict[str, Any]) -> None:
    documented = {_shape(p): p for p in document["paths"]}
    renamed = {path: documented[_shape(path)] for _, path, _ in CONTRACT
               if _shape(path) in documented and documented[_shape(path)] != path}
    assert renamed == {}


def test_decide_request_and_answer_are_described(document: dict[str, Any]) -> None:
    operation = _operation(document, "post", "/v1/decide")
    assert operation is not None
    schemas = document["components"]["schemas"]

    def resolve(schema: dict[str, Any]) -> dict[str, Any]:
        ref = schema.get("$ref")
        return schemas[ref.rsplit("/", 1)[1]] if ref else schema

    request = resolve(operation["requestBody"]["content"]["application/json"]["schema"])
    assert set(request["properties"]) >= {"customer_id", "channel", "context", "candidates", "slots", "request_id",
                                          "defer_activation"}
    assert set(request["required"]) == {"customer_id", "channel"}
    answer = resolve(operation["responses"]["200"]["content"]["application/json"]["schema"])
    assert set(answer["properties"]) >= {"decision_id", "customer_id", "channel", "actions", "ranking", "excluded",
                                         "policy", "created_at"}


@pytest.mark.parametrize("path", ["/health", "/metrics"])
def test_public_paths_are_documented_as_needing_no_key(document: dict[str, Any], path: str) -> None:
    operation = _operation(document, "get", path)
    assert operation is not None
    security = operation.get("security", document.get("security", []))
    assert security == [] or {} in security, security


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def test_maps_are_described_as_objects(document: dict[str, Any]) -> None:
    """Litestar described a dict with a size limit as an array: clients generated from the document sent lists."""
    schemas = document["components"]["schemas"]
    for model, field in (("Action", "attributes"), ("EventType", "properties")):
        described = schemas[model]["properties"][field]
        assert described["type"] == "object" and described["maxProperties"] == 256, described
    assert [s for s in _walk(document) if s.get("type") == "array" and "maxLength" in s] == []


def test_every_problem_503_declares_retry_after_and_the_document_lists_itself(document: dict[str, Any]) -> None:
    unavailable = [(path, method, operation["responses"]["503"]) for path, item in document["paths"].items()
                   for method, operation in item.items() if "503" in operation.get("responses", {})]
    problems = [(path, method, answer) for path, method, answer in unavailable
                if "application/problem+json" in answer["content"]]
    assert len(problems) >= 10
    assert [(path, method) for path, method, answer in problems
            if "Retry-After" not in answer.get("headers", {})] == []
    assert "get" in document["paths"]["/schema/openapi.json"]


def test_every_answer_fits_the_shape_the_document_gives_it(client: Client, document: dict[str, Any]) -> None:
    """The answers routes build as dicts (customers, the catalog, health) have their shapes documented: each real
    answer is validated against its operation's schema."""
    decision = decide(client, "c-1", context={"cart_value": 30.0})
    send_events(client, {"customer_id": "c-1", "type": "page_view", "properties": {"page": "home"}})
    attrs = {"category": "discount", "value": 5.0, "tags": ["a"], "new": True, "count": 2}
    calls = [
        ("get", "/v1/customers/c-1", None, ANALYST, "200"),
        ("get", "/v1/actions", None, ANALYST, "200"),
        ("get", "/v1/actions/offer-10pct", None, ANALYST, "200"),
        ("put", "/v1/actions/new-one", {"channels": ["web"], "attributes": attrs}, ADMIN, "201"),
        ("put", "/v1/actions/new-one", {"channels": ["web", "app"], "attributes": attrs}, ADMIN, "200"),
        ("get", "/v1/policies", None, ANALYST, "200"),
        ("get", "/v1/policies/web-offers", None, ANALYST, "200"),
        ("put", "/v1/policies/new-policy", {"channels": ["sms"]}, ADMIN, "201"),
        ("get", "/v1/event-types", None, ANALYST, "200"),
        ("put", "/v1/event-types/signup", {"properties": {"plan": "string"}, "required": ["plan"]}, ADMIN, "201"),
        ("get", "/health", None, {}, "200"),
        ("get", f"/v1/decisions/{decision['decision_id']}", None, ANALYST, "200"),
    ]
    for method, path, body, headers, status in calls:
        response = client.request(method.upper(), path, json=body, headers=headers)
        assert str(response.status_code) == status, (path, response.text)
        operation = next(item[method] for documented, item in document["paths"].items()
                         if re.fullmatch(re.sub(r"\{[^}]*\}", "[^/]+", documented), path))
        schema = operation["responses"][status]["content"]["application/json"]["schema"]
        assert schema != {"type": "object", "additionalProperties": {}}, f"{method} {path}: a shape is not described"
        validator = jsonschema_rs.Draft202012Validator({**schema, "components": document["components"]})
        errors = [error.message for error in validator.iter_errors(response.json())]
        assert errors == [], (method, path, sorted(set(errors)))


def test_bounds_of_zero_are_kept(document: dict[str, Any]) -> None:
    """Litestar drops `ge=0` (a falsy bound) from the document: `epsilon` would have looked unbounded below."""
    assert document["components"]["schemas"]["Learner"]["properties"]["epsilon"]["minimum"] == 0.0


@pytest.mark.parametrize("page", ["/schema/swagger", "/schema/redoc", "/schema/openapi.yaml"])
def test_every_rendering_shows_the_completed_document_even_first(client: Client, page: str) -> None:
    """The HTML pages embed the document: served first by a worker, they showed it before it was completed."""
    response = client.get(page)
    assert response.status_code == 200
    assert "Retry-After" in response.text and "oneOf" not in response.text
