"""The store on both backends: atomic reservations under concurrency, idempotency, outcomes and learning."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, update

from nba.catalog import Action, Budget, Cap, Policy, RewardSpec
from nba.clock import ManualClock, epoch_ms
from nba.decide import DecideRequest, DecideResult, DecisionEngine
from nba.errors import Conflict, DecisionNotFound, IdempotencyConflict, InvalidInput
from nba.store import Store
from nba.store import schema as t
from nba.store.decision_repo import ReservationFailed
from nba.store.outcome_repo import HELD
from nba.types import Decision, PolicyRef, SlotChoice

POLICY = "web-offers"
T = TypeVar("T")
CAP_1D = Cap(per="customer", limit=1, window="1d")
START = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


class NoModel:
    """A scorer provider whose learning policy is unavailable: the engine falls back to uniform."""

    def scorer(self, name: str, version: int, policy: Policy) -> None:
        return None


def _seed(
    store: Store, clock: ManualClock, actions: Mapping[str, Action], reward: RewardSpec | None = None,
    channels: tuple[str, ...] = ("web",),
) -> int:
    for action_id, action in actions.items():
        store.put_action(action_id, action, clock.now())
    version, _ = store.put_policy(
        POLICY, Policy(channels=list(channels), reward=reward or RewardSpec()), clock.now()
    )
    return version


def _engine(store: Store, clock: ManualClock, seed: int = 0) -> DecisionEngine:
    return DecisionEngine(store, store.load_catalog, NoModel(), clock, rng=random.Random(seed))


def _decide(engine: DecisionEngine, customer: str = "c1", **kwargs: Any) -> Decision:
    return engine.decide(DecideRequest(customer, kwargs.pop("channel", "web"), {}, **kwargs)).decision


def _together(n: int, fn: Callable[[int], T]) -> list[T]:
    """Run fn(0..n-1) on n threads released at the same moment by a barrier."""
    barrier = threading.Barrier(n)

    def run(i: int) -> T:
        barrier.wait()
        return fn(i)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(run, range(n)))


def _contacts(store: Store, action_id: str, customer: str | None = None) -> list[Any]:
    query = select(t.contacts).where(t.contacts.c.action_id == action_id)
    if customer is not None:
        query = query.where(t.contacts.c.customer_id == customer)
    return list(store.read(lambda c: c.execute(query.order_by(t.contacts.c.id)).all()))


def _active_contacts(store: Store, action_id: str, customer: str | None = None) -> list[Any]:
    return [r for r in _contacts(store, action_id, customer) if r.status in ("counted", "reserved")]


def _budget_used(store: Store, action_id: str) -> int:
    query = select(func.coalesce(func.sum(t.budget_counters.c.used), 0)).where(
        t.budget_counters.c.action_id == action_id
    )
    return int(store.read(lambda c: c.execute(query).scalar()))


def _learned(store: Store, version: int) -> list[tuple[str, int, float]]:
    return [(e.decision_id, e.slot, e.reward) for e in store.pending_examples(POLICY, version, 0)]


# -- caps and budgets under concurrency ---------------------------------------------------------------


def test_concurrent_decisions_for_one_customer_never_exceed_the_cap(store: Store, clock: ManualClock) -> None:
    _seed(store, clock, {"promo": Action(channels=["web"], caps=[CAP_1D], budget=Budget(limit=100, window="1d"))})
    engine = _engine(store, clock)

    decisions = _together(16, lambda i: _decide(engine, "c1"))

    served = [d for d in decisions if d.actions]
    assert len(served) == 1
    assert served[0].actions[0].action_id == "promo"
    for decision in decisions:
        if not decision.actions:
            assert [(e.action_id, e.rule) for e in decision.excluded] == [("promo", "cap:customer:1d")]
    assert len(_active_contacts(store, "promo", "c1")) == 1
    assert _budget_used(store, "promo") == 1
    assert store.count_decisions() == 16

    clock.advance(timedelta(days=1))
    assert [c.action_id for c in _decide(engine, "c1").actions] == ["promo"]


def test_concurrent_decisions_never_exceed_the_budget(store: Store, clock: ManualClock) -> None:
    _seed(store, clock, {"promo": Action(channels=["web"], budget=Budget(limit=5, window="1d"))})
    engine = _engine(store, clock)

    decisions = _together(16, lambda i: _decide(engine, f"c{i}"))

    served = [d for d in decisions if d.actions]
    assert len(served) == 5
    assert all(d.excluded == [] for d in served)
    for decision in decisions:
        if not decision.actions:
            assert [(e.action_id, e.rule) for e in decision.excluded] == [("promo", "budget:1d")]
    assert _budget_used(store, "promo") == 5
    assert sorted(r.customer_id for r in _active_contacts(store, "promo")) == sorted(d.customer_id for d in served)

    clock.advance(timedelta(days=1))  # the next fixed window has its own budget
    assert _decide(engine, "c-next").actions[0].action_id == "promo"


def test_concurrent_decisions_respect_cap_and_budget_together(store: Store, clock: ManualClock) -> None:
    _seed(store, clock, {"promo": Action(channels=["web"], caps=[CAP_1D], budget=Budget(limit=3, window="1d"))})
    engine = _engine(store, clock)

    decisions = _together(16, lambda i: _decide(engine, f"c{i % 4}"))

    served = [d for d in decisions if d.actions]
    assert len(served) == 3
    assert len({d.customer_id for d in served}) == 3  # nobody over the per-customer cap
    rules = {e.rule for d in decisions for e in d.excluded}
    assert rules <= {"cap:customer:1d", "budget:1d"}
    assert "budget:1d" in rules
    assert _budget_used(store, "promo") == 3
    assert len(_active_contacts(store, "promo")) == 3


def test_the_write_transaction_rechecks_counters(store: Store, clock: ManualClock) -> None:
    """A decision drafted on stale counters is refused and leaves nothing behind."""
    action = Action(channels=["web"], caps=[CAP_1D], budget=Budget(limit=10, window="1d"))
    _seed(store, clock, {"promo": action})
    _decide(_engine(store, clock), "c1")

    stale = Decision(
        decision_id="d-stale", customer_id="c1", channel="web", policy=PolicyRef(POLICY, 1, "fallback"),
        created_at=clock.now(), actions=[SlotChoice(0, "promo", 1.0)], ranking=[("promo", 1.0)], excluded=[],
        context={}, customer={}, action_attributes={"promo": {}}, request_id="r-1",
    )
    with pytest.raises(ReservationFailed) as failed:
        store.run(store.decision_write(stale, {"promo": action}, RewardSpec(), timedelta(days=1), "hash"))
    assert failed.value.exclusion.rule == "cap:customer:1d"
    assert store.get_decision("d-stale") is None
    assert store.find_idempotent("web", "r-1", clock.now()) is None
    assert _budget_used(store, "promo") == 1
    assert len(_contacts(store, "promo")) == 1


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    limit=st.integers(min_value=1, max_value=3),
    steps=st.lists(st.integers(min_value=0, max_value=12 * 60), min_size=1, max_size=12),
)
def test_a_capped_action_is_never_over_its_cap_in_the_store(store: Store, limit: int, steps: list[int]) -> None:
    customer = f"c-{uuid.uuid4().hex[:10]}"
    clock = ManualClock(START)  # a fresh clock per example
    action_id = f"capped-{limit}"
    action = Action(channels=["web"], caps=[Cap(per="customer", limit=limit, window="1d")])
    store.put_action(action_id, action, clock.now())
    store.put_policy(POLICY, Policy(channels=["web"]), clock.now())
    engine = _engine(store, clock)
    for minutes in steps:
        clock.advance(timedelta(minutes=minutes))
        decision = _decide(engine, customer, candidates=[action_id])
        if not decision.actions:
            assert decision.excluded[0].rule == "cap:customer:1d"
    times = [r.at_ms for r in _active_contacts(store, action_id, customer)]
    window_ms = 86_400_000
    for at in times:
        assert sum(1 for other in times if at - window_ms < other <= at) <= limit
    assert len(times) >= min(limit, len(steps))


# -- idempotency --------------------------------------------------------------------------------------


def _keyed(engine: DecisionEngine, key: str, body: str, customer: str = "c1", **kwargs: Any) -> DecideResult:
    return engine.decide(DecideRequest(customer, kwargs.pop("channel", "web"), {}, request_id=key,
                                       body_hash=body, **kwargs))


def test_the_same_key_and_body_replays_the_same_decision(store: Store, clock: ManualClock) -> None:
    _seed(store, clock, {"a": Action(channels=["web"]), "b": Action(channels=["web"])})
    engine = _engine(store, clock)
    first = _keyed(engine, "r-1", "h1")
    clock.advance(timedelta(hours=23))
    again = _keyed(engine, "r-1", "h1")
    assert not first.replayed and again.replayed
    assert again.decision.decision_id == first.decision.decision_id
    assert again.decision.actions == first.decision.actions
    assert store.count_decisions() == 1


def test_the_same_key_with_another_body_is_a_conflict(store: Store, clock: ManualClock) -> None:
    _seed(store, clock, {"a": Action(channels=["web"])})
    engine = _engine(store, clock)
    _keyed(engine, "r-1", "h1")
    with pytest.raises(IdempotencyConflict) as info:
        _keyed(engine, "r-1", "h2")
    assert info.value.field == "request_id"
    assert store.count_decisions() == 1


def test_a_key_is_scoped_to_the_channel_and_expires_after_a_day(store: Store, clock: ManualClock) -> None:
    _seed(store, clock, {"a": Action(channels=["web", "app"])}, channels=("web", "app"))
    engine = _engine(store, clock)
    web = _keyed(engine, "r-1", "h1")
    app = _keyed(engine, "r-1", "h1", channel="app")
    assert not app.replayed and app.decision.decision_id != web.decision.decision_id

    clock.advance(timedelta(hours=24, milliseconds=1))
    later = _keyed(engine, "r-1", "h-other")
    assert not later.replayed and later.decision.decision_id != web.decision.decision_id
    assert store.count_decisions() == 3


def test_a_rejected_call_does_not_use_up_its_key(store: Store, clock: ManualClock) -> None:
    _seed(store, clock, {"a": Action(channels=["web"])})
    engine = _engine(store, clock)
    with pytest.raises(Exception, match="unknown candidate"):
        _keyed(engine, "r-1", "h-bad", candidates=["missing"])
    result = _keyed(engine, "r-1", "h-good")
    assert not result.replayed
    assert store.count_decisions() == 1


def test_concurrent_calls_with_one_key_log_one_decision(store: Store, clock: ManualClock) -> None:
    _seed(store, clock, {"a": Action(channels=["web"]), "b": Action(channels=["web"]), "c": Action(channels=["web"])})
    engine = _engine(store, clock)

    results = _together(16, lambda i: _keyed(engine, "r-same", "h1"))

    assert len({r.decision.decision_id for r in results}) == 1
    assert sum(1 for r in results if not r.replayed) == 1
    assert store.count_decisions() == 1


def test_two_store_processes_with_one_key_log_one_decision(store_url: str, clock: ManualClock) -> None:
    """Two writers on one database (as two server processes would be) still log one decision per key."""
    first, second = Store(store_url), Store(store_url)
    try:
        _seed(first, clock, {"promo": Action(channels=["web"], caps=[CAP_1D])})
        engines = [_engine(first, clock), _engine(second, clock)]

        keyed = _together(8, lambda i: _keyed(engines[i % 2], "r-same", "h1"))
        capped = _together(8, lambda i: _decide(engines[i % 2], "c2"))

        assert len({r.decision.decision_id for r in keyed}) == 1
        assert sum(1 for d in capped if d.actions) == 1
        assert first.count_decisions() == 1 + 8
        assert len(_active_contacts(first, "promo", "c2")) == 1
    finally:
        first.close()
        second.close()


# -- rewards ------------------------------------------------------------------------------------------


def test_sum_is_learned_when_the_window_closes_with_the_sum(store: Store, clock: ManualClock) -> None:
    version = _seed(store, clock, {"a": Action(channels=["web"])}, RewardSpec(window="1h", aggregation="sum"))
    decision = _decide(_engine(store, clock))
    clock.advance(timedelta(minutes=10))
    assert store.add_reward(decision.decision_id, 0, 0.5, clock.now()) == "accepted"
    clock.advance(timedelta(minutes=10))
    assert store.add_reward(decision.decision_id, 0, 0.25, clock.now()) == "accepted"
    assert _learned(store, version) == []

    clock.set(decision.created_at + timedelta(minutes=59, seconds=59))
    assert store.close_due(clock.now()) == 0
    assert _learned(store, version) == []

    clock.set(decision.created_at + timedelta(hours=1))
    assert store.close_due(clock.now()) == 1
    assert _learned(store, version) == [(decision.decision_id, 0, 0.75)]
    stored = store.get_decision(decision.decision_id)
    assert stored is not None and stored.state == "final"
    assert [(r["value"], r["status"]) for r in stored.rewards] == [(0.5, "accepted"), (0.25, "accepted")]
    assert store.close_due(clock.now()) == 0  # closing is done once


def test_a_sweep_closes_every_due_decision_however_many(store: Store, clock: ManualClock) -> None:
    """In transactions of `limit` decisions, until none is left: one transaction a sweep fell behind as soon as
    more decisions a second came due than it held."""
    version = _seed(store, clock, {"a": Action(channels=["web"])}, RewardSpec(window="1h", default=0.0))
    engine = _engine(store, clock)
    decisions = [_decide(engine, f"c{i}") for i in range(25)]
    clock.advance(timedelta(hours=1))
    assert store.close_due(clock.now(), limit=10) == 25
    assert sorted(_learned(store, version)) == sorted((d.decision_id, 0, 0.0) for d in decisions)
    assert store.close_due(clock.now(), limit=10) == 0
    for d in decisions[:3]:
        stored = store.get_decision(d.decision_id)
        assert stored is not None and stored.state == "final"


def test_one_round_closes_many_decisions_each_by_its_own_rewards(store: Store, clock: ManualClock) -> None:
    """A round closes its decisions together (a few statements for all of them): each still learns its own slots'
    sums or the default, stores a default reward only for its own slots without one, and the deferred ones never
    activated are released with their budget given back."""
    actions = {name: Action(channels=["web"], budget=Budget(limit=1000, window="1d")) for name in "abc"}
    version = _seed(store, clock, actions, RewardSpec(window="1h", default=-0.5))
    engine = _engine(store, clock)
    rng = random.Random(7)
    expected: list[tuple[str, int, float]] = []
    defaults: set[tuple[str, int]] = set()
    released: set[str] = set()
    for i in range(60):
        deferred = i % 6 == 5
        decision = _decide(engine, f"c{i}", slots=2, defer_activation=deferred)
        assert len(decision.actions) == 2
        if deferred and i % 12 == 11:
            released.add(decision.decision_id)  # never activated
            continue
        if deferred:
            assert store.activate(decision.decision_id, clock.now()) == "activated"
        for slot in (0, 1):
            values = [round(rng.uniform(-1, 3), 3) for _ in range(rng.choice([0, 0, 1, 2]))]
            for value in values:
                assert store.add_reward(decision.decision_id, slot, value, clock.now()) == "accepted"
            expected.append((decision.decision_id, slot, sum(values) if values else -0.5))
            if not values:
                defaults.add((decision.decision_id, slot))
    assert released and defaults and len(defaults) < len(expected)
    used = {name: _budget_used(store, name) for name in actions}

    clock.advance(timedelta(hours=2))
    assert store.close_due(clock.now(), limit=100) == 60

    learned = _learned(store, version)
    assert sorted((d, s) for d, s, _ in learned) == sorted((d, s) for d, s, _ in expected)
    assert dict(((d, s), r) for d, s, r in learned) == pytest.approx(dict(((d, s), r) for d, s, r in expected))
    stored_defaults = store.read(lambda c: c.execute(
        select(t.rewards.c.decision_id, t.rewards.c.slot, t.rewards.c.value).where(t.rewards.c.status == "default")
    ).all())
    assert {(d, s) for d, s, _ in stored_defaults} == defaults and {v for _, _, v in stored_defaults} == {-0.5}
    for decision_id in {d for d, _, _ in expected} | released:
        stored = store.get_decision(decision_id)
        assert stored is not None and stored.state == ("released" if decision_id in released else "final")
    given_back = sum(used.values()) - sum(_budget_used(store, name) for name in actions)
    assert given_back == 2 * len(released)
    assert store.close_due(clock.now()) == 0


def test_a_sweep_rests_between_its_rounds(store: Store, clock: ManualClock) -> None:
    """Each full round is followed by a rest as long as it took, so that a large sweep leaves the writer to
    requests half the time; the last round, which found the rest, is not."""
    _seed(store, clock, {"a": Action(channels=["web"])}, RewardSpec(window="1h"))
    engine = _engine(store, clock)
    for i in range(25):
        _decide(engine, f"c{i}")
    clock.advance(timedelta(hours=1))
    rests: list[float] = []

    def rest(seconds: float) -> bool:
        rests.append(seconds)
        return False

    assert store.close_due(clock.now(), limit=10, rest=rest) == 25
    assert len(rests) == 2 and all(r > 0 for r in rests)


def test_a_sweep_told_to_stop_in_a_rest_stops(store: Store, clock: ManualClock) -> None:
    """A rest that returns true (the process is stopping) ends the sweep after the round it followed; what is
    left is closed by the next sweep."""
    _seed(store, clock, {"a": Action(channels=["web"])}, RewardSpec(window="1h"))
    engine = _engine(store, clock)
    for i in range(25):
        _decide(engine, f"c{i}")
    clock.advance(timedelta(hours=1))
    assert store.close_due(clock.now(), limit=10, rest=lambda _seconds: True) == 10
    assert store.close_due(clock.now(), limit=10) == 15


def test_a_decision_that_cannot_be_closed_does_not_hold_up_the_others(store: Store, clock: ManualClock) -> None:
    """A stored record this version cannot read (here: not JSON at all) fails its own close, not everyone's."""
    version = _seed(store, clock, {"a": Action(channels=["web"])}, RewardSpec(window="1h", default=0.0))
    engine = _engine(store, clock)
    good, bad = _decide(engine, "c1"), _decide(engine, "c2")
    body = store.read(lambda c: c.execute(
        select(t.decisions.c.body).where(t.decisions.c.decision_id == bad.decision_id)).scalar_one())

    def set_body(text: str) -> None:
        store.write(lambda c: c.execute(
            update(t.decisions).where(t.decisions.c.decision_id == bad.decision_id).values(body=text)))

    set_body("{not json")
    clock.advance(timedelta(hours=2))
    assert store.close_due(clock.now()) == 1
    assert _learned(store, version) == [(good.decision_id, 0, 0.0)]
    assert store.unclosable.keys() == {bad.decision_id} and "DecodeError" in store.unclosable[bad.decision_id]
    stored = store.get_decision(good.decision_id)
    assert stored is not None and stored.state == "final"
    assert store.read(lambda c: c.execute(  # rolled back alone: no default reward was stored for it
        select(func.count()).select_from(t.rewards).where(t.rewards.c.decision_id == bad.decision_id)).scalar()) == 0

    set_body(body)  # repaired: this process does not try it again, a restarted one closes it
    assert store.close_due(clock.now()) == 0
    restarted = Store(store.url)
    try:
        assert restarted.close_due(clock.now()) == 1
        assert sorted(_learned(restarted, version)) == sorted([(good.decision_id, 0, 0.0), (bad.decision_id, 0, 0.0)])
        assert restarted.unclosable == {}
    finally:
        restarted.close()


