"""A corrupt or incompatible model, at start or at hot-swap: the server keeps the last good model or falls back
to the baseline, never serves the bad one, and says so in `/health` and in its log."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import TestClient

from bandits.vw_policy import VWPolicy, model_checksum, model_fingerprint
from features.namespaces import NamespaceFeaturizer
from nba.catalog import CatalogFile
from nba.clock import ManualClock
from nba.store import Store
from tests.conftest import CHANNEL
from tests.faults.conftest import SIM, SIM_CATALOG, AppFactory, probe_context, top_action, train_snapshot
from tests.serving.helpers import decide
from training.online import OnlineLearner


def _model_trained_with_other_arguments() -> VWPolicy:
    """A sound Vowpal Wabbit model of the same problem, trained without the policy's interaction terms."""
    featurizer = NamespaceFeaturizer()
    model = VWPolicy(["--cb_explore_adf", "--quiet", "--epsilon", "0.05", "--cb_type", "mtr"])
    actions = [featurizer.action(a, SIM.action_attributes(a)) for a in SIM.action_ids]
    rng = random.Random(5)
    for _ in range(400):
        segment = f"s{rng.randrange(SIM.segments)}"
        chosen = rng.randrange(len(actions))
        reward = float(SIM.action_ids[chosen] == SIM.best_action(segment))
        model.learn(featurizer.shared(probe_context(segment), {}), actions, chosen, reward, 1 / len(actions))
    return model


# Damage done to a sound model's bytes after its learner recorded their checksum.
CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "garbage": lambda good: b"this is not a Vowpal Wabbit model",
    "empty": lambda good: b"",
    "header-damaged": lambda good: good[:8] + bytes(b ^ 0xFF for b in good[8:24]) + good[24:],
    "truncated": lambda good: good[: len(good) // 2],  # Vowpal Wabbit loads this one, with weights lost
}
KINDS = [*CORRUPTIONS, "incompatible"]
REASON = {kind: "corrupt" for kind in CORRUPTIONS} | {"incompatible": "incompatible"}


def _save_bad_snapshot(store: Store, kind: str, clock: ManualClock) -> int:
    """Write a bad snapshot newer than the good one, as a broken disk or a bad restore would leave it.

    A damaged snapshot keeps the checksum and fingerprint its learner recorded for the sound bytes. An incompatible
    one is sound and honestly labelled, as a learner running other arguments writes it; Vowpal Wabbit loads it
    without complaint, and features hashed differently would be scored with it.
    """
    good = store.latest_snapshot("web", 1)
    assert good is not None and good.checksum is not None and good.fingerprint is not None
    if kind == "incompatible":
        other = _model_trained_with_other_arguments()
        model = other.serialize()
        checksum, fingerprint = model_checksum(model), model_fingerprint(other.args)
    else:
        model, checksum, fingerprint = CORRUPTIONS[kind](good.model), good.checksum, good.fingerprint
    return store.save_snapshot("web", 1, model, good.examples + 10, [], clock.now(),
                               checksum=checksum, fingerprint=fingerprint)


def _store_holding_only_a_garbage_snapshot(database_url: str, clock: ManualClock) -> int:
    """The SIM catalog and one snapshot that is not a model at all (100 examples): nothing usable to load."""
    store = Store(database_url)
    try:
        store.seed_catalog(CatalogFile.model_validate(SIM_CATALOG), clock.now())
        return store.save_snapshot("web", 1, CORRUPTIONS["garbage"](b""), 100, [], clock.now())
    finally:
        store.close()


def _registry_errors(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if r.name == "bandits.registry" and r.levelno >= logging.ERROR]


def _says_rejected(message: str, snapshot_id: int) -> bool:
    text = message.lower()
    return any(word in text for word in ("reject", "unusable", "corrupt", "incompatible")) or str(snapshot_id) in text


@pytest.mark.parametrize("kind", KINDS)
def test_bad_model_at_start_is_never_served(
    sqlite_url: str, clock: ManualClock, make_app: AppFactory, service_log: list[logging.LogRecord], kind: str
) -> None:
    good_id = train_snapshot(sqlite_url, clock, make_app)
    store = Store(sqlite_url)
    bad_id = _save_bad_snapshot(store, kind, clock)
    store.close()
    app = make_app(sqlite_url, SIM_CATALOG)
    with TestClient(app) as client:
        decision = decide(client, "c-1", context=probe_context("s1"))
        health = client.get("/health").json()
    (model,) = health["models"]
    # The last good snapshot is loaded instead: online, and it ranks as the trained model does.
    assert decision["policy"]["mode"] == "online" and model["snapshot_id"] == good_id, (decision["policy"], model)
    assert top_action(decision)[0] == SIM.best_action("s1")
    assert _says_rejected(model["message"], bad_id) and REASON[kind] in model["message"], model
    assert any(str(bad_id) in message for message in _registry_errors(service_log)), "the log does not name it"


@pytest.mark.parametrize("kind", KINDS)
def test_bad_model_at_hot_swap_keeps_the_last_good_one(
    sqlite_url: str, clock: ManualClock, make_app: AppFactory, service_log: list[logging.LogRecord], kind: str
) -> None:
    good_id = train_snapshot(sqlite_url, clock, make_app)
    app = make_app(sqlite_url, SIM_CATALOG)
    runtime = app.state.runtime
    with TestClient(app) as client:
        before = decide(client, "c-1", context=probe_context("s1"))
        assert before["policy"]["mode"] == "online" and top_action(before)[0] == SIM.best_action("s1")
        bad_id = _save_bad_snapshot(runtime.store, kind, clock)  # as another process's learner would write it
        runtime.models.refresh(runtime.catalog().policies)  # what a worker without the learner lease runs
        after = decide(client, "c-2", context=probe_context("s1"))
        health = client.get("/health").json()
    assert after["policy"]["mode"] == "online"
    assert after["ranking"] == before["ranking"], "the serving model changed"
    (model,) = health["models"]
    assert model["healthy"] is True and model["snapshot_id"] == good_id, model
    assert _says_rejected(model["message"], bad_id) and REASON[kind] in model["message"], model
    assert any(str(bad_id) in message for message in _registry_errors(service_log)), "the log does not name it"


