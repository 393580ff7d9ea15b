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
from nba.clock import ManualClock, SystemClock, epoch_ms, from_epoch_ms
from nba.decide import DecideRequest, DecisionEngine
from nba.durations import MAX_DURATION
from nba.errors import DecisionNotFound
from nba.store import Store
from nba.store import schema as t
from nba.store.retention import CLOCK_MARGIN, Cursors, Horizons, prune
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
    cursors = Cursors()  # carried from pass to pass, as the retention thread does
    while True:
        result = prune(store, horizons, cursors, chunk=3, max_chunks=4)  # small chunks: the paging is exercised
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

    now_clock.advance(timedelta(hours=4))  # the decisions and their examples (made at the close) are past it
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
    assert _prune_all(store, Horizons.at(now_clock.now(), KEEP, NO_COUNTERS))["decisions"] == 0  # examples: new
    now_clock.advance(KEEP + timedelta(seconds=1))
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
    now_clock.advance(KEEP + CLOCK_MARGIN - timedelta(seconds=1))  # the margin for clocks behind this one's
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
    assert deleted == {"decisions": 0, "contacts": 0, "events": 0, "idempotency_keys": 1, "budget_windows": 0,
                       "budget_history": 0}
    assert store.get_decision(decision.decision_id) is not None
    assert _count(store, t.events) == 1 and _count(store, t.contacts) == 1


def test_an_example_not_learned_is_kept_for_the_retention_period_after_it_was_made(
    store: Store, now_clock: ManualClock
) -> None:
    engine = _setup(store, now_clock, {"a": Action(channels=["web"])}, window="7d")
    version = store.load_catalog().policies["p"][0]
    decisions = [_decide(engine, f"c{i}") for i in range(2)]
    keep = timedelta(days=7)  # as long as the reward window: a decision is past retention when it closes
    now_clock.advance(keep + timedelta(seconds=1))
    assert store.close_due(now_clock.now()) == 2
    learned = store.unlearned_examples("p", version, set(), limit=1)
    store.save_snapshot("p", version, b"model", 1, [learned[0].seq], now_clock.now())  # one example learned

    first = _prune_all(store, Horizons.at(now_clock.now(), keep, NO_COUNTERS))
    assert first["decisions"] == 1  # the learned one goes; the other waits for the learner
    [pending] = store.unlearned_examples("p", version, set(), limit=10)
    assert pending.decision_id != learned[0].decision_id
    assert store.get_decision(pending.decision_id) is not None

    now_clock.advance(keep + timedelta(seconds=1))  # a learner down for the whole retention period loses it
    assert _prune_all(store, Horizons.at(now_clock.now(), keep, NO_COUNTERS))["decisions"] == 1
    assert store.unlearned_examples("p", version, set(), limit=10) == []
    assert all(store.get_decision(d.decision_id) is None for d in decisions)


def test_decided_decisions_behind_many_open_ones_are_reached(store: Store, now_clock: ManualClock) -> None:
    for action_id in ("a",):
        store.put_action(action_id, Action(channels=["web", "app"]), now_clock.now())
    store.put_policy("long", Policy(channels=["web"], reward=RewardSpec(window="120d")), now_clock.now())
    store.put_policy("short", Policy(channels=["app"], reward=RewardSpec(window="1h")), now_clock.now())
    engine = DecisionEngine(store, store.load_catalog, NoModel(), now_clock, rng=random.Random(0))
    for i in range(20):  # open for 120 days: ahead of the others in id order, more than a pass looks at
        engine.decide(DecideRequest(f"w{i}", "web", {}))
    now_clock.advance(timedelta(milliseconds=1))
    short = [engine.decide(DecideRequest(f"a{i}", "app", {})).decision.decision_id for i in range(4)]
    now_clock.advance(timedelta(hours=2))
    assert store.close_due(now_clock.now()) == 4
    now_clock.advance(KEEP + timedelta(minutes=1))
    horizons = Horizons.at(now_clock.now(), KEEP, NO_COUNTERS)
    cursors = Cursors()
    passes = [prune(store, horizons, cursors, chunk=3, max_chunks=2) for _ in range(5)]
    # 24 old ones in chunks of 3, 2 chunks a pass, each pass going on where the one before stopped.
    assert [p.more for p in passes] == [True, True, True, True, False]
    assert sum(p.deleted["decisions"] for p in passes) == 4
    assert all(store.get_decision(d) is None for d in short)


