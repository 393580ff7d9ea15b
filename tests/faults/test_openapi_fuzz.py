"""Fuzz every operation in the server's own OpenAPI document with schemathesis, valid and invalid requests alike.

No request gets a 5xx; every 4xx is an RFC 9457 problem; 2xx bodies match the document. Generated values are
mostly nonsense to the domain (channels no policy serves, ids nobody made), so half of the cases are repaired
with real ids, channels and event types, so that the fuzz also reaches past validation into the store.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from litestar.testing import TestClient
from schemathesis import GenerationMode
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from nba.catalog import load_catalog_file
from nba.ids import NAME_REGEX
from serving.runtime import Runtime
from serving.settings import Settings
from tests.conftest import ADMIN, ANALYST, CHANNEL, DEMO_CATALOG, KEYS
from tests.serving.helpers import PROBLEM_JSON
from training.service import build_app

# One xdist worker runs the whole module, so the fuzz (a module fixture) runs once.
pytestmark = pytest.mark.xdist_group("openapi-fuzz")

SEED = 20261124
MAX_EXAMPLES = 40  # per operation and generation mode: about 1,400 requests, some 15 s on two cores
DEMO: dict[str, Any] = yaml.safe_load(DEMO_CATALOG.read_text())
CHANNELS = ["web", "app", "email"]
EVENT_TYPES = [t for t, spec in DEMO["event_types"].items() if not spec.get("required")] + ["opt_in", "profile_updated"]
DECLARED = {p for spec in DEMO["event_types"].values() for p in spec.get("properties", {})} | {"channel"}
AUTH = {"admin": ADMIN, "channel": CHANNEL, "analyst": ANALYST}
# A repaired body keeps only these fields (the document declares `additionalProperties: false`, so positive cases
# carry no others anyway).
FIELDS = {
    "POST /v1/decide": {"customer_id", "channel", "context", "candidates", "slots", "request_id", "defer_activation"},
    "POST /v1/events": {"customer_id", "type", "timestamp", "properties", "event_id"},
    "POST /v1/decisions/{decision_id}/reward": {"value", "slot"},
    # Hypothesis reads the document's `$` as Python does (a trailing newline matches), the server as JSON Schema
    # does: names and durations may come out one newline too long. A random `eligibility` never compiles.
    "PUT /v1/actions/{action_id}": {"channels", "attributes", "active"},
}


@dataclass
class Exchange:
    operation: str
    mode: str
    case: Any  # schemathesis.Case
    response: httpx.Response

    @property
    def content_type(self) -> str:
        return self.response.headers.get("content-type", "").split(";")[0].strip()

    def describe(self) -> str:
        return f"{self.operation} [{self.mode}] -> {self.response.status_code}: {self.response.text[:300]}"


def _seed_data(client: TestClient[Any]) -> dict[str, list[str]]:
    """Real ids for the repaired cases: decisions (plain, deferred, multi-slot), customers, actions, names."""
    decisions = []
    for body in ({"customer_id": "c-1", "channel": "web"},
                 {"customer_id": "c-1", "channel": "web", "defer_activation": True},
                 {"customer_id": "c-2", "channel": "app", "defer_activation": True},
                 {"customer_id": "c-2", "channel": "email", "slots": 3}):
        response = client.post("/v1/decide", json=body, headers=CHANNEL)
        assert response.status_code == 200, response.text
        decisions.append(response.json()["decision_id"])
    events = [{"customer_id": "c-2", "type": "purchase", "properties": {"amount": 12.5}}]
    assert client.post("/v1/events", json=events, headers=CHANNEL).status_code == 202
    return {"decision_id": decisions, "customer_id": ["c-1", "c-2"], "action_id": list(DEMO["actions"]),
            "name": list(DEMO["policies"]), "type": list(DEMO["event_types"])}


def _reset_catalog(runtime: Runtime) -> None:
    """Undo what one operation's fuzzing did to the catalog, so the next starts from the demo catalog."""
    runtime.store.seed_catalog(load_catalog_file(DEMO_CATALOG), runtime.clock.now())
    runtime.refresh_catalog()