def test_learner_replaces_an_unusable_model_with_a_relearned_one(
    sqlite_url: str, clock: ManualClock, make_app: AppFactory
) -> None:
    _store_holding_only_a_garbage_snapshot(sqlite_url, clock)
    app = make_app(sqlite_url, SIM_CATALOG)
    runtime = app.state.runtime
    learner = OnlineLearner(runtime.store, runtime.models, runtime.featurizer, runtime.catalog, runtime.clock)
    with TestClient(app) as client:
        for index in range(30):
            decision = decide(client, f"c-{index}", context=probe_context(f"s{index % 3}"))
            assert decision["policy"]["mode"] == "fallback"
            reward = client.post(f"/v1/decisions/{decision['decision_id']}/reward", json={"value": 1.0},
                                 headers=CHANNEL)
            assert reward.status_code == 202
        assert learner.learn_pending() == 30
        learner.publish_all()
        recovered = decide(client, "c-after", context=probe_context("s0"))
        health = client.get("/health").json()
    assert recovered["policy"]["mode"] == "online"
    (model,) = health["models"]
    assert model["healthy"] is True and model["examples_learned"] == 30 and health["status"] == "ok"


def test_a_process_without_the_learner_picks_up_snapshots_and_refuses_bad_ones(
    sqlite_url: str, clock: ManualClock, make_app: AppFactory, service_log: list[logging.LogRecord]
) -> None:
    """A serving-only process (`NBA_LEARNER=false`, the learner on another host) swaps in a model the learner
    snapshots, by itself, and later refuses a bad one, keeping the good model: the server's own path, not a call
    from the test."""
    app = make_app(sqlite_url, SIM_CATALOG)  # the learner is off in these apps
    stop = threading.Event()

    def model_status(client: TestClient[Any]) -> dict[str, Any]:
        (status,) = client.get("/health").json()["models"]
        return dict(status)

    def wait_for(client: TestClient[Any], done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + 30
        while not done(status := model_status(client)):  # polling the server's progress, not timing it
            assert time.monotonic() < deadline, status
            stop.wait(0.05)
        return status

    with TestClient(app) as client:
        assert model_status(client)["snapshot_id"] == 0
        good_id = train_snapshot(sqlite_url, clock, make_app)  # as the learner elsewhere writes it
        wait_for(client, lambda status: status["snapshot_id"] == good_id)
        trained = decide(client, "c-1", context=probe_context("s1"))
        assert trained["policy"]["mode"] == "online" and top_action(trained)[0] == SIM.best_action("s1")
        bad_id = _save_bad_snapshot(app.state.runtime.store, "garbage", clock)
        status = wait_for(client, lambda status: str(bad_id) in status["message"])
        after = decide(client, "c-2", context=probe_context("s1"))
    assert status["healthy"] is True and status["snapshot_id"] == good_id, status
    assert after["ranking"] == trained["ranking"], "the serving model changed"
    assert any(str(bad_id) in message for message in _registry_errors(service_log)), "the log does not name it"


def test_bad_model_at_hot_swap_while_fallback_serves_says_fallback(
    sqlite_url: str, clock: ManualClock, make_app: AppFactory, service_log: list[logging.LogRecord]
) -> None:
    """With no usable model (fallback serving), a newer bad snapshot is refused too, and /health names it and
    says fallback still serves: not "the previous model", which does not exist."""
    _store_holding_only_a_garbage_snapshot(sqlite_url, clock)
    app = make_app(sqlite_url, SIM_CATALOG)
    runtime = app.state.runtime
    with TestClient(app) as client:
        assert decide(client, "c-1", context=probe_context("s1"))["policy"]["mode"] == "fallback"
        bad_id = runtime.store.save_snapshot("web", 1, b"", 200, [], clock.now())
        runtime.models.refresh(runtime.catalog().policies)
        after = decide(client, "c-2", context=probe_context("s1"))
        health = client.get("/health").json()
    assert after["policy"]["mode"] == "fallback"
    (model,) = health["models"]
    assert model["healthy"] is False and health["status"] == "degraded", health
    assert f"snapshot {bad_id} is unusable" in model["message"] and "serving fallback" in model["message"], model
    assert any(str(bad_id) in m and "fallback" in m for m in _registry_errors(service_log)), "the log does not say so"


@pytest.mark.e2e
def test_server_started_on_a_corrupt_model_says_so_in_health_and_log(
    start_server: Any, tmp_path: Path, clock: ManualClock
) -> None:
    database = f"sqlite:///{tmp_path / 'nba.db'}"
    bad_id = _store_holding_only_a_garbage_snapshot(database, clock)
    server = start_server(SIM_CATALOG, database_url=database)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        response = client.post("/v1/decide", headers=CHANNEL, json={
            "customer_id": "c-1", "channel": "web", "context": probe_context("s1")})
        health = client.get("/health")
    assert response.status_code == 200 and response.json()["policy"]["mode"] == "fallback"
    assert health.status_code == 200
    (model,) = health.json()["models"]
    assert model["healthy"] is False and health.json()["status"] == "degraded"
    log = server.log_path.read_text()
    assert "ERROR" in log and f"snapshot {bad_id} is unusable" in log, log[-2000:]
