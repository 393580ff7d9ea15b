"""The catalog across restarts and processes: `NBA_CATALOG` is applied when its content is new to the store (never
over the admin API's later changes), and a change one process answered is what another process's next request sees."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from litestar.testing import TestClient
from pydantic import ValidationError

from nba.errors import CatalogChanged, Conflict, InvalidInput
from nba.store import schema as t
from serving.problems import domain_error
from tests.conftest import ADMIN, ANALYST, CHANNEL, DEMO_CATALOG
from tests.serving.helpers import AppFactory, assert_problem, decide, excluded_rules


def _demo() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(DEMO_CATALOG.read_text())
    return loaded


def test_a_restart_with_the_same_file_keeps_what_the_admin_api_changed(make_app: AppFactory) -> None:
    """A deactivated action stayed deactivated only until the next start (or a worker's respawn), which applied
    the file over it: the action was offered again."""
    with TestClient(make_app()) as client:
        body = client.get("/v1/actions/offer-10pct", headers=ANALYST).json()
        body.pop("action_id")
        assert client.put("/v1/actions/offer-10pct", json={**body, "active": False}, headers=ADMIN).status_code == 200
    with TestClient(make_app()) as client:  # the same store, the same file
        assert client.get("/v1/actions/offer-10pct", headers=ANALYST).json()["active"] is False
        assert excluded_rules(decide(client, candidates=["offer-10pct"])) == {"offer-10pct": "inactive"}


def test_a_restart_after_moving_a_channel_to_a_new_policy_starts(make_app: AppFactory) -> None:
    """Applying the file again put `app` back on web-offers, which another policy now served: the start failed."""
    with TestClient(make_app()) as client:
        assert client.put("/v1/policies/web-offers", json={"channels": ["web"]}, headers=ADMIN).status_code == 200
        assert client.put("/v1/policies/app-offers", json={"channels": ["app"]}, headers=ADMIN).status_code == 201
    with TestClient(make_app()) as client:
        assert decide(client, channel="app")["policy"]["name"] == "app-offers"


def test_a_changed_file_is_applied_at_the_next_start(make_app: AppFactory) -> None:
    catalog = _demo()
    with TestClient(make_app(catalog)) as client:
        assert client.get("/v1/actions/free-shipping", headers=ANALYST).json()["attributes"]["value"] == 5.0
    catalog["actions"]["free-shipping"]["attributes"]["value"] = 6.0
    catalog["actions"]["free-shipping"]["active"] = False
    with TestClient(make_app(catalog)) as client:
        action = client.get("/v1/actions/free-shipping", headers=ANALYST).json()
        assert action["attributes"]["value"] == 6.0 and action["active"] is False


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda c: c["actions"]["free-shipping"].update(eligibility="1 + 2"), ValidationError),
        (lambda c: c["actions"]["free-shipping"].update(eligibility="nosuchfn(customer.age)"), ValidationError),
        (lambda c: c["actions"]["free-shipping"].update(channels=["web", "web"]), ValidationError),
        (lambda c: c["policies"]["email-offers"].update(learner={"vw_args": "-f /tmp/model.vw"}), InvalidInput),
    ],
    ids=["constant-rule", "unknown-function", "repeated-channel", "learner-writing-files"],
)
def test_a_changed_file_is_validated_as_the_admin_api_validates(make_app: AppFactory, change: Any,
                                                                  error: type[Exception]) -> None:
    """The file is an operator's input as much as an admin request: what the API refuses stops the start."""
    catalog = _demo()
    change(catalog)
    with pytest.raises(error):
        make_app(catalog)


def test_a_changed_file_that_conflicts_with_the_store_stops_the_start(make_app: AppFactory) -> None:
    with TestClient(make_app()) as client:
        assert client.put("/v1/policies/web-offers", json={"channels": ["web"]}, headers=ADMIN).status_code == 200
        assert client.put("/v1/policies/app-offers", json={"channels": ["app"]}, headers=ADMIN).status_code == 201
    catalog = _demo()
    catalog["policies"]["web-offers"]["reward"]["window"] = "2h"  # changed: applied, and `app` is taken
    with pytest.raises(Conflict, match="app"):
        make_app(catalog)


def _without_maintenance(client: TestClient[Any]) -> None:
    """Stop the process's background catalog refresh: what it sees is only what its requests make it read."""
    runtime = client.app.state.runtime
    runtime._stop.set()
    if runtime._thread is not None:
        runtime._thread.join(timeout=30)


def test_a_catalog_change_answered_by_one_process_is_seen_by_the_next_request_to_another(
    make_app: AppFactory,
) -> None:
    """Two processes on one store (as two workers): B has not refreshed its catalog since A changed it, and
    answered 422/404 for what A had just created, and took an event A's new schema refuses."""
    with TestClient(make_app()) as a, TestClient(make_app()) as b:
        _without_maintenance(b)
        assert a.put("/v1/actions/newsletter", json={"channels": ["web", "sms"]}, headers=ADMIN).status_code == 201
        assert b.get("/v1/actions/newsletter", headers=ANALYST).status_code == 200
        assert decide(b, candidates=["newsletter"])["actions"][0]["action_id"] == "newsletter"

        assert a.put("/v1/policies/sms-offers", json={"channels": ["sms"]}, headers=ADMIN).status_code == 201
        assert decide(b, channel="sms")["policy"]["name"] == "sms-offers"

        assert a.put("/v1/event-types/survey_answered", json={"properties": {"score": "integer"}},
                     headers=ADMIN).status_code == 201
        event = {"customer_id": "c-1", "type": "survey_answered", "properties": {"score": 4}}
        assert b.post("/v1/events", json=event, headers=CHANNEL).status_code == 202

        assert a.put("/v1/event-types/survey_answered", json={"properties": {"score": "integer"},
                                                              "required": ["score"]}, headers=ADMIN).status_code == 200
        response = b.post("/v1/events", json={"customer_id": "c-1", "type": "survey_answered"}, headers=CHANNEL)
        assert_problem(response, 422, "properties.score")


def test_a_catalog_that_keeps_changing_under_a_request_is_a_503_to_retry() -> None:
    """After its attempts on ever newer catalogs, a decide (or an events request) gives up: the request was fine,
    so not a 400 but a 503 with Retry-After."""
    response = domain_error(Any, CatalogChanged("the catalog changed during the decision"))
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"


def test_a_store_from_before_catalog_digests_keeps_its_catalog(make_app: AppFactory, store_url: str) -> None:
    """Such a store applied the file at every start; the first start after the upgrade counts it as applied
    rather than apply it over what the admin API changed."""
    with TestClient(make_app()) as client:
        assert client.put("/v1/policies/web-offers", json={"channels": ["web"]}, headers=ADMIN).status_code == 200
        assert client.put("/v1/policies/app-offers", json={"channels": ["app"]}, headers=ADMIN).status_code == 201
        client.app.state.runtime.store.write(lambda c: c.execute(
            t.meta_kv.delete().where(t.meta_kv.c.key == "catalog_file_digest")))
    with TestClient(make_app()) as client:
        assert decide(client, channel="app")["policy"]["name"] == "app-offers"


def test_a_file_that_moves_a_channel_between_policies_applies_whatever_their_order(make_app: AppFactory) -> None:
    catalog = _demo()
    with TestClient(make_app(catalog)):
        pass
    catalog["policies"]["web-offers"]["channels"] = ["web"]
    catalog["policies"] = {"app-offers": {"channels": ["app"]}, **catalog["policies"]}  # listed first
    with TestClient(make_app(catalog)) as client:
        assert decide(client, channel="app")["policy"]["name"] == "app-offers"


def test_reordering_a_files_channels_is_no_change(make_app: AppFactory) -> None:
    catalog = _demo()
    with TestClient(make_app(catalog)) as client:
        body = client.get("/v1/actions/offer-10pct", headers=ANALYST).json()
        body.pop("action_id")
        assert client.put("/v1/actions/offer-10pct", json={**body, "active": False}, headers=ADMIN).status_code == 200
    catalog["policies"]["web-offers"]["channels"].reverse()
    with TestClient(make_app(catalog)) as client:
        assert client.get("/v1/actions/offer-10pct", headers=ANALYST).json()["active"] is False


def test_events_are_not_held_up_by_changes_to_actions_or_policies(make_app: AppFactory) -> None:
    """Only the event types validate events: another process saving actions does not send them round again."""
    with TestClient(make_app()) as a, TestClient(make_app()) as b:
        _without_maintenance(b)
        runtime = b.app.state.runtime
        validated_on = runtime.catalog().version
        assert a.put("/v1/actions/newsletter", json={"channels": ["web"]}, headers=ADMIN).status_code == 201
        refreshes_before = runtime.catalog().version
        assert b.post("/v1/events", json={"customer_id": "c-1", "type": "page_view"}, headers=CHANNEL).status_code \
            == 202
        assert runtime.catalog().version == refreshes_before == validated_on  # committed on the first attempt


def test_health_shows_the_models_of_the_policies_current_versions(make_app: AppFactory) -> None:
    """A version an edit replaced no longer serves: its model's status (healthy or not) is not the service's."""
    with TestClient(make_app()) as client:
        decide(client)  # web-offers v1 serves
        body = {"channels": ["web", "app"], "reward": {"window": "2h"}}
        assert client.put("/v1/policies/web-offers", json=body, headers=ADMIN).status_code == 200
        decide(client)  # v2 serves
        models = client.get("/health").json()["models"]
        assert sorted((m["policy"], m["version"]) for m in models) == [("email-offers", "1"), ("web-offers", "2")]
