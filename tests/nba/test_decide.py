"""The decision pipeline: candidates, hard constraints, scoring with fallback, sampling, durable logging."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import pytest

from bandits.registry import PolicyModels
from features.namespaces import NamespaceFeaturizer
from features.state import apply_event
from nba.catalog import Action, Budget, Cap, Learner, Policy, RewardSpec
from nba.catalog_view import CatalogView
from nba.clock import ManualClock
from nba.constraints import CounterState
from nba.decide import DecideRequest, DecisionEngine
from nba.errors import ActionNotFound, NoPolicyForChannel
from nba.store import Store
from nba.store import schema as t
from nba.types import Context, CustomerState, Decision, Event

POLICY = "web-offers"


class FixedScorer:
    """Returns the probabilities it was given, and remembers what it was asked."""

    def __init__(self, probabilities: Mapping[str, float] | list[float] | Exception) -> None:
        self.probabilities = probabilities
        self.calls: list[tuple[Context, CustomerState, list[tuple[str, dict[str, Any]]]]] = []

    def score(
        self, context: Context, customer: CustomerState, actions: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> list[float]:
        self.calls.append((context, customer, [(a, dict(attrs)) for a, attrs in actions]))
        if isinstance(self.probabilities, Exception):
            raise self.probabilities
        if isinstance(self.probabilities, list):
            return list(self.probabilities)
        return [self.probabilities[a] for a, _ in actions]


class Provider:
    def __init__(self, scorer: FixedScorer | None) -> None:
        self._scorer = scorer
        self.asked: list[tuple[str, int]] = []

    def scorer(self, name: str, version: int, policy: Policy) -> FixedScorer | None:
        self.asked.append((name, version))
        return self._scorer


def _seed(store: Store, clock: ManualClock, actions: Mapping[str, Action], **policy: Any) -> int:
    for action_id, action in actions.items():
        store.put_action(action_id, action, clock.now())
    version, _ = store.put_policy(POLICY, Policy(channels=["web"], **policy), clock.now())
    return version


def _engine(store: Store, clock: ManualClock, scorer: FixedScorer | None = None, seed: int = 0,
            **kwargs: Any) -> DecisionEngine:
    return DecisionEngine(store, store.load_catalog, Provider(scorer), clock, rng=random.Random(seed), **kwargs)


def _decide(engine: DecisionEngine, customer: str = "c1", context: Context | None = None, **kwargs: Any) -> Decision:
    return engine.decide(DecideRequest(customer, kwargs.pop("channel", "web"), context or {}, **kwargs)).decision


def _event(customer: str, type_: str, at: Any, **properties: Any) -> Event:
    return Event(f"e-{type_}-{at.timestamp()}", customer, type_, at, properties)


THREE = {"a": Action(channels=["web"]), "b": Action(channels=["web"]), "c": Action(channels=["web"])}


# -- scoring ------------------------------------------------------------------------------------------


def test_without_a_learning_policy_the_engine_falls_back_to_uniform(store: Store, clock: ManualClock) -> None:
    version = _seed(store, clock, THREE)
    decision = _decide(_engine(store, clock))
    assert decision.policy.name == POLICY and decision.policy.version == version
    assert decision.policy.mode == "fallback"
    assert sorted(a for a, _ in decision.ranking) == ["a", "b", "c"]
    assert all(p == pytest.approx(1 / 3) for _, p in decision.ranking)
    assert decision.actions[0].probability == pytest.approx(1 / 3)
    assert decision.created_at == clock.now()


def test_the_scorers_probabilities_are_served_and_logged(store: Store, clock: ManualClock) -> None:
    _seed(store, clock, {"a": Action(channels=["web"], attributes={"value": 5.0}), "b": Action(channels=["web"]),
                         "c": Action(channels=["web"])})
    scorer = FixedScorer({"a": 0.2, "b": 0.7, "c": 0.1})
    engine = _engine(store, clock, scorer)
    decision = _decide(engine, context={"device": "mobile"})

    assert decision.policy.mode == "online"
    assert decision.ranking == [("b", 0.7), ("a", 0.2), ("c", 0.1)]
    chosen = decision.actions[0]
    assert chosen.probability == pytest.approx(dict(decision.ranking)[chosen.action_id])
    context, customer, actions = scorer.calls[0]
    assert context == {"device": "mobile"} and customer.customer_id == "c1"
    assert actions == [("a", {"value": 5.0}), ("b", {}), ("c", {})]


def test_slot_zero_follows_the_scorer(store: Store, clock: ManualClock) -> None:
    _seed(store, clock, THREE)
    engine = _engine(store, clock, FixedScorer({"a": 0.0, "b": 1.0, "c": 0.0}))
    for i in range(10):
        assert _decide(engine, f"c{i}").actions[0].action_id == "b"


@pytest.mark.parametrize(
    "bad",
    [[0.5, 0.6, -0.1], [0.5, 0.5, 0.5], [0.5, 0.5], [math.nan, 0.5, 0.5], [-8.0, 1.0, 8.0],
     RuntimeError("model failed"), ValueError("bad features")],
    ids=["negative", "sum-1.5", "short", "nan", "squarecb-elim", "runtime-error", "value-error"],
)
def test_a_scorer_that_fails_or_returns_no_distribution_falls_back(
    store: Store, clock: ManualClock, bad: list[float] | Exception
) -> None:
    _seed(store, clock, THREE)
    decision = _decide(_engine(store, clock, FixedScorer(bad)))
    assert decision.policy.mode == "fallback"
    assert [p for _, p in decision.ranking] == pytest.approx([1 / 3] * 3)
    assert len(decision.actions) == 1


def test_a_policy_in_fallback_mode_never_asks_for_a_scorer(store: Store, clock: ManualClock) -> None:
    _seed(store, clock, THREE, mode="fallback")
    provider = Provider(FixedScorer({"a": 1.0, "b": 0.0, "c": 0.0}))
    engine = DecisionEngine(store, store.load_catalog, provider, clock, rng=random.Random(0))
    assert _decide(engine).policy.mode == "fallback"
    assert provider.asked == []


def test_a_real_vw_policy_serves_online(store: Store, clock: ManualClock) -> None:
    _seed(store, clock, THREE)
    engine = DecisionEngine(store, store.load_catalog, PolicyModels(store, NamespaceFeaturizer()), clock)
    decision = _decide(engine, context={"device": "mobile", "cart_value": 84.5})
    assert decision.policy.mode == "online"
    assert math.fsum(p for _, p in decision.ranking) == pytest.approx(1.0)


def test_a_policy_whose_model_cannot_be_built_falls_back(store: Store, clock: ManualClock) -> None:
    _seed(store, clock, THREE, learner=Learner(vw_args="--ignore U"))
    engine = DecisionEngine(store, store.load_catalog, PolicyModels(store, NamespaceFeaturizer()), clock)
    assert _decide(engine).policy.mode == "fallback"


# -- slots --------------------------------------------------------------------------------------------


def test_slots_are_distinct_and_no_more_than_eligible(store: Store, clock: ManualClock) -> None:
    _seed(store, clock, THREE)
    engine = _engine(store, clock)
    two = _decide(engine, slots=2)
    assert [c.slot for c in two.actions] == [0, 1]
    assert len({c.action_id for c in two.actions}) == 2
    assert two.actions[1].probability == pytest.approx(0.5)
    many = _decide(engine, slots=10)
    assert sorted(c.action_id for c in many.actions) == ["a", "b", "c"]
    assert [c.probability for c in many.actions] == pytest.approx([1 / 3, 1 / 2, 1.0])


# -- hard constraints ---------------------------------------------------------------------------------


def test_each_excluded_candidate_names_its_rule(store: Store, clock: ManualClock) -> None:
    now = clock.now()
    _seed(store, clock, {
        "ok": Action(channels=["web"]),
        "off": Action(channels=["web"], active=False),
        "email-only": Action(channels=["email"]),
        "adults": Action(channels=["web"], attributes={"min_age": 18}, eligibility="customer.age >= action.min_age"),
        "calm": Action(channels=["web"], suppressed_by=[{"event": "complaint_filed", "for": "14d"}]),
    })
    store.ingest_events([
        _event("c1", "profile_updated", now - timedelta(days=1), age=16),
        _event("c1", "complaint_filed", now - timedelta(days=2)),
    ], apply_event, now)

    decision = _decide(_engine(store, clock), candidates=["ok", "off", "email-only", "adults", "calm"])

    assert [c.action_id for c in decision.actions] == ["ok"]
    assert decision.ranking == [("ok", 1.0)]
    rules = {e.action_id: e.rule for e in decision.excluded}
    assert rules == {"off": "inactive", "email-only": "eligibility", "adults": "eligibility",
                     "calm": "suppressed_by:complaint_filed"}
    detail = {e.action_id: e.detail for e in decision.excluded}
    assert detail["adults"] == "customer.age >= action.min_age is false"
    assert decision.customer["attributes"] == {"age": 16}


def test_an_opted_out_customer_gets_nothing(store: Store, clock: ManualClock) -> None:
    _seed(store, clock, THREE)
    store.ingest_events([_event("c1", "opt_out", clock.now(), channel="web")], apply_event, clock.now())
    decision = _decide(_engine(store, clock))
    assert decision.actions == []
    assert {e.rule for e in decision.excluded} == {"opt_out"}
    assert _decide(_engine(store, clock), "c2").actions != []


def test_cooldown_and_caps_read_the_contact_history(store: Store, clock: ManualClock) -> None:
    _seed(store, clock, {"cool": Action(channels=["web"], cooldown="2h"),
                         "capped": Action(channels=["web"], caps=[Cap(per="customer", limit=1, window="1d")])})
    engine = _engine(store, clock)
    first = _decide(engine, slots=2)
    assert sorted(c.action_id for c in first.actions) == ["capped", "cool"]

    clock.advance(timedelta(hours=1))
    blocked = _decide(engine, slots=2)
    assert blocked.actions == []
    assert {e.action_id: e.rule for e in blocked.excluded} == {"cool": "cooldown", "capped": "cap:customer:1d"}

    clock.advance(timedelta(hours=1))
    assert [c.action_id for c in _decide(engine, slots=2).actions] == ["cool"]


def test_a_decision_drafted_on_stale_counters_is_made_again(
    store: Store, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store refuses the reservation; the engine excludes the action with the rule and decides again."""
    _seed(store, clock, {"capped": Action(channels=["web"], caps=[Cap(per="customer", limit=1, window="1d")]),
                         "free": Action(channels=["web"])})
    engine = _engine(store, clock, FixedScorer({"capped": 1.0, "free": 0.0}))
    assert _decide(engine).actions[0].action_id == "capped"

    fresh_inputs = store.decision_inputs

    def stale_inputs(*args: Any, **kwargs: Any) -> Any:  # the read path misses the contact just logged
        customer_id, hit, state, _ = fresh_inputs(*args, **kwargs)
        return customer_id, hit, state, CounterState([], {})

    monkeypatch.setattr(store, "decision_inputs", stale_inputs)
    decision = _decide(engine)
    assert [c.action_id for c in decision.actions] == ["free"]
    assert [(e.action_id, e.rule) for e in decision.excluded] == [("capped", "cap:customer:1d")]
    assert decision.ranking == [("free", 1.0)]
    assert decision.policy.mode == "fallback"  # one eligible action: its 0.0 score is not a distribution