def test_first_is_learned_at_once_and_later_rewards_change_nothing(store: Store, clock: ManualClock) -> None:
    version = _seed(store, clock, {"a": Action(channels=["web"])}, RewardSpec(window="1h", aggregation="first"))
    decision = _decide(_engine(store, clock))
    clock.advance(timedelta(minutes=5))
    assert store.add_reward(decision.decision_id, 0, 1.0, clock.now()) == "accepted"
    assert _learned(store, version) == [(decision.decision_id, 0, 1.0)]

    assert store.add_reward(decision.decision_id, 0, 0.0, clock.now()) == "accepted"  # stored, not learned
    clock.advance(timedelta(hours=1))
    store.close_due(clock.now())
    assert _learned(store, version) == [(decision.decision_id, 0, 1.0)]
    stored = store.get_decision(decision.decision_id)
    assert stored is not None and "default" not in {r["status"] for r in stored.rewards}


def test_a_reward_after_the_window_is_late_and_never_learned(store: Store, clock: ManualClock) -> None:
    version = _seed(store, clock, {"a": Action(channels=["web"])}, RewardSpec(window="30m", default=0.0))
    decision = _decide(_engine(store, clock))
    clock.advance(timedelta(minutes=30, milliseconds=1))
    assert store.add_reward(decision.decision_id, 0, 5.0, clock.now()) == "late"  # before the sweep ran
    store.close_due(clock.now())
    assert store.add_reward(decision.decision_id, 0, 7.0, clock.now()) == "late"  # and after it
    assert _learned(store, version) == [(decision.decision_id, 0, 0.0)]
    stored = store.get_decision(decision.decision_id)
    assert stored is not None
    assert sorted((r["value"], r["status"]) for r in stored.rewards) == [(0.0, "default"), (5.0, "late"),
                                                                         (7.0, "late")]


