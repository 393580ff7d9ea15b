"""`GET /schema/openapi.json` (no auth) describes every route of API.md that this build serves."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.serving.helpers import Client

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