def test_contacts_behind_a_deferred_decisions_contact_are_reached(store: Store, now_clock: ManualClock) -> None:
    store.put_action("a", Action(channels=["web", "app"]), now_clock.now())
    store.put_policy("deferred", Policy(channels=["app"], reward=RewardSpec(window="60d")), now_clock.now())
    store.put_policy("plain", Policy(channels=["web"], reward=RewardSpec(window="1h")), now_clock.now())
    engine = DecisionEngine(store, store.load_catalog, NoModel(), now_clock, rng=random.Random(0))
    engine.decide(DecideRequest("c0", "app", {}, defer_activation=True))  # its contact is timed at its release
    for i in range(20):
        engine.decide(DecideRequest(f"c{i + 1}", "web", {}))
    now_clock.advance(timedelta(days=91))
    store.close_due(now_clock.now())
    deleted = _prune_all(store, Horizons.at(now_clock.now(), KEEP, NO_COUNTERS))
    assert deleted["contacts"] == 20
    assert _count(store, t.contacts) == 1  # the deferred one, released 31 days ago


def test_a_cap_holds_for_a_decide_whose_clock_is_behind_the_pruners(store: Store, now_clock: ManualClock) -> None:
    engine = _setup(store, now_clock, {"a": Action(channels=["web"], caps=[Cap(per="customer", limit=1,
                                                                               window="2d")])})
    assert [c.action_id for c in _decide(engine, "c1").actions] == ["a"]
    now_clock.advance(timedelta(days=2) - timedelta(seconds=1))  # the decide's clock: the contact still counts
    pruner_now = now_clock.now() + timedelta(minutes=30)  # another host's, half an hour ahead
    prune(store, Horizons.at(pruner_now, timedelta(days=1), timedelta(days=2)))
    assert _decide(engine, "c1").actions == []


def test_budget_windows_of_a_month_and_longer_are_pruned(store: Store, now_clock: ManualClock) -> None:
    """A window in milliseconds passes 2**31 from 25 days on (PostgreSQL's `integer`)."""
    engine = _setup(store, now_clock, {"a": Action(channels=["web"], budget=Budget(limit=100, window="30d")),
                                       "b": Action(channels=["web"], budget=Budget(limit=100, window="3660d"))})
    for i in range(4):
        _decide(engine, f"c{i}")
    assert _count(store, t.budget_counters) == 2
    now_clock.advance(timedelta(days=200))
    deleted = _prune_all(store, Horizons.at(now_clock.now(), KEEP, NO_COUNTERS))
    assert deleted["budget_windows"] == 1  # the 30-day window ended; the 3660-day one (2020 to 2030) runs on
    assert store.read(lambda c: c.execute(select(t.budget_counters.c.window_s)).scalars().all()) == [3660 * 86400]
    history = store.read(lambda c: c.execute(select(t.budget_history.c.action_id, t.budget_history.c.taken)).all())
    assert [tuple(row) for row in history] == [("a", 2)]  # the 30-day window's units, as history


def test_with_a_day_of_retention_a_replay_within_its_day_finds_its_decision(
    store: Store, now_clock: ManualClock
) -> None:
    """Request ids are kept a day and an hour (other hosts' clocks may be behind), but with a day of retention
    their decisions went at a day: a host 10 minutes behind replayed a request at its 23 h 55 min, found the key
    without its decision and logged a new one (a review)."""
    engine = _setup(store, now_clock, {"a": Action(channels=["web"])})
    t0 = now_clock.now()
    first = engine.decide(DecideRequest("c1", "web", {}, request_id="r-1", body_hash="h-1")).decision
    now_clock.advance(timedelta(hours=2))
    store.close_due(now_clock.now())
    version = store.load_catalog().policies["p"][0]
    examples = store.unlearned_examples("p", version, set())
    store.save_snapshot("p", version, b"model", len(examples), [e.seq for e in examples], now_clock.now())
    _prune_all(store, Horizons.at(t0 + timedelta(hours=24, minutes=5), timedelta(days=1), NO_COUNTERS))
    now_clock.set(t0 + timedelta(hours=23, minutes=55))  # the other host's clock
    again = engine.decide(DecideRequest("c1", "web", {}, request_id="r-1", body_hash="h-1"))
    assert again.replayed and again.decision.decision_id == first.decision_id
    assert store.count_decisions() == 1