def test_a_window_that_closes_without_reward_learns_the_default(store: Store, clock: ManualClock) -> None:
    version = _seed(store, clock, {"a": Action(channels=["web"]), "b": Action(channels=["web"])},
                    RewardSpec(window="1h", default=-0.5))
    decision = _decide(_engine(store, clock), slots=2)
    assert len(decision.actions) == 2
    assert store.add_reward(decision.decision_id, 1, 2.0, clock.now()) == "accepted"
    clock.advance(timedelta(hours=2))
    assert store.close_due(clock.now()) == 1

    assert sorted(_learned(store, version)) == [(decision.decision_id, 0, -0.5), (decision.decision_id, 1, 2.0)]
    stored = store.get_decision(decision.decision_id)
    assert stored is not None
    defaults = [r for r in stored.rewards if r["status"] == "default"]
    assert [(r["slot"], r["value"]) for r in defaults] == [(0, -0.5)]
    assert defaults[0]["received_at"] == "2026-11-24T12:00:00.000Z"


def test_rewards_for_unknown_decisions_or_empty_slots_are_refused(store: Store, clock: ManualClock) -> None:
    _seed(store, clock, {"a": Action(channels=["web"]), "off": Action(channels=["web"], active=False)})
    decision = _decide(_engine(store, clock), candidates=["a"])
    with pytest.raises(DecisionNotFound):
        store.add_reward("d-missing", 0, 1.0, clock.now())
    with pytest.raises(InvalidInput) as info:
        store.add_reward(decision.decision_id, 1, 1.0, clock.now())
    assert info.value.field == "slot"

    empty = _decide(_engine(store, clock), candidates=["off"])
    stored = store.get_decision(empty.decision_id)
    assert empty.actions == [] and stored is not None and stored.state == "final"  # nothing to wait for
    with pytest.raises(InvalidInput):
        store.add_reward(empty.decision_id, 0, 1.0, clock.now())