def _repair(case: Any, data: st.DataObject, known: dict[str, list[str]], operation: str, body: bool) -> None:
    """Swap generated values for ones the domain knows: real ids in the path, served channels, known types."""
    if operation != "PUT /v1/policies/{name}":  # a known name there would move the demo policies' channels
        for name in list(case.path_parameters or {}):
            if name in known and data.draw(st.booleans()):
                case.path_parameters[name] = data.draw(st.sampled_from(known[name]))
    if case.query and "channel" in case.query:
        case.query["channel"] = data.draw(st.sampled_from(CHANNELS))
    if not body:
        return
    items = case.body if isinstance(case.body, list) else [case.body]
    for item in items:
        if not isinstance(item, dict):
            continue
        for key in set(item) - FIELDS.get(operation, set(item)):
            del item[key]
        if "channel" in item:
            item["channel"] = data.draw(st.sampled_from(CHANNELS))
        if "candidates" in item:
            item["candidates"] = data.draw(st.none() | st.lists(st.sampled_from(known["action_id"]), min_size=1))
        if operation == "PUT /v1/actions/{action_id}":
            item["channels"] = data.draw(st.lists(st.sampled_from(CHANNELS), min_size=1, unique=True))
            if isinstance(item.get("attributes"), dict):
                item["attributes"] = {k: v for k, v in item["attributes"].items() if re.fullmatch(NAME_REGEX, k)}
        if operation == "POST /v1/events":
            item["type"] = data.draw(st.sampled_from(EVENT_TYPES))
            item.setdefault("customer_id", data.draw(st.sampled_from(known["customer_id"])))
            if isinstance(item.get("properties"), dict):  # flat values only, and none of the declared ones
                item["properties"] = {k: v for k, v in item["properties"].items() if _flat(v) and k not in DECLARED}