def test_a_budget_lengthened_after_retention_still_counts_what_its_past_windows_took(
    store: Store, now_clock: ManualClock
) -> None:
    """Retention deleted the counters of past windows, and a budget saved afterwards with a longer window counted
    only the windows left: 2 a day for five days, then 10 a week, offered 8 more (a review). Past windows now
    become a day's history, which the longer window counts; the history goes once no window could reach it."""
    week_ms = 7 * 86_400_000
    start = from_epoch_ms(epoch_ms(now_clock.now()) // week_ms * week_ms + 3_600_000)  # an hour into a 7-day window
    now_clock.set(start)
    engine = _setup(store, now_clock, {"a": Action(channels=["web"], budget=Budget(limit=2, window="1d"))})
    offered = 0
    for day in range(5):
        now_clock.set(start + timedelta(days=day))
        offered += sum(len(_decide(engine, f"c{day}-{i}").actions) for i in range(3))
    assert offered == 10
    now_clock.set(start + timedelta(days=5))
    keep = timedelta(days=1)
    assert _prune_all(store, Horizons.at(now_clock.now(), keep, NO_COUNTERS))["budget_windows"] == 4  # days 0-3
    store.put_action("a", Action(channels=["web"], budget=Budget(limit=10, window="7d")), now_clock.now())
    refused = _decide(engine, "c-week")
    assert refused.actions == [] and [e.detail for e in refused.excluded] == ["10 of 10 per 7d used"]
    now_clock.advance(MAX_DURATION + timedelta(days=10))
    deleted = _prune_all(store, Horizons.at(now_clock.now(), keep, NO_COUNTERS))
    assert deleted["budget_history"] >= 4 and _count(store, t.budget_history) == 0


def test_every_retention_query_uses_an_index_on_sqlite(tmp_path: Any) -> None:
    """Each query a chunk runs finds its rows by an index: with millions of rows, a scan in each 100-row chunk
    would hold the write lock for seconds. (SQLite's planner prefers an index on a column with few values, such as
    the decisions' state, and then sorts the whole table: the queries are written so that it does not.)"""
    from sqlalchemy import event

    store = Store(f"sqlite:///{tmp_path / 'plans.db'}")
    plans: list[tuple[str, str]] = []
    engine = store.writer_engines[0]

    def explain(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "DELETE")) and not executemany:
            rows = conn.connection.driver_connection.execute("EXPLAIN QUERY PLAN " + statement, parameters)
            plans.extend((statement, str(row[3])) for row in rows)

    try:
        for target in {engine, store._reader, store._local_reader}:
            event.listen(target, "before_cursor_execute", explain)
        prune(store, Horizons.at(SystemClock().now(), KEEP, NO_COUNTERS), Cursors(decision="d-0", contact=0))
        assert plans
        scans = [(statement, plan) for statement, plan in plans if plan.startswith("SCAN") or "TEMP B-TREE" in plan]
        assert scans == []
    finally:
        store.close()


def test_a_pass_rests_after_each_transaction_as_long_as_it_took(store: Store, now_clock: ManualClock) -> None:
    """With `rest`, a backlog takes the write lock half the time at most instead of back to back."""
    engine = _setup(store, now_clock, {"a": Action(channels=["web"])})
    for i in range(7):
        _decide(engine, f"c{i}")
    now_clock.advance(timedelta(hours=2))
    store.close_due(now_clock.now())
    now_clock.advance(KEEP + CLOCK_MARGIN + timedelta(hours=1))
    rests: list[float] = []
    result = prune(store, Horizons.at(now_clock.now(), KEEP, NO_COUNTERS), chunk=3, rest=rests.append)
    assert result.deleted["decisions"] == 7 and result.deleted["contacts"] == 7
    # One rest per write: 3 chunks of decisions, 3 of contacts, one each of events, request ids, budget windows
    # and budget history.
    assert len(rests) == 10 and all(seconds > 0 for seconds in rests)


def test_history_of_a_window_of_the_same_length_is_not_carried_into_the_current_one(
    store: Store, now_clock: ManualClock
) -> None:
    """A 36-hour window that ended at noon is folded into that day, the day the current window started in; saved
    again (only its attributes changed), the action carried it into the current window: 4 of 3 used, where 1 was
    (a review). Windows of one length never overlap: history of the current length is never carried."""
    h36 = 36 * 3_600_000
    k = epoch_ms(now_clock.now()) // h36 - 4
    if ((k + 1) * h36) % 86_400_000 == 0:  # the previous window must end at 12:00 UTC, inside a day
        k -= 1
    previous = k * h36
    now_clock.set(from_epoch_ms(previous + 3_600_000))
    engine = _setup(store, now_clock, {"a": Action(channels=["web"], budget=Budget(limit=3, window="36h"))})
    assert sum(len(_decide(engine, f"p{i}").actions) for i in range(4)) == 3
    now_clock.set(from_epoch_ms(previous + h36 + 25 * 3_600_000))  # 25 h into the current window
    assert len(_decide(engine, "c0").actions) == 1
    assert _prune_all(store, Horizons.at(now_clock.now(), timedelta(days=1), NO_COUNTERS))["budget_windows"] == 1
    store.put_action("a", Action(channels=["web"], attributes={"note": "x"}, budget=Budget(limit=3, window="36h")),
                     now_clock.now())
    assert [a.action_id for a in _decide(engine, "c1").actions] == ["a"]  # 2 of 3
