"""Acceptance 5: SIGKILL while clients decide; after restart every answered decision and accepted reward is in
the log exactly once, and the model from the last snapshot loads."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from nba.store import schema as t
from tests.conftest import ANALYST, CHANNEL
from training.simulator import SegmentSimulator

pytestmark = pytest.mark.e2e


def _worker(url: str, sim: SegmentSimulator, answered: list[str], rewarded: list[str], stop: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=10) as client:
        while not stop.is_set():
            customer = sim.customer()
            try:
                response = client.post("/v1/decide", headers=CHANNEL, json={
                    "customer_id": customer.customer_id, "channel": "web", "context": customer.context})
                if response.status_code != 200:
                    continue
                decision_id = response.json()["decision_id"]
                answered.append(decision_id)
                posted = client.post(f"/v1/decisions/{decision_id}/reward", headers=CHANNEL,
                                     json={"value": sim.reward(customer, response.json()["actions"][0]["action_id"])})
                if posted.status_code == 202:
                    rewarded.append(decision_id)
            except httpx.TransportError:
                return  # the server is gone


def _count(engine: Any, table: Any, column: Any, ids: list[str]) -> int:
    total = 0
    with engine.connect() as conn:
        for start in range(0, len(ids), 500):
            total += conn.execute(
                select(func.count()).select_from(table).where(column.in_(ids[start:start + 500]))
            ).scalar_one()
    return total


def test_sigkill_loses_no_answered_decision_and_model_reloads(start_server: Any, tmp_path: Path) -> None:
    sim = SegmentSimulator(seed=5)
    catalog = {
        "actions": {a: {"channels": ["web"], "attributes": sim.action_attributes(a)} for a in sim.action_ids},
        "policies": {"web": {"channels": ["web"], "reward": {"window": "1h", "aggregation": "first"}}},
    }
    database = f"sqlite:///{tmp_path / 'nba.db'}"
    server = start_server(catalog, database_url=database, NBA_SNAPSHOT_SECONDS="0.2")
    engine = create_engine(database)
    answered: list[str] = []
    rewarded: list[str] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_worker, args=(server.url, SegmentSimulator(seed=i), answered, rewarded, stop))
               for i in range(8)]
    for thread in threads:
        thread.start()
    snapshot_before = 0
    # Run until enough decisions were answered and the learner has snapshotted at least once.
    with engine.connect() as conn:
        while len(answered) < 600 or not snapshot_before:
            snapshot_before = conn.execute(select(func.max(t.model_snapshots.c.id))).scalar() or 0
            stop.wait(0.05)
    server.kill()  # SIGKILL while the 8 clients are mid-request
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    answered_ids, rewarded_ids = list(answered), list(rewarded)

    assert _count(engine, t.decisions, t.decisions.c.decision_id, answered_ids) == len(set(answered_ids))
    assert len(set(answered_ids)) == len(answered_ids)
    accepted_rewards = _count(engine, t.rewards, t.rewards.c.decision_id, rewarded_ids)
    assert accepted_rewards == len(rewarded_ids)  # exactly once each: none lost, none duplicated

    restarted = start_server(catalog, database_url=database, NBA_SNAPSHOT_SECONDS="0.2")
    with httpx.Client(base_url=restarted.url, timeout=10) as client:
        for decision_id in answered_ids[-20:]:
            response = client.get(f"/v1/decisions/{decision_id}", headers=ANALYST)
            assert response.status_code == 200
        # Deciding loads the policy's model; health then reports which snapshot it came from.
        after = client.post("/v1/decide", headers=CHANNEL, json={"customer_id": "after", "channel": "web"})
        assert after.status_code == 200
        health = client.get("/health").json()
    model = next(m for m in health["models"] if m["policy"] == "web")
    assert model["healthy"] is True
    assert model["snapshot_id"] >= snapshot_before
    assert model["examples_learned"] > 0
    engine.dispose()
