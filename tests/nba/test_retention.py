"""Retention on both backends: what is past its horizon goes with everything that hangs off it, and nothing a
rule, the learner or a running decision still needs goes with it."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from features.state import apply_event
from nba.catalog import Action, Budget, Cap, Policy, RewardSpec
from nba.clock import ManualClock, SystemClock
from nba.decide import DecideRequest, DecisionEngine
from nba.errors import DecisionNotFound
from nba.store import Store
from nba.store import schema as t
from nba.store.retention import Horizons, prune
from nba.types import Decision, Event

KEEP = timedelta(days=90)
NO_COUNTERS = timedelta(0)


class NoModel:
    def scorer(self, name: str, version: int, policy: Policy) -> None:
        return None


@pytest.fixture
def now_clock() -> ManualClock:
    """Decision ids carry the wall clock's time: the test clock starts there so that both agree."""
    return ManualClock(SystemClock().now())


def _setup(store: Store, clock: ManualClock, actions: dict[str, Action], window: str = "1h") -> DecisionEngine:
    for action_id, action in actions.items():
        store.put_action(action_id, action, clock.now())
    store.put_policy("p", Policy(channels=["web"], reward=RewardSpec(window=window)), clock.now())
    return DecisionEngine(store, store.load_catalog, NoModel(), clock, rng=random.Random(0))


def _decide(engine: DecisionEngine, customer: str = "c1", **kwargs: Any) -> Decision:
    return engine.decide(DecideRequest(customer, "web", {}, **kwargs)).decision


def _count(store: Store, table: Any, *where: Any) -> int:
    return int(store.read(lambda c: c.execute(select(func.count()).select_from(table).where(*where)).scalar_one()))


def _prune_all(store: Store, horizons: Horizons) -> dict[str, int]:
    total: dict[str, int] = {}
    while True:
        result = prune(store, horizons, chunk=3, max_chunks=4)  # small chunks: the paging is exercised
        for kind, count in result.deleted.items():
            total[kind] = total.get(kind, 0) + count
        if not result.more:
            return total


def test_an_old_decided_decision_goes_with_its_slots_rewards_and_learning_rows(
    store: Store, now_clock: ManualClock
) -> None:
    engine = _setup(store, now_clock, {"a": Action(channels=["web"]), "b": Action(channels=["web"])})
    old = [_decide(engine, f"c{i}") for i in range(7)]
    store.add_reward(old[0].decision_id, 0, 1.0, now_clock.now())
    now_clock.advance(timedelta(hours=2))
    assert store.close_due(now_clock.now()) == 7  # learning rows for all seven (one reward, six defaults)
    assert _count(store, t.learn_queue) == 7
    now_clock.advance(KEEP - timedelta(hours=3))  # the old ones are an hour short of the retention period
    young = _decide(engine, "c-young")

    kept = _prune_all(store, Horizons.at(now_clock.now(), KEEP, NO_COUNTERS))
    assert kept["decisions"] == 0 and store.get_decision(old[0].decision_id) is not None  # not yet 90 days old

    now_clock.advance(timedelta(hours=2))
    deleted = _prune_all(store, Horizons.at(now_clock.now(), KEEP, NO_COUNTERS))
    assert deleted["decisions"] == 7
    for decision in old:
        assert store.get_decision(decision.decision_id) is None
        with pytest.raises(DecisionNotFound):
            store.add_reward(decision.decision_id, 0, 1.0, now_clock.now())
    ids = [d.decision_id for d in old]
    for table in (t.decision_slots, t.rewards, t.learn_queue):
        assert _count(store, table, table.c.decision_id.in_(ids)) == 0
    assert store.get_decision(young.decision_id) is not None  # 89 days old and open: kept
    assert _count(store, t.decision_slots, t.decision_slots.c.decision_id == young.decision_id) == 1


def test_an_open_decision_is_kept_however_old_and_goes_once_closed(store: Store, now_clock: ManualClock) -> None:
    engine = _setup(store, now_clock, {"a": Action(channels=["web"])}, window="120d")  # longer than retention
    first = _decide(engine, "c1")
    second = _decide(engine, "c2")
    now_clock.advance(KEEP + timedelta(days=1))
    assert _prune_all(store, Horizons.at(now_clock.now(), KEEP, NO_COUNTERS))["decisions"] == 0
    assert store.add_reward(first.decision_id, 0, 1.0, now_clock.now()) == "accepted"  # its window is still open
    now_clock.advance(timedelta(days=30))
    assert store.close_due(now_clock.now()) == 2
    assert _prune_all(store, Horizons.at(now_clock.now(), KEEP, NO_COUNTERS))["decisions"] == 2
    assert store.get_decision(first.decision_id) is None and store.get_decision(second.decision_id) is None


