"""Assertions and calls shared by the HTTP contract tests (API.md is the source of truth for all of them)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from httpx import Response
from litestar import Litestar
from litestar.testing import TestClient

from tests.conftest import ANALYST, CHANNEL

AppFactory = Callable[..., Litestar]
Client = TestClient[Litestar]
PROBLEM_JSON = "application/problem+json"


def _segments(path: str) -> list[str]:
    return [s for s in re.sub(r"\[(\d+)\]", r".\1", path).split(".") if s]


def names_field(reported: str, expected: str) -> bool:
    """Whether an error's `field` names `expected`: the same path, or one that contains it.

    >>> names_field("[1].type", "type"), names_field("properties.amount", "amount"), names_field("body", "value")
    (True, True, False)
    """
    want, got = _segments(expected), _segments(reported)
    return any(got[i : i + len(want)] == want for i in range(len(got) - len(want) + 1))


def assert_problem(response: Response, status: int, field: str | None = None) -> dict[str, Any]:
    """An RFC 9457 problem with `status`; for a 422, an `errors` list that names `field` when given."""
    assert response.status_code == status, response.text[:1000]
    assert response.headers["content-type"].split(";")[0].strip() == PROBLEM_JSON, response.headers
    body = response.json()
    assert {"type", "title", "status", "detail"} <= body.keys(), body
    assert body["status"] == status
    assert isinstance(body["type"], str) and body["type"]
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    assert "Traceback" not in body["detail"]
    if status == 422:
        errors = body.get("errors")
        assert isinstance(errors, list) and errors, body
        for error in errors:
            assert set(error) == {"field", "message"}, error
            assert isinstance(error["field"], str) and isinstance(error["message"], str) and error["message"]
        if field is not None:
            fields = [e["field"] for e in errors]
            assert any(names_field(f, field) for f in fields), f"no error names {field!r}: {fields}"
    return body


def decide(client: Client, customer_id: str = "c-1", channel: str = "web", headers: dict[str, str] = CHANNEL,
           **body: Any) -> dict[str, Any]:
    """A decide call that must succeed; returns the decision."""
    response = client.post("/v1/decide", json={"customer_id": customer_id, "channel": channel, **body},
                           headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    decision: dict[str, Any] = response.json()
    return decision


def send_events(client: Client, events: dict[str, Any] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An events call that must be accepted; returns the per-event answers."""
    response = client.post("/v1/events", json=events, headers=CHANNEL)
    assert response.status_code == 202, response.text
    answers: list[dict[str, Any]] = response.json()
    return answers


def logged_decision(client: Client, decision_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/decisions/{decision_id}", headers=ANALYST)
    assert response.status_code == 200, response.text
    logged: dict[str, Any] = response.json()
    return logged


def rewards_of(client: Client, decision_id: str) -> list[dict[str, Any]]:
    rewards: list[dict[str, Any]] = logged_decision(client, decision_id)["rewards"]
    return rewards


def decision_count(app: Litestar) -> int:
    count: int = app.state.runtime.store.count_decisions()
    return count


def excluded_rules(decision: dict[str, Any]) -> dict[str, str]:
    return {e["action_id"]: e["rule"] for e in decision["excluded"]}


def ranked(decision: dict[str, Any]) -> list[str]:
    return [r["action_id"] for r in decision["ranking"]]