def test_an_alias_shares_the_canonical_customers_history(store: Store, clock: ManualClock) -> None:
    _seed(store, clock, {"capped": Action(channels=["web"], caps=[Cap(per="customer", limit=1, window="1d")])})
    store.write(lambda c: c.execute(t.aliases.insert().values(alias="email:9f2c", customer_id="c1")))
    engine = _engine(store, clock)
    via_alias = _decide(engine, "email:9f2c")
    assert via_alias.customer_id == "c1" and via_alias.actions[0].action_id == "capped"
    assert _decide(engine, "c1").excluded[0].rule == "cap:customer:1d"


# -- requests that cannot be decided ------------------------------------------------------------------


def test_unknown_candidates_and_unserved_channels_are_refused_and_log_nothing(
    store: Store, clock: ManualClock
) -> None:
    _seed(store, clock, THREE)
    engine = _engine(store, clock)
    with pytest.raises(ActionNotFound):
        _decide(engine, candidates=["a", "nope"])
    with pytest.raises(NoPolicyForChannel):
        _decide(engine, channel="sms")
    assert store.count_decisions() == 0


def test_nothing_eligible_is_an_empty_decision_that_is_still_logged(store: Store, clock: ManualClock) -> None:
    _seed(store, clock, {"off": Action(channels=["web"], active=False)})
    decision = _decide(_engine(store, clock))
    assert decision.actions == [] and decision.ranking == []
    assert store.get_decision(decision.decision_id) is not None