# -- deferred decisions -------------------------------------------------------------------------------


def test_a_deferred_decisions_window_starts_at_activation(store: Store, clock: ManualClock) -> None:
    version = _seed(store, clock, {"promo": Action(channels=["web"], caps=[CAP_1D])}, RewardSpec(window="1h"))
    engine = _engine(store, clock)
    decision = _decide(engine, defer_activation=True)
    assert decision.deferred
    assert [r.status for r in _contacts(store, "promo")] == ["reserved"]
    assert _decide(engine).excluded[0].rule == "cap:customer:1d"  # a reservation counts against the cap

    clock.advance(timedelta(minutes=30))
    assert store.activate(decision.decision_id, clock.now()) == "activated"
    assert store.activate(decision.decision_id, clock.now()) == "activated"  # again: nothing changes
    stored = store.get_decision(decision.decision_id)
    assert stored is not None and stored.activated_at == clock.now()
    assert [r.status for r in _contacts(store, "promo")] == ["counted"]

    clock.advance(timedelta(minutes=45))  # 75 minutes after the decision, 45 after activation
    assert store.add_reward(decision.decision_id, 0, 1.0, clock.now()) == "accepted"
    assert store.close_due(clock.now()) == 0
    clock.advance(timedelta(minutes=15))
    assert store.close_due(clock.now()) == 1
    assert _learned(store, version) == [(decision.decision_id, 0, 1.0)]


