"""`POST /v1/decisions/{id}/reward`: 202 `{decision_id, status}`, reward windows, defaults and aggregation.

Windows close when the test moves the clock past them and runs `runtime.sweep()` (the background sweep is off).
What a decision is learned from is read from the learner's queue (`store.pending_examples`): the learner is off, so
the queue holds every example the store has made final.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from litestar import Litestar
from sqlalchemy import update

from nba.clock import ManualClock
from nba.store import schema as t
from tests.conftest import CHANNEL
from tests.serving.helpers import Client, decide, rewards_of

WEB_WINDOW = timedelta(hours=1)
EMAIL_WINDOW = timedelta(hours=24)


def reward(client: Client, decision_id: str, value: Any, **extra: Any) -> dict[str, Any]:
    response = client.post(f"/v1/decisions/{decision_id}/reward", json={"value": value, **extra}, headers=CHANNEL)
    assert response.status_code == 202, response.text
    answer: dict[str, Any] = response.json()
    # API.md's fields, and the one added for a reward held for its decision's activation
    assert answer.keys() == {"decision_id", "status"} or answer == {
        "decision_id": decision_id, "status": "accepted", "pending_activation": True}
    assert answer["decision_id"] == decision_id
    return answer


def learned(app: Litestar, decision: dict[str, Any]) -> list[tuple[int, float]]:
    """(slot, reward) of every example the decision has been learned from, in order."""
    policy = decision["policy"]
    examples = app.state.runtime.store.pending_examples(policy["name"], int(policy["version"]), 0)
    return [(e.slot, e.reward) for e in examples if e.decision_id == decision["decision_id"]]


def close_windows(app: Litestar, clock: ManualClock, window: timedelta) -> None:
    clock.advance(window + timedelta(seconds=1))
    app.state.runtime.sweep()


def test_reward_in_the_window_is_accepted_and_listed(client: Client, clock: ManualClock) -> None:
    decision_id = decide(client)["decision_id"]
    clock.advance(timedelta(minutes=10))
    assert reward(client, decision_id, 1.0)["status"] == "accepted"
    assert reward(client, decision_id, 2, slot=0)["status"] == "accepted"
    rewards = rewards_of(client, decision_id)
    assert [(r["value"], r["slot"], r["status"]) for r in rewards] == [(1.0, 0, "accepted"), (2.0, 0, "accepted")]
    assert all(set(r) == {"value", "slot", "received_at", "status"} for r in rewards)
    assert datetime.fromisoformat(rewards[0]["received_at"]) == clock.now()


def test_reward_for_a_later_slot(client: Client) -> None:
    decision = decide(client, slots=2)
    assert len(decision["actions"]) == 2
    assert reward(client, decision["decision_id"], 0.5, slot=1)["status"] == "accepted"
    assert [(r["slot"], r["status"]) for r in rewards_of(client, decision["decision_id"])] == [(1, "accepted")]


def test_reward_after_the_window_is_late_stored_and_never_learned(
    app: Litestar, client: Client, clock: ManualClock
) -> None:
    decision = decide(client)
    clock.advance(WEB_WINDOW + timedelta(seconds=1))
    assert reward(client, decision["decision_id"], 1.0)["status"] == "late"
    app.state.runtime.sweep()
    statuses = {(r["value"], r["status"]) for r in rewards_of(client, decision["decision_id"])}
    assert (1.0, "late") in statuses
    assert learned(app, decision) == [(0, 0.0)]  # the default, not the late 1.0


def test_no_reward_when_the_window_closes_means_the_default(app: Litestar, client: Client,
                                                            clock: ManualClock) -> None:
    decision = decide(client)
    app.state.runtime.sweep()
    assert rewards_of(client, decision["decision_id"]) == []
    assert learned(app, decision) == []
    close_windows(app, clock, WEB_WINDOW)
    rewards = rewards_of(client, decision["decision_id"])
    assert [(r["value"], r["slot"], r["status"]) for r in rewards] == [(0.0, 0, "default")]
    assert learned(app, decision) == [(0, 0.0)]


def test_sum_learns_the_sum_when_the_window_closes(app: Litestar, client: Client, clock: ManualClock) -> None:
    decision = decide(client)  # web-offers: aggregation sum
    reward(client, decision["decision_id"], 1.0)
    reward(client, decision["decision_id"], 2.5)
    assert learned(app, decision) == []
    close_windows(app, clock, WEB_WINDOW)
    assert learned(app, decision) == [(0, 3.5)]
    assert "default" not in {r["status"] for r in rewards_of(client, decision["decision_id"])}


def test_first_learns_the_first_reward_at_once_and_the_second_does_not_count(
    app: Litestar, client: Client, clock: ManualClock
) -> None:
    decision = decide(client, channel="email")  # email-offers: aggregation first
    assert decision["policy"]["name"] == "email-offers"
    assert reward(client, decision["decision_id"], 1.0)["status"] == "accepted"
    assert learned(app, decision) == [(0, 1.0)]
    reward(client, decision["decision_id"], 5.0)
    assert learned(app, decision) == [(0, 1.0)]
    close_windows(app, clock, EMAIL_WINDOW)
    assert learned(app, decision) == [(0, 1.0)]
    values = [r["value"] for r in rewards_of(client, decision["decision_id"])]
    assert values == [1.0, 5.0]  # both stored; no default once the first reward is final


def test_second_reward_under_first_answers_a_documented_status(client: Client) -> None:
    """API.md: the status is `accepted` or `late`; this one is in the window."""
    decision_id = decide(client, channel="email")["decision_id"]
    reward(client, decision_id, 1.0)
    assert reward(client, decision_id, 5.0)["status"] == "accepted"


def test_deferred_decisions_window_starts_at_activation(app: Litestar, client: Client, clock: ManualClock) -> None:
    decision = decide(client, defer_activation=True)
    clock.advance(timedelta(minutes=50))
    assert client.post(f"/v1/decisions/{decision['decision_id']}/activate", headers=CHANNEL).status_code == 202
    clock.advance(timedelta(minutes=50))  # 100 minutes after deciding, 50 after activation
    app.state.runtime.sweep()
    assert reward(client, decision["decision_id"], 1.0)["status"] == "accepted"
    close_windows(app, clock, timedelta(minutes=10))
    assert learned(app, decision) == [(0, 1.0)]


def test_a_reward_sent_before_its_activation_counts_once_the_decision_is_activated(
    app: Litestar, client: Client, clock: ManualClock
) -> None:
    """A channel's reward and activation may arrive in either order: a reward before the activation is held for
    it (the answer says so) and, under `sum`, joins the rewards of the window the activation starts."""
    decision = decide(client, defer_activation=True)  # web-offers: aggregation sum
    decision_id = decision["decision_id"]
    assert reward(client, decision_id, 1.0)["pending_activation"] is True
    clock.advance(timedelta(minutes=5))
    assert client.post(f"/v1/decisions/{decision_id}/activate", headers=CHANNEL).status_code == 202
    assert reward(client, decision_id, 2.0) == {"decision_id": decision_id, "status": "accepted"}
    assert learned(app, decision) == []
    close_windows(app, clock, WEB_WINDOW)
    assert learned(app, decision) == [(0, 3.0)]
    assert [r["status"] for r in rewards_of(client, decision_id)] == ["accepted", "accepted"]


def test_a_reward_for_a_deferred_decision_never_activated_ends_late_and_unlearned(
    app: Litestar, client: Client, clock: ManualClock
) -> None:
    """Accepted while the decision may still be activated, and the answer says it waits for the activation; once
    its reservation is released the reward is listed as what it turned out to be: stored, never learned from
    (review: it stayed `accepted`; a later review: the answer gave no sign it might not be learned)."""
    decision = decide(client, defer_activation=True)
    assert reward(client, decision["decision_id"], 1.0) == {
        "decision_id": decision["decision_id"], "status": "accepted", "pending_activation": True}
    close_windows(app, clock, WEB_WINDOW)
    assert [r["status"] for r in rewards_of(client, decision["decision_id"])] == ["late"]
    assert learned(app, decision) == []


def test_a_decision_that_cannot_be_closed_is_skipped_and_reported(app: Litestar, client: Client,
                                                                  clock: ManualClock) -> None:
    good, bad = decide(client, customer_id="c-good"), decide(client, customer_id="c-bad")
    store = app.state.runtime.store
    store.write(lambda c: c.execute(
        update(t.decisions).where(t.decisions.c.decision_id == bad["decision_id"]).values(body="[]")))
    assert client.get("/health").json()["unclosable_decisions"] == 0

    close_windows(app, clock, WEB_WINDOW)
    assert learned(app, good) == [(0, 0.0)]
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "degraded" and health.json()["unclosable_decisions"] == 1