# -- logging and catalog changes ----------------------------------------------------------------------


def test_each_new_decision_is_logged_and_reported_once(store: Store, clock: ManualClock) -> None:
    _seed(store, clock, THREE)
    seen: list[str] = []
    engine = _engine(store, clock, on_decision=lambda d: seen.append(d.decision_id))
    request = DecideRequest("c1", "web", {}, request_id="r-1", body_hash="h", defer_activation=True)
    first = engine.decide(request)
    again = engine.decide(request)
    assert seen == [first.decision.decision_id]
    assert again.replayed and again.decision.decision_id == first.decision.decision_id
    stored = store.get_decision(first.decision.decision_id)
    assert stored is not None and stored.deferred and stored.actions == first.decision.actions


def test_a_stale_catalog_view_is_never_used_to_bypass_a_rule(store: Store, clock: ManualClock) -> None:
    _seed(store, clock, {"promo": Action(channels=["web"])})
    stale: CatalogView = store.load_catalog()
    store.put_action("promo", Action(channels=["web"], active=False), clock.now())  # another process's change
    refreshed: list[int] = []

    def refresh() -> CatalogView:
        view = store.load_catalog()
        refreshed.append(view.version)
        return view

    engine = DecisionEngine(store, lambda: stale, Provider(None), clock, refresh_catalog=refresh)
    decision = _decide(engine)
    assert decision.actions == []
    assert [e.rule for e in decision.excluded] == ["inactive"]
    assert refreshed and refreshed[-1] == stale.version + 1
    assert store.count_decisions() == 1