def test_an_unactivated_reservation_is_released_and_its_budget_given_back(
    store: Store, clock: ManualClock
) -> None:
    version = _seed(store, clock, {"promo": Action(channels=["web"], budget=Budget(limit=1, window="1d"))},
                    RewardSpec(window="1h"))
    engine = _engine(store, clock)
    deferred = _decide(engine, "c1", defer_activation=True)
    assert deferred.actions[0].action_id == "promo"
    assert _budget_used(store, "promo") == 1
    assert _decide(engine, "c2").excluded[0].rule == "budget:1d"

    clock.advance(timedelta(minutes=59))
    assert store.close_due(clock.now()) == 0
    clock.advance(timedelta(minutes=1))
    assert store.close_due(clock.now()) == 1

    assert _budget_used(store, "promo") == 0
    assert [r.status for r in _contacts(store, "promo", "c1")] == ["released"]
    stored = store.get_decision(deferred.decision_id)
    assert stored is not None and stored.state == "released"
    with pytest.raises(Conflict, match="released"):
        store.activate(deferred.decision_id, clock.now())
    assert store.add_reward(deferred.decision_id, 0, 1.0, clock.now()) == "late"
    assert _learned(store, version) == []
    assert _decide(engine, "c2").actions[0].action_id == "promo"  # the unit is back
    assert _budget_used(store, "promo") == 1