def test_the_learner_is_never_left_with_a_row_it_cannot_join(store: Store, now_clock: ManualClock) -> None:
    engine = _setup(store, now_clock, {"a": Action(channels=["web"])})
    version = store.load_catalog().policies["p"][0]
    old = [_decide(engine, f"c{i}") for i in range(5)]
    now_clock.advance(timedelta(hours=2))
    store.close_due(now_clock.now())  # five pending rows nobody learned (no learner ran)
    now_clock.advance(KEEP)
    new = _decide(engine, "c-new")
    store.add_reward(new.decision_id, 0, 1.0, now_clock.now())
    now_clock.advance(timedelta(hours=2))
    store.close_due(now_clock.now())

    _prune_all(store, Horizons.at(now_clock.now(), KEEP, NO_COUNTERS))
    # With a limit of one, an orphaned first row would be all the learner ever got back.
    examples = store.unlearned_examples("p", version, set(), limit=1)
    assert [e.decision_id for e in examples] == [new.decision_id]
    assert _count(store, t.learn_queue, t.learn_queue.c.decision_id.in_([d.decision_id for d in old])) == 0


def test_contacts_stay_while_a_cap_counts_them_even_past_retention(store: Store, now_clock: ManualClock) -> None:
    long_cap = Cap(per="customer", limit=1, window="120d")
    engine = _setup(store, now_clock, {"a": Action(channels=["web"], caps=[long_cap])})
    first = _decide(engine, "c1")
    assert [c.action_id for c in first.actions] == ["a"]
    now_clock.advance(timedelta(hours=2))
    store.close_due(now_clock.now())
    now_clock.advance(KEEP + timedelta(days=10))
    window = timedelta(days=120)

    deleted = _prune_all(store, Horizons.at(now_clock.now(), KEEP, window))
    assert deleted["decisions"] == 1 and deleted["contacts"] == 0  # the log goes, the cap's count stays
    assert _decide(engine, "c1").actions == []  # still capped: 100 days ago is within 120

    now_clock.advance(timedelta(days=25))
    assert _prune_all(store, Horizons.at(now_clock.now(), KEEP, window))["contacts"] == 1  # the first contact
    assert _count(store, t.contacts) == 0  # the capped decide above offered nothing, so made no contact
    assert [c.action_id for c in _decide(engine, "c1").actions] == ["a"]


def test_contacts_of_cap_free_actions_go_with_retention(store: Store, now_clock: ManualClock) -> None:
    engine = _setup(store, now_clock, {"a": Action(channels=["web"])})
    for i in range(8):
        _decide(engine, f"c{i}")
    now_clock.advance(KEEP - timedelta(seconds=1))
    young = _decide(engine, "c-young")
    now_clock.advance(timedelta(seconds=2))
    assert _prune_all(store, Horizons.at(now_clock.now(), KEEP, NO_COUNTERS))["contacts"] == 8
    remaining = store.read(lambda c: c.execute(select(t.contacts.c.decision_id)).scalars().all())
    assert remaining == [young.decision_id]


def test_old_events_idempotency_keys_and_budget_windows_go_but_customer_state_stays(
    store: Store, now_clock: ManualClock
) -> None:
    engine = _setup(store, now_clock, {"a": Action(channels=["web"], budget=Budget(limit=100, window="1d"))})
    store.ingest_events([Event("e-old", "c1", "profile_updated", now_clock.now(), {"tier": "gold"})], apply_event,
                        now_clock.now())
    keyed = _decide(engine, "c1", request_id="r-1", body_hash="h-1")
    assert _count(store, t.budget_counters) == 1
    now_clock.advance(timedelta(days=2))  # past the replay period of decide request ids (a day), not retention
    store.ingest_events([Event("e-new", "c1", "page_view", now_clock.now(), {})], apply_event, now_clock.now())
    _decide(engine, "c2", request_id="r-2", body_hash="h-2")

    first = _prune_all(store, Horizons.at(now_clock.now(), KEEP, NO_COUNTERS))
    assert (first["idempotency_keys"], first["events"], first["budget_windows"]) == (1, 0, 0)
    assert store.read(lambda c: c.execute(select(t.idempotency.c.request_id)).scalars().all()) == ["r-2"]
    assert store.get_decision(keyed.decision_id) is not None  # the decision itself is kept to retention

    now_clock.advance(KEEP - timedelta(days=1))  # "e-old" and the first day's budget window pass the horizon
    second = _prune_all(store, Horizons.at(now_clock.now(), KEEP, NO_COUNTERS))
    assert (second["events"], second["budget_windows"]) == (1, 1)
    assert store.read(lambda c: c.execute(select(t.events.c.event_id)).scalars().all()) == ["e-new"]
    state = store.load_customer("c1")
    assert state is not None and state.attributes["tier"] == "gold"  # the state is not a log


def test_nothing_of_the_log_goes_when_retention_is_off(store: Store, now_clock: ManualClock) -> None:
    engine = _setup(store, now_clock, {"a": Action(channels=["web"])})
    decision = _decide(engine, "c1", request_id="r-1", body_hash="h-1")
    store.ingest_events([Event("e-1", "c1", "page_view", now_clock.now(), {})], apply_event, now_clock.now())
    now_clock.advance(timedelta(hours=2))
    store.close_due(now_clock.now())
    now_clock.advance(timedelta(days=400))
    deleted = _prune_all(store, Horizons.at(now_clock.now(), None, NO_COUNTERS))
    assert deleted == {"decisions": 0, "contacts": 0, "events": 0, "idempotency_keys": 1, "budget_windows": 0}
    assert store.get_decision(decision.decision_id) is not None
    assert _count(store, t.events) == 1 and _count(store, t.contacts) == 1