@pytest.mark.parametrize("windows", [["1d", "2d"], ["1d", "12h"], ["12h", "1d"], ["1d", "2d", "1d"]],
                         ids=lambda windows: "-".join(windows))
def test_saving_an_action_with_another_budget_window_keeps_what_its_budget_spent(
    store: Store, clock: ManualClock, windows: list[str]
) -> None:
    """Budget use is counted per window: a new window length must not start from zero (found by review)."""
    _seed(store, clock, {"x": Action(channels=["web"], budget=Budget(limit=1, window=windows[0]))})
    engine = _engine(store, clock)
    assert [a.action_id for a in _decide(engine, "c1").actions] == ["x"]
    for window in windows[1:]:
        store.put_action("x", Action(channels=["web"], budget=Budget(limit=1, window=window)), clock.now())
        clock.advance(timedelta(minutes=1))
        decision = _decide(engine, "c2")
        assert decision.actions == [] and [e.rule for e in decision.excluded] == [f"budget:{window}"]


def test_a_budget_saved_with_new_window_lengths_again_and_again_counts_each_offer_once(
    store: Store, clock: ManualClock
) -> None:
    """Units carried into a window were carried on at the next save, and counted again: 5 offers read as 15 after
    saves of 2h, 30m, 60m and a re-creation at 1h, and cycling three lengths grew the count past 2^63, where the
    sum overflowed and each save of the action failed (an adversarial client racing the admin API)."""
    _seed(store, clock, {"x": Action(channels=["web"], budget=Budget(limit=5, window="1h"))})
    engine = _engine(store, clock)
    for n in range(5):
        assert [a.action_id for a in _decide(engine, f"c{n}").actions] == ["x"]
    for window in ["2h", "30m", "60m", "3h", "2h", "30m", "1h"] * 6:
        store.put_action("x", Action(channels=["web"], budget=Budget(limit=5, window=window)), clock.now())
    store.delete_action("x")
    store.put_action("x", Action(channels=["web"], budget=Budget(limit=5, window="1h")), clock.now())
    excluded = _decide(engine, "c5").excluded
    assert [(e.rule, e.detail) for e in excluded] == [("budget:1h", "5 of 5 per 1h used")]
    store.put_action("x", Action(channels=["web"], budget=Budget(limit=6, window="1h")), clock.now())
    assert [a.action_id for a in _decide(engine, "c6").actions] == ["x"]
    assert [e.detail for e in _decide(engine, "c7").excluded] == ["6 of 6 per 1h used"]


def test_budget_use_of_windows_that_have_ended_is_not_carried_to_a_new_window_length(
    store: Store, clock: ManualClock
) -> None:
    _seed(store, clock, {"x": Action(channels=["web"], budget=Budget(limit=1, window="1d"))})
    engine = _engine(store, clock)
    assert [a.action_id for a in _decide(engine, "c1").actions] == ["x"]
    clock.advance(timedelta(days=1))
    store.put_action("x", Action(channels=["web"], budget=Budget(limit=1, window="12h")), clock.now())
    assert [a.action_id for a in _decide(engine, "c2").actions] == ["x"]