def test_an_activation_after_the_window_is_refused_even_before_the_sweep(store: Store, clock: ManualClock) -> None:
    _seed(store, clock, {"promo": Action(channels=["web"], budget=Budget(limit=1, window="1d"))},
          RewardSpec(window="1h"))
    deferred = _decide(_engine(store, clock), defer_activation=True)
    clock.advance(timedelta(hours=2))
    with pytest.raises(Conflict):
        store.activate(deferred.decision_id, clock.now())


def test_a_reward_after_an_unactivated_reservation_expired_is_late_even_before_the_sweep(
    store: Store, clock: ManualClock
) -> None:
    """As for activation: the answer does not depend on whether the sweep has released the reservation yet."""
    version = _seed(store, clock, {"a": Action(channels=["web"])}, RewardSpec(window="1h"))
    deferred = _decide(_engine(store, clock), defer_activation=True)
    clock.advance(timedelta(hours=1))
    assert store.add_reward(deferred.decision_id, 0, 1.0, clock.now()) == "late"
    store.close_due(clock.now())
    stored = store.get_decision(deferred.decision_id)
    assert stored is not None and stored.state == "released"
    assert [r["status"] for r in stored.rewards] == ["late"]
    assert _learned(store, version) == []


def test_a_reward_at_the_windows_end_is_late_before_and_after_the_sweep(store: Store, clock: ManualClock) -> None:
    """The window is [decision, decision + window): at its end the sweep closes it, so a reward then is late
    whether it comes before or after the sweep."""
    version = _seed(store, clock, {"a": Action(channels=["web"])}, RewardSpec(window="1h", default=0.0))
    engine = _engine(store, clock)
    first, second = _decide(engine, "c1"), _decide(engine, "c2")
    clock.advance(timedelta(hours=1))
    assert store.add_reward(first.decision_id, 0, 1.0, clock.now()) == "late"
    assert store.close_due(clock.now()) == 2
    assert store.add_reward(second.decision_id, 0, 1.0, clock.now()) == "late"
    assert sorted(_learned(store, version)) == sorted([(first.decision_id, 0, 0.0), (second.decision_id, 0, 0.0)])


