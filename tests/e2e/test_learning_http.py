"""Acceptance 3 and 4 over HTTP: logged propensities are the real sampling probabilities, and the online
policy learns the best action per segment of a simulated population while a uniform policy does not."""

from __future__ import annotations

import math
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from scipy.stats import chisquare

from tests.conftest import CHANNEL
from tests.e2e.test_learner_process import _until
from training.simulator import SegmentSimulator

pytestmark = pytest.mark.e2e


def _catalog(sim: SegmentSimulator, learner: dict[str, Any]) -> dict[str, Any]:
    return {
        "actions": {a: {"channels": ["web", "uni"], "attributes": sim.action_attributes(a)} for a in sim.action_ids},
        "policies": {
            "learning": {"channels": ["web"], "learner": learner,
                         "reward": {"window": "1h", "aggregation": "first", "default": 0.0}},
            "uniform": {"channels": ["uni"], "mode": "fallback"},
        },
    }


def _round(client: httpx.Client, sim: SegmentSimulator, channel: str) -> tuple[dict[str, Any], bool]:
    customer = sim.customer()
    response = client.post("/v1/decide", headers=CHANNEL,
                           json={"customer_id": customer.customer_id, "channel": channel, "context": customer.context})
    assert response.status_code == 200, response.text
    answer = response.json()
    chosen = answer["actions"][0]["action_id"]
    reward = sim.reward(customer, chosen)
    posted = client.post(f"/v1/decisions/{answer['decision_id']}/reward", json={"value": reward}, headers=CHANNEL)
    assert posted.status_code == 202 and posted.json()["status"] == "accepted", posted.text
    return answer, chosen == sim.best_action(customer.segment)


def _learned(client: httpx.Client, policy: str) -> int:
    models = {m["policy"]: m for m in client.get("/health").json()["models"]}
    return int(models[policy]["examples_learned"]) if policy in models else 0


def test_online_policy_learns_best_action_per_segment(start_server: Any) -> None:
    sim = SegmentSimulator(segments=3, actions=4, seed=11)
    server = start_server(_catalog(sim, {}))  # the documented default learner
    with httpx.Client(base_url=server.url, timeout=30) as client, ThreadPoolExecutor(max_workers=4) as pool:
        learned = [best for _, best in pool.map(lambda _: _round(client, sim, "web"), range(4000))]
        # The learner follows rewards asynchronously, and lags when the test shares the machine (a run beside
        # another test worker measured 0.784 against 0.98 alone): the last 1,000 decisions are made once it has
        # learned most of the first 4,000 rewards, so they measure what it learned, not how far behind it is.
        _until(lambda: _learned(client, "learning") >= 3500, "the learner to learn 3,500 of 4,000 rewards")
        learned += [best for _, best in pool.map(lambda _: _round(client, sim, "web"), range(1000))]
        uniform = [best for _, best in pool.map(lambda _: _round(client, sim, "uni"), range(2000))]
        health = client.get("/health").json()
    share_learned = sum(learned[-1000:]) / 1000
    share_uniform = sum(uniform) / len(uniform)
    print(f"best-action share: learning {share_learned:.3f} (last 1,000 of 5,000), uniform {share_uniform:.3f}")
    assert share_learned >= 0.80, f"best-action share in the last 1,000 decisions: {share_learned:.3f}"
    # Chance is 1/4; 2,000 uniform draws have a standard deviation of about 0.01.
    assert abs(share_uniform - 0.25) < 0.05, share_uniform
    models = {m["policy"]: m for m in health["models"]}
    assert models["learning"]["examples_learned"] > 0


def test_logged_propensities_match_empirical_choices(start_server: Any) -> None:
    sim = SegmentSimulator(segments=1, actions=4, seed=3)
    server = start_server(_catalog(sim, {"exploration": "epsilon", "epsilon": 0.2}))
    with httpx.Client(base_url=server.url, timeout=30) as client, ThreadPoolExecutor(max_workers=4) as pool:
        answers = [a for a, _ in pool.map(lambda _: _round(client, sim, "web"), range(3000))]
    expected: Counter[str] = Counter()
    observed: Counter[str] = Counter()
    for answer in answers:
        ranking = {r["action_id"]: r["probability"] for r in answer["ranking"]}
        assert math.isclose(sum(ranking.values()), 1.0, abs_tol=1e-6)
        chosen = answer["actions"][0]
        assert math.isclose(chosen["probability"], ranking[chosen["action_id"]], rel_tol=1e-9)
        assert all(p >= 0.2 / 4 - 1e-6 for p in ranking.values())  # epsilon keeps every action explored
        for action_id, probability in ranking.items():
            expected[action_id] += probability
        observed[chosen["action_id"]] += 1
    ids = sorted(expected)
    statistic, p_value = chisquare([observed[a] for a in ids], [expected[a] for a in ids])
    assert p_value > 0.001, (statistic, dict(observed), dict(expected))