def test_a_shorter_budget_window_saved_across_a_window_boundary_counts_what_was_offered_since(
    store: Store, clock: ManualClock
) -> None:
    """The change was timed before it queued for the write lock and committed after a boundary of the new window
    length: the offers made meanwhile under the old budget were carried into the window before the boundary, and
    the new window was filled again (an adversarial run: 13 offers against a limit of 5)."""
    _seed(store, clock, {"x": Action(channels=["web"], budget=Budget(limit=1000, window="2s"))})
    engine = _engine(store, clock)
    start = clock.now().replace(microsecond=0)
    start -= timedelta(seconds=int(start.timestamp()) % 2)  # a 2-s window starts here; a 1-s one at start + 1 s
    clock.set(start + timedelta(milliseconds=998))
    timed = clock.now()  # the admin route reads the time, then the change waits for the write lock
    clock.set(start + timedelta(milliseconds=1004))
    for n in range(8):  # decisions that commit first, under the old budget, in the next 1-s window
        assert [a.action_id for a in _decide(engine, f"c{n}").actions] == ["x"]
    clock.set(start + timedelta(milliseconds=1100))
    store.put_action("x", Action(channels=["web"], budget=Budget(limit=5, window="1s")), timed, clock.now)
    clock.set(start + timedelta(milliseconds=1200))
    for n in range(8, 16):
        decision = _decide(engine, f"c{n}")
        assert decision.actions == [] and [e.rule for e in decision.excluded] == ["budget:1s"]


def test_caps_and_cooldowns_run_from_when_a_deferred_action_was_shown(store: Store, clock: ManualClock) -> None:
    """Activation says the action reached the customer: it counts from then, not from the decision (review)."""
    _seed(store, clock, {"x": Action(channels=["web"], caps=[Cap(per="customer", limit=1, window="1d")])},
          reward=RewardSpec(window="6h"))
    engine = _engine(store, clock)
    t0 = clock.now()
    deferred = _decide(engine, "c1", defer_activation=True)
    assert [a.action_id for a in deferred.actions] == ["x"]
    clock.advance(timedelta(hours=5, minutes=59))
    store.activate(deferred.decision_id, clock.now())
    clock.set(t0 + timedelta(days=1, seconds=1))  # a day after the decision, 18 h after the action was shown
    assert [e.rule for e in _decide(engine, "c1").excluded] == ["cap:customer:1d"]
    clock.set(t0 + timedelta(hours=5, minutes=59, days=1, seconds=1))
    assert [a.action_id for a in _decide(engine, "c1").actions] == ["x"]


def test_a_reservation_counts_until_it_ends_however_long_the_reward_window(store: Store, clock: ManualClock) -> None:
    """A deferred action may be shown at any moment until its reservation ends, so caps and cooldowns count it
    as shown then; once released it counts no more."""
    capped = Action(channels=["web"], cooldown="1h", caps=[Cap(per="customer", limit=1, window="1d")])
    _seed(store, clock, {"x": capped}, reward=RewardSpec(window="2d"))
    engine = _engine(store, clock)
    t0 = clock.now()
    assert [a.action_id for a in _decide(engine, "c1", defer_activation=True).actions] == ["x"]
    clock.set(t0 + timedelta(days=1, hours=1))  # past the cap's window and the cooldown, still reserved
    excluded = _decide(engine, "c1").excluded
    assert [e.rule for e in excluded] == ["cooldown"] and "reserved by a deferred decision until" in excluded[0].detail
    clock.set(t0 + timedelta(days=2, seconds=1))  # the reservation has ended: released by the sweep
    store.close_due(clock.now())
    assert [a.action_id for a in _decide(engine, "c1").actions] == ["x"]


def test_a_long_budget_window_can_be_changed(store: Store, clock: ManualClock) -> None:
    """30 days in ms overflows a 32-bit integer: PostgreSQL refused the carry of a 30d window (review)."""
    _seed(store, clock, {"x": Action(channels=["web"], budget=Budget(limit=1, window="30d"))})
    engine = _engine(store, clock)
    assert [a.action_id for a in _decide(engine, "c1").actions] == ["x"]
    store.put_action("x", Action(channels=["web"], budget=Budget(limit=1, window="1d")), clock.now())
    assert [e.rule for e in _decide(engine, "c2").excluded] == ["budget:1d"]