def test_first_rewards_before_activation_are_learned_at_activation(store: Store, clock: ManualClock) -> None:
    version = _seed(store, clock, {"a": Action(channels=["web"])}, RewardSpec(window="1h", aggregation="first"))
    decision = _decide(_engine(store, clock), defer_activation=True)
    assert store.add_reward(decision.decision_id, 0, 0.7, clock.now()) == HELD  # stored as accepted
    assert _learned(store, version) == []
    clock.advance(timedelta(minutes=5))
    store.activate(decision.decision_id, clock.now())
    assert _learned(store, version) == [(decision.decision_id, 0, 0.7)]


def test_only_deferred_known_decisions_can_be_activated(store: Store, clock: ManualClock) -> None:
    _seed(store, clock, {"a": Action(channels=["web"])})
    decision = _decide(_engine(store, clock))
    with pytest.raises(Conflict, match="not deferred"):
        store.activate(decision.decision_id, clock.now())
    with pytest.raises(DecisionNotFound):
        store.activate("d-missing", clock.now())


# -- reading decisions back ---------------------------------------------------------------------------


def test_a_logged_decision_reads_back_whole(store: Store, clock: ManualClock) -> None:
    _seed(store, clock, {"a": Action(channels=["web"], attributes={"value": 12.5}),
                         "off": Action(channels=["web"], active=False)})
    engine = _engine(store, clock)
    result = engine.decide(DecideRequest("c1", "web", {"device": "mobile", "tags": ["x"]}, request_id="r-9",
                                         body_hash="h"))
    stored = store.get_decision(result.decision.decision_id)
    assert stored is not None
    made = result.decision
    assert (stored.customer_id, stored.channel, stored.policy) == (made.customer_id, made.channel, made.policy)
    assert stored.created_at == clock.now()
    assert stored.actions == made.actions and stored.ranking == made.ranking
    assert stored.excluded == made.excluded and [e.rule for e in stored.excluded] == ["inactive"]
    assert stored.context == {"device": "mobile", "tags": ["x"]}
    assert stored.action_attributes == {"a": {"value": 12.5}}
    assert stored.request_id == "r-9" and not stored.deferred and stored.state == "open"
    assert store.get_decision("d-missing") is None


def test_recent_decisions_are_newest_first(store: Store, clock: ManualClock) -> None:
    _seed(store, clock, {"a": Action(channels=["web"])})
    engine = _engine(store, clock)
    made = []
    for _ in range(3):
        made.append(_decide(engine, "c1").decision_id)
        clock.advance(timedelta(seconds=1))
    _decide(engine, "c2")
    assert [d.decision_id for d in store.recent_decisions("c1")] == made[::-1]
    assert [d.decision_id for d in store.recent_decisions("c1", limit=2)] == made[:0:-1]


# -- learning: queue, snapshots, leases ---------------------------------------------------------------


def test_snapshots_mark_what_they_contain(store: Store, clock: ManualClock) -> None:
    version = _seed(store, clock, {"a": Action(channels=["web"])}, RewardSpec(aggregation="first"))
    engine = _engine(store, clock)
    ids = []
    for value in (1.0, 0.0, 0.5):
        decision = _decide(engine)
        store.add_reward(decision.decision_id, 0, value, clock.now())
        ids.append(decision.decision_id)
    pending = store.pending_examples(POLICY, version, 0)
    assert [(e.decision_id, e.reward) for e in pending] == list(zip(ids, (1.0, 0.0, 0.5), strict=True))
    assert [e.seq for e in pending] == sorted(e.seq for e in pending)
    assert pending[0].body["actions"][0]["action_id"] == "a"
    assert [e.decision_id for e in store.pending_examples(POLICY, version, pending[0].seq)] == ids[1:]
    assert store.pending_examples(POLICY, version + 1, 0) == []

    assert store.latest_snapshot(POLICY, version) is None
    snapshot_id = store.save_snapshot(POLICY, version, b"model-1", 2, [e.seq for e in pending[:2]], clock.now())
    assert [e.decision_id for e in store.pending_examples(POLICY, version, 0)] == ids[2:]
    latest = store.latest_snapshot(POLICY, version)
    assert latest is not None and (latest.snapshot_id, latest.examples, latest.model) == (snapshot_id, 2, b"model-1")
    assert store.latest_snapshot(POLICY, version, newer_than=snapshot_id) is None
    assert store.latest_snapshot(POLICY, version + 1) is None

    newer = store.save_snapshot(POLICY, version, b"model-2", 3, [pending[2].seq], clock.now())
    assert newer > snapshot_id
    assert store.pending_examples(POLICY, version, 0) == []
    latest = store.latest_snapshot(POLICY, version, newer_than=snapshot_id)
    assert latest is not None and latest.model == b"model-2" and latest.examples == 3