def _flat(value: Any) -> bool:
    """A property value an event may carry (API.md: string, number, bool or list of strings)."""
    if isinstance(value, bool | int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return len(value) <= 1024
    return isinstance(value, list) and len(value) <= 100 and all(isinstance(v, str) and len(v) <= 1024
                                                                 for v in value)


def _authorize(case: Any, data: st.DataObject) -> None:
    """Mostly the admin key (every role), sometimes a narrower role, sometimes whatever was generated."""
    choice = data.draw(st.sampled_from(["admin", "admin", "admin", "admin", "channel", "analyst", "generated"]))
    if choice != "generated":
        case.headers = {**(case.headers or {}), **AUTH[choice]}


def _fuzzer(strategy: Any, label: str, mode: GenerationMode, known: dict[str, list[str]],
            client: TestClient[Any], collected: list[Exchange]) -> Any:
    """One seeded Hypothesis run over one operation in one generation mode; every exchange is collected."""

    @seed(SEED)
    @settings(max_examples=MAX_EXAMPLES, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        case = data.draw(strategy)
        if data.draw(st.booleans()):
            _repair(case, data, known, label, body=mode is GenerationMode.POSITIVE)
        _authorize(case, data)
        request = case.as_transport_kwargs(base_url=str(client.base_url))
        request.pop("cookies", None)
        collected.append(Exchange(label, str(mode), case, client.request(**request)))

    return fuzz


@pytest.fixture(scope="module")
def exchanges(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Exchange]]:
    directory: Path = tmp_path_factory.mktemp("fuzz")
    settings_ = Settings(database_url=f"sqlite:///{directory / 'nba.db'}", api_keys=KEYS,
                         catalog=str(DEMO_CATALOG), learner=False, sweep_seconds=3600, retention_seconds=3600,
                         log_level="CRITICAL")
    app = build_app(settings_)
    collected: list[Exchange] = []
    # One client owns the app's lifespan; schemathesis only generates cases and checks answers (its own ASGI
    # transport would start a second lifespan on the same app).
    with TestClient(app) as client:
        known = _seed_data(client)
        schema = schemathesis.openapi.from_dict(client.get("/schema/openapi.json").json())
        for result in schema.get_all_operations():
            operation = result.ok()
            label = operation.label
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                fuzz = _fuzzer(operation.as_strategy(generation_mode=mode), label, mode, known, client, collected)
                try:
                    fuzz()
                except Exception as exc:  # an operation whose negative space is empty (no inputs to break)
                    if "Unsatisfiable" not in exc.__class__.__name__:
                        raise
            _reset_catalog(app.state.runtime)
    yield collected


def test_fuzz_covered_every_operation(exchanges: list[Exchange]) -> None:
    """The fuzz reached every operation, got past validation into the store, and met auth errors too."""
    statuses: dict[str, Counter[int]] = {}
    for exchange in exchanges:
        statuses.setdefault(exchange.operation, Counter())[exchange.response.status_code] += 1
    assert len(statuses) >= 18, sorted(statuses)
    # Events need a registered type, which random strings rarely hit; tests/serving covers their success path.
    reached: list[str] = []
    for operation in ("POST /v1/decide", "POST /v1/decisions/{decision_id}/reward",
                      "POST /v1/decisions/{decision_id}/activate", "GET /v1/decisions/{decision_id}",
                      "GET /v1/customers/{customer_id}", "PUT /v1/actions/{action_id}",
                      "PUT /v1/event-types/{type}", "GET /v1/customers/{customer_id}/next"):
        if any(200 <= code < 300 for code in statuses.get(operation, Counter())):
            reached.append(operation)
    # Random ids rarely name a stored decision; most operations (not necessarily all) must get past validation.
    assert len(reached) >= 5, (reached, statuses)
    seen = Counter(e.response.status_code for e in exchanges)
    assert {401, 403, 404, 422} <= set(seen), seen


def test_fuzzed_requests_never_get_a_server_error(exchanges: list[Exchange]) -> None:
    errors = [e.describe() for e in exchanges if e.response.status_code >= 500]
    assert not errors, "\n".join(errors[:10])


def test_every_4xx_is_a_problem(exchanges: list[Exchange]) -> None:
    bad = []
    for exchange in exchanges:
        status = exchange.response.status_code
        if not 400 <= status < 500:
            continue
        body = exchange.response.json() if exchange.content_type == PROBLEM_JSON else None
        ok = (
            isinstance(body, dict)
            and all(isinstance(body.get(key), str) and body[key] for key in ("type", "title", "detail"))
            and body.get("status") == status
            and "Traceback" not in body["detail"]
            and (status != 422 or (isinstance(body.get("errors"), list) and body["errors"]
                                   and all(set(e) == {"field", "message"} and isinstance(e["field"], str)
                                           and e["field"] and isinstance(e["message"], str) for e in body["errors"])))
        )
        if not ok:
            bad.append(exchange.describe())
    assert not bad, "\n".join(bad[:10])


def _violations(exchanges: list[Exchange], check: Any) -> list[str]:
    found = []
    for exchange in exchanges:
        try:
            exchange.case.validate_response(exchange.response, checks=[check])
        except (FailureGroup, Failure) as exc:  # a group of failures, one per violated check
            found.append(f"{exchange.operation} -> {exchange.response.status_code}: {str(exc).splitlines()[2:5]}")
    return found


def test_2xx_bodies_match_the_openapi_document(exchanges: list[Exchange]) -> None:
    ok = [e for e in exchanges if 200 <= e.response.status_code < 300]
    assert ok
    found = _violations(ok, response_schema_conformance) + _violations(ok, content_type_conformance)
    assert not found, "\n".join(sorted(set(found))[:10])


def test_every_status_answered_is_in_the_openapi_document(exchanges: list[Exchange]) -> None:
    found = _violations(exchanges, status_code_conformance)
    assert not found, "\n".join(sorted(set(found))[:20])