def test_only_the_newest_five_snapshots_are_kept(store: Store, clock: ManualClock) -> None:
    made = [store.save_snapshot(POLICY, 1, bytes([i]) * 10, i, [], clock.now()) for i in range(7)]
    store.save_snapshot("other", 1, b"x", 1, [], clock.now())
    kept = store.read(lambda c: [r[0] for r in c.execute(
        select(t.model_snapshots.c.id).where(t.model_snapshots.c.policy_name == POLICY)
        .order_by(t.model_snapshots.c.id))])
    assert kept == made[2:]
    latest = store.latest_snapshot(POLICY, 1)
    assert latest is not None and latest.model == bytes([6]) * 10
    assert store.latest_snapshot("other", 1) is not None


def test_leases_have_one_holder_until_they_expire_or_are_released(store: Store, clock: ManualClock) -> None:
    ttl = timedelta(seconds=30)
    assert store.try_lease("learner", "h1", clock.now(), ttl)
    assert not store.try_lease("learner", "h2", clock.now() + timedelta(seconds=29), ttl)
    assert store.try_lease("learner", "h1", clock.now() + timedelta(seconds=29), ttl)  # renewal
    assert not store.try_lease("learner", "h2", clock.now() + timedelta(seconds=58), ttl)
    assert store.try_lease("learner", "h2", clock.now() + timedelta(seconds=60), ttl)
    store.release_lease("learner", "h1")  # not the holder: no effect
    assert not store.try_lease("learner", "h1", clock.now() + timedelta(seconds=61), ttl)
    store.release_lease("learner", "h2")
    assert store.try_lease("learner", "h1", clock.now() + timedelta(seconds=61), ttl)


def test_times_are_stored_in_epoch_milliseconds(store: Store, clock: ManualClock) -> None:
    _seed(store, clock, {"a": Action(channels=["web"])})
    decision = _decide(_engine(store, clock))
    row = store.read(lambda c: c.execute(
        select(t.decisions.c.created_ms, t.decisions.c.window_end_ms)
        .where(t.decisions.c.decision_id == decision.decision_id)).first())
    assert row is not None
    assert row.created_ms == epoch_ms(clock.now())
    assert row.window_end_ms == epoch_ms(clock.now() + timedelta(hours=1))


def test_a_stale_budget_read_never_lets_the_budget_be_exceeded(store: Store, clock: ManualClock) -> None:
    """Budget reads are cached; here the cache never expires, so every decision reads "3 left" from it. The
    reservation in the write transaction is what enforces the limit: the fourth decision finds the budget gone,
    excludes the action with its rule, and an exhausted read replaces the stale one."""
    from nba.store.budget_reads import BudgetReads

    _seed(store, clock, {"promo": Action(channels=["web"], budget=Budget(limit=3, window="1d"))})
    store._budgets = BudgetReads(ttl=3600.0)
    engine = _engine(store, clock)
    first = _decide(engine, "c0", candidates=["promo"])
    assert [c.action_id for c in first.actions] == ["promo"]  # the cache now holds "0 used"
    for index in range(1, 3):
        assert [c.action_id for c in _decide(engine, f"c{index}", candidates=["promo"]).actions] == ["promo"]
    refused = _decide(engine, "c3", candidates=["promo"])  # chosen on the stale read, refused at reservation
    assert refused.actions == [] and [(e.action_id, e.rule) for e in refused.excluded] == [("promo", "budget:1d")]
    assert _budget_used(store, "promo") == 3
    again = _decide(engine, "c4", candidates=["promo"])  # read afresh after the failed reservation
    assert again.actions == [] and [(e.action_id, e.rule) for e in again.excluded] == [("promo", "budget:1d")]


def test_concurrent_decisions_never_exceed_a_budget_with_a_stale_read(store: Store, clock: ManualClock) -> None:
    from nba.store.budget_reads import BudgetReads

    _seed(store, clock, {"promo": Action(channels=["web"], budget=Budget(limit=5, window="1d"))})
    store._budgets = BudgetReads(ttl=3600.0)
    engine = _engine(store, clock)
    _decide(engine, "warm", candidates=["promo"])  # caches "0 used" for the rest of the test
    decisions = _together(16, lambda i: _decide(engine, f"c{i}", candidates=["promo"]))
    assert sum(1 for d in decisions if d.actions) == 4
    assert _budget_used(store, "promo") == 5
