"""PostgreSQL: the advisory locks a group commit takes stay within the server's lock table, however large."""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, create_engine, func, select, text

from features.state import apply_event
from nba.catalog import Action, Budget, Policy, RewardSpec
from nba.clock import ManualClock
from nba.decide import BUDGET_HELD, DecideRequest, DecisionEngine
from nba.errors import LocksHeld, StoreUnavailable
from nba.store import Store
from nba.store import batcher as batcher_module
from nba.store import engine as engine_module
from nba.store import schema as t
from nba.store.batcher import MAX_BATCH_KEYS, WriteBatcher, _Job
from nba.types import Event, EventOutcome
from tests.conftest import _pg_url
from tests.nba.test_failed_commit import NoModel

pytestmark = pytest.mark.postgres
NOW = datetime(2026, 11, 24, 10, tzinfo=UTC)


def _advisory_locks(conn: Connection) -> int:
    return int(conn.execute(text(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()")).scalar_one())


def _queued_together(batcher: WriteBatcher, jobs: list[_Job]) -> None:
    """Queue `jobs` while the writer is busy, so that they are there together when it next forms a batch."""
    started, gate = threading.Event(), threading.Event()

    def hold(_conn: Connection) -> None:
        started.set()
        gate.wait(30)

    held: Future[None] = Future()
    batcher._enqueue([_Job(hold, (), future=held)])
    assert started.wait(30)
    batcher._enqueue(jobs)
    gate.set()
    held.result(timeout=60)


def test_a_group_commit_takes_at_most_max_batch_keys_locks(postgres_url: str) -> None:
    store = Store(postgres_url)
    try:
        def counting(conn: Connection) -> tuple[int, int]:
            return _advisory_locks(conn), int(conn.execute(text("SELECT txid_current()")).scalar_one())

        answers = [Future[Any]() for _ in range(3)]
        keys: Callable[[int], list[str]] = lambda n: [f"customer:{n}-{i}" for i in range(1000)]  # noqa: E731
        _queued_together(store._batcher, [_Job(counting, keys(n), future=answers[n]) for n in range(3)])
        seen = [answer.result(timeout=60) for answer in answers]
        assert [locks for locks, _ in seen] == [2000, 2000, 1000]  # the third did not fit: the next batch
        assert seen[0][1] == seen[1][1] != seen[2][1]
        assert max(locks for locks, _ in seen) <= MAX_BATCH_KEYS
    finally:
        store.close()


def test_large_event_batches_queued_together_are_all_stored(postgres_url: str) -> None:
    """Sixteen 1,000-event batches committed together needed 32,000 advisory locks: more than the server's lock
    table holds by default, so every write of the group failed with 503 ("out of shared memory")."""
    store = Store(postgres_url)
    try:
        answers: list[Future[list[EventOutcome]]] = []
        jobs = []
        for n in range(16):
            batch = [Event(f"e-{n}-{i}", f"c-{n}-{i}", "page_view", NOW, {}) for i in range(1000)]
            write = store.events_write(batch, apply_event, NOW)
            answers.append(Future())
            jobs.append(_Job(write.fn, write.keys, future=answers[-1]))
        _queued_together(store._batcher, jobs)
        outcomes = [answer.result(timeout=120) for answer in answers]
        assert [len(o) for o in outcomes] == [1000] * 16
        assert store.load_customer("c-15-999") is not None and store.load_customer("c-0-0") is not None
    finally:
        store.close()


def test_a_lease_is_renewed_while_a_batch_waits_for_another_hosts_lock(postgres_url: str) -> None:
    """A host frozen mid-transaction holds a customer's lock; a batch needing it waits (here the group commit waits
    as long as the lock timeout, as it did before writes were set apart for a busy key). Lease renewals must not
    wait behind such a batch: the lease would run out meanwhile."""
    store = Store(postgres_url)
    store._batcher._lane.patience_ms = None
    frozen_host = store._writer_engine.connect()
    try:
        frozen = frozen_host.begin()
        frozen_host.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": store.lock_id("customer:c1")})
        blocked: Future[None] = Future()
        batch = threading.Thread(target=lambda: blocked.set_result(store.write(lambda c: None, ["customer:c1"])))
        batch.start()
        with store._reader.connect() as conn:
            _until(lambda: conn.execute(text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")).scalar_one() == 1)
        assert store.try_lease("online-learner", "me", NOW, timedelta(seconds=10))
        assert store.lease_held("online-learner", NOW)
        store.release_lease("online-learner", "me")
        assert not blocked.done()  # the batch still waits for the frozen host's lock
        frozen.rollback()
        batch.join(timeout=60)
        assert blocked.result(timeout=0) is None
    finally:
        frozen_host.close()
        store.close()


def _until(condition: Callable[[], bool]) -> None:
    for _ in range(3000):
        if condition():
            return
        threading.Event().wait(0.01)
    raise AssertionError("condition not met in 30 s")


def _waiting_for_locks(store: Store) -> int:
    with store._reader.connect() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")).scalar_one())


def _put(key: str) -> Callable[[Connection], str]:
    return lambda conn: conn.execute(t.meta_kv.insert().values(key=key, value="x")) and key


def _stored(store: Store, keys: list[str]) -> list[str]:
    return sorted(store.read(lambda c: [r[0] for r in c.execute(select(t.meta_kv.c.key).where(
        t.meta_kv.c.key.in_(keys)))]))


def test_a_write_waiting_for_a_frozen_hosts_lock_holds_up_no_other_write(postgres_url: str) -> None:
    """Another host froze mid-transaction holding customer c1's lock. A write for c1 waits for it (up to the lock
    timeout) apart from the group commit, and the writes after it, for other customers, commit meanwhile."""
    store = Store(postgres_url)
    frozen_host = store._writer_engine.connect()
    try:
        frozen = frozen_host.begin()
        frozen_host.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": store.lock_id("customer:c1")})
        blocked: Future[str] = Future()
        waiter = threading.Thread(target=lambda: blocked.set_result(store.write(_put("w-c1"), ["customer:c1"])))
        waiter.start()
        _until(lambda: _waiting_for_locks(store) == 1)
        assert store.write(_put("w-c2"), ["customer:c2"]) == "w-c2"
        assert store.write(_put("w-c3"), ["customer:c3", "shared:catalog"]) == "w-c3"
        assert not blocked.done() and _stored(store, ["w-c1"]) == []
        frozen.rollback()  # the frozen host's session ends
        waiter.join(timeout=60)
        assert blocked.result(timeout=0) == "w-c1"
        assert _stored(store, ["w-c1", "w-c2", "w-c3"]) == ["w-c1", "w-c2", "w-c3"]
    finally:
        frozen_host.close()
        store.close()


def test_a_batch_sets_apart_only_the_writes_that_need_a_busy_key(postgres_url: str) -> None:
    """In one group transaction: the writes needing the held key are rolled back and wait apart; the others
    commit together, once each."""
    store = Store(postgres_url)
    frozen_host = store._writer_engine.connect()
    try:
        frozen = frozen_host.begin()
        frozen_host.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": store.lock_id("customer:c1")})
        answers = {key: Future[Any]() for key in ("b-c1", "b-c2", "b-c1-c4", "b-c3")}
        keys = {"b-c1": ["customer:c1"], "b-c2": ["customer:c2"], "b-c1-c4": ["customer:c4", "customer:c1"],
                "b-c3": ["customer:c3"]}
        jobs = [_Job(_put(key), keys[key], future=answers[key]) for key in answers]
        _queued_together(store._batcher, jobs)
        assert answers["b-c2"].result(timeout=60) == "b-c2" and answers["b-c3"].result(timeout=60) == "b-c3"
        assert not answers["b-c1"].done() and not answers["b-c1-c4"].done()
        assert _stored(store, list(answers)) == ["b-c2", "b-c3"]
        frozen.rollback()
        assert answers["b-c1"].result(timeout=60) == "b-c1"
        assert answers["b-c1-c4"].result(timeout=60) == "b-c1-c4"
        assert _stored(store, list(answers)) == sorted(answers)
    finally:
        frozen_host.close()
        store.close()


class _CountingLocks:
    """Counts, of the batcher's lock taking: the group commit's waits for busy keys (the 200 ms), and the patient
    lane's waits (keys waited for in order)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.brief_waits = 0
        self.patient_waits = 0
        self.briefly_waited_for: list[int] = []  # the keys of those brief waits
        real_lock_keys, real_wait = batcher_module.lock_keys, engine_module._wait_briefly

        def lock_keys(conn: Connection, keys: list[str], patience_ms: int | None = None, try_first: bool = True,
                      no_wait: frozenset[int] = frozenset(), **options: Any) -> None:
            self.patient_waits += not try_first
            real_lock_keys(conn, keys, patience_ms, try_first, no_wait, **options)

        def wait_briefly(conn: Connection, busy: list[int], shared: set[int], patience_ms: int) -> None:
            if patience_ms == batcher_module.LOCK_PATIENCE_MS:
                self.brief_waits += 1
                self.briefly_waited_for += busy
            real_wait(conn, busy, shared, patience_ms)

        monkeypatch.setattr(batcher_module, "lock_keys", lock_keys)
        monkeypatch.setattr(engine_module, "_wait_briefly", wait_briefly)


def _frozen_holding(store: Store, keys: list[str]) -> tuple[Connection, Any]:
    """Another host's session, frozen mid-transaction while it holds these keys."""
    conn = store._writer_engine.connect()
    transaction = conn.begin()
    for key in keys:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": store.lock_id(key)})
    return conn, transaction


def test_every_busy_key_of_a_batch_is_set_apart_at_once_and_remembered(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten keys held by a frozen host: the group commit waits once (not ten times 200 ms) and sets apart the ten
    writes needing them together; a later write for one of them, still held, is set apart without waiting again,
    and once they are free again writes for them commit in the group commit."""
    counting = _CountingLocks(monkeypatch)
    store = Store(postgres_url)
    frozen_host, frozen = _frozen_holding(store, [f"customer:h{i}" for i in range(10)])
    try:
        answers = {f"m-h{i}": Future[Any]() for i in range(10)} | {"m-free": Future[Any]()}
        jobs = [_Job(_put(key), [f"customer:{key[2:]}"], future=answer) for key, answer in answers.items()]
        _queued_together(store._batcher, jobs)
        assert answers["m-free"].result(timeout=60) == "m-free"
        assert counting.brief_waits == 1
        assert store._batcher._busy.keys() == {store.lock_id(f"customer:h{i}") for i in range(10)}
        later: Future[str] = Future()
        threading.Thread(target=lambda: later.set_result(store.write(_put("m-h3-later"), ["customer:h3"]))).start()
        _until(lambda: store._batcher._patient_queue.qsize() == 10)  # the nine not yet tried there, and it
        assert counting.brief_waits == 1
        assert not any(answer.done() for key, answer in answers.items() if key != "m-free") and not later.done()
        frozen.rollback()
        assert sorted(answer.result(timeout=60) for answer in answers.values()) == sorted(answers)
        assert later.result(timeout=60) == "m-h3-later"
        assert _stored(store, [*answers, "m-h3-later"]) == sorted([*answers, "m-h3-later"])
        assert not store._batcher._busy  # each had again
        patient_waits = counting.patient_waits
        assert store.write(_put("m-h4-again"), ["customer:h4"]) == "m-h4-again"
        assert counting.patient_waits == patient_waits and counting.brief_waits == 1  # in the group commit
    finally:
        frozen_host.close()
        store.close()


def test_writes_set_apart_are_answered_by_their_deadline_not_one_lock_timeout_after_another(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three writes for a key a frozen host never lets go of: answered 503 once the lock timeout from when they
    were set apart has passed (the first's wait uses it up; the others are not waited for again), where one at a
    time they took one lock timeout after another (10, 20, 30 s)."""
    monkeypatch.setattr(batcher_module, "WRITER_LOCK_TIMEOUT_MS", 1_000)
    counting = _CountingLocks(monkeypatch)
    store = Store(postgres_url)
    frozen_host, frozen = _frozen_holding(store, ["customer:f1"])
    try:
        answers = [Future[Any]() for _ in range(3)]
        _queued_together(store._batcher, [_Job(_put(f"d-{i}"), ["customer:f1"], future=answer)
                                          for i, answer in enumerate(answers)])
        for answer in answers:
            with pytest.raises(StoreUnavailable, match="lock timeout"):
                answer.result(timeout=60)
        assert counting.patient_waits == 1 and counting.brief_waits == 1
        assert _stored(store, ["d-0", "d-1", "d-2"]) == []
        frozen.rollback()
        assert store.write(_put("d-after"), ["customer:f1"]) == "d-after"  # the key is free again, and not waited for
        assert not store._batcher._busy
    finally:
        frozen_host.close()
        store.close()


def test_a_write_set_apart_is_answered_once_even_when_its_batch_then_fails(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected error in the batch's next run fails the writes still in it, not those set apart (which the
    patient lane commits and answers): each write gets exactly one answer, and the patient lane lives on."""
    store = Store(postgres_url)
    frozen_host, frozen = _frozen_holding(store, ["customer:x1"])
    real_mark = batcher_module._mark
    injected = 0

    def failing_mark(conn: Connection, lane: Any) -> str | None:
        nonlocal injected
        if lane is store._batcher._lane and store._batcher._busy and not injected:  # the run after setting apart
            injected += 1
            raise RuntimeError("injected: a bug outside SQLAlchemy")
        return real_mark(conn, lane)

    monkeypatch.setattr(batcher_module, "_mark", failing_mark)
    try:
        apart, failed = Future[Any](), Future[Any]()
        _queued_together(store._batcher, [_Job(_put("e-apart"), ["customer:x1"], future=apart),
                                          _Job(_put("e-other"), ["customer:x2"], future=failed)])
        with pytest.raises(StoreUnavailable):
            failed.result(timeout=60)
        assert injected == 1 and not apart.done()
        frozen.rollback()
        assert apart.result(timeout=60) == "e-apart"
        assert store._batcher.alive
        assert _stored(store, ["e-apart", "e-other"]) == ["e-apart"]
    finally:
        frozen_host.close()
        store.close()


def test_the_sweep_closes_what_it_can_and_leaves_decisions_another_session_locks(postgres_url: str) -> None:
    """A frozen host holds one due decision's lock (it was storing a reward for it): the sweep closes the others at
    once instead of waiting the lock timeout (its lease, renewed between rounds, would run out), and leaves that
    one for a later sweep."""
    store = Store(postgres_url)
    frozen_host = None
    try:
        store.put_action("a", Action(channels=["web"]), NOW)
        store.put_policy("web", Policy(channels=["web"], reward=RewardSpec(window="1h", aggregation="sum")), NOW)
        engine = DecisionEngine(store, store.load_catalog, NoModel(), ManualClock(NOW), rng=random.Random(0))
        locked, free = (engine.decide(DecideRequest(c, "web", {})).decision.decision_id for c in ("c-1", "c-2"))
        frozen_host, frozen = _frozen_holding(store, [f"decision:{locked}"])
        later = NOW + timedelta(hours=2)
        assert store.close_due(later) == 1
        assert _states(store, [locked, free]) == {locked: "open", free: "final"}
        assert store.close_due(later) == 0  # left alone for a while: not waited for again
        frozen.rollback()
        store._held_decisions.clear()  # that while (a lock timeout) has passed
        assert store.close_due(later) == 1
        assert _states(store, [locked, free]) == {locked: "final", free: "final"}
    finally:
        if frozen_host is not None:
            frozen_host.close()
        store.close()


def _states(store: Store, decision_ids: list[str]) -> dict[str, str]:
    return dict(store.read(lambda c: c.execute(select(t.decisions.c.decision_id, t.decisions.c.state).where(
        t.decisions.c.decision_id.in_(decision_ids))).all()))


def test_a_catalog_change_does_not_wait_for_a_frozen_decision(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host frozen mid-decision holds the catalog's lock in shared mode. A catalog change waiting for it would
    hold up every new decision (PostgreSQL queues shared requests behind a waiting exclusive one) for the lock
    timeout: it is refused after the group commit's 200 ms instead, and decisions go on."""
    counting = _CountingLocks(monkeypatch)
    store = Store(postgres_url)
    frozen_host = None
    try:
        store.put_action("a", Action(channels=["web"]), NOW)
        store.put_policy("web", Policy(channels=["web"], reward=RewardSpec(window="1h", aggregation="sum")), NOW)
        frozen_host = store._writer_engine.connect()
        frozen = frozen_host.begin()
        frozen_host.execute(text("SELECT pg_advisory_xact_lock_shared(:k)"), {"k": store.lock_id("catalog")})
        with pytest.raises(StoreUnavailable, match="catalog is in use"):
            store.put_action("b", Action(channels=["web"]), NOW)
        assert counting.patient_waits == 0 and store._batcher._patient_queue.empty()  # not set apart to wait
        engine = DecisionEngine(store, store.load_catalog, NoModel(), ManualClock(NOW), rng=random.Random(0))
        assert engine.decide(DecideRequest("c-1", "web", {})).decision.actions[0].action_id == "a"
        assert not store._batcher._busy  # the decision had the key (shared)
        frozen.rollback()
        assert store.put_action("b", Action(channels=["web"]), NOW)
    finally:
        if frozen_host is not None:
            frozen_host.close()
        store.close()


def test_writes_needing_a_key_only_shared_are_not_set_apart_for_an_exclusive_wait(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In one batch, a catalog change (the catalog's key exclusively) and a decision (shared) while a frozen
    decision holds it shared: the change is refused, and the decision, which the shared holder does not block,
    commits in the group commit; nothing is left waiting apart (were it, every later decision would queue there)."""
    counting = _CountingLocks(monkeypatch)
    store = Store(postgres_url)
    frozen_host = store._writer_engine.connect()
    try:
        frozen = frozen_host.begin()
        frozen_host.execute(text("SELECT pg_advisory_xact_lock_shared(:k)"), {"k": store.lock_id("catalog")})
        change, decision = Future[Any](), Future[Any]()
        _queued_together(store._batcher, [
            _Job(_put("s-change"), ["catalog"], future=change, wait_apart=False),
            _Job(_put("s-decision"), ["shared:catalog", "customer:z1"], future=decision)])
        assert decision.result(timeout=60) == "s-decision"
        with pytest.raises(LocksHeld):
            change.result(timeout=60)
        assert counting.patient_waits == 0 and not store._batcher._busy
        assert store.write(_put("s-later"), ["shared:catalog", "customer:z2"]) == "s-later"
        assert counting.patient_waits == 0
        frozen.rollback()
    finally:
        frozen_host.close()
        store.close()


def test_a_key_free_again_is_had_at_once_in_either_lane(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys qa (a frozen host's for good) and qb (held for a moment) set two writes apart, qb's behind qa's. Once qb
    is free, a new write for it commits in the group commit, not behind qa's wait; and qb's own write, once qa's
    wait has used up the time they were set apart with, is still tried and commits, not answered 503 untried."""
    monkeypatch.setattr(batcher_module, "WRITER_LOCK_TIMEOUT_MS", 5_000)
    store = Store(postgres_url)
    host_a, frozen_a = _frozen_holding(store, ["customer:qa"])
    host_b, frozen_b = _frozen_holding(store, ["customer:qb"])
    try:
        write_a, write_b = Future[Any](), Future[Any]()
        _queued_together(store._batcher, [_Job(_put("q-a"), ["customer:qa"], future=write_a),
                                          _Job(_put("q-b"), ["customer:qb"], future=write_b)])
        _until(lambda: store._batcher._busy.keys() == {store.lock_id("customer:qa"), store.lock_id("customer:qb")})
        frozen_b.rollback()
        assert store.write(_put("q-new"), ["customer:qb"]) == "q-new"
        assert not write_a.done()  # the patient lane still waits for qa, within its 5 s
        with pytest.raises(StoreUnavailable, match="lock timeout"):
            write_a.result(timeout=60)
        assert write_b.result(timeout=60) == "q-b"
        assert _stored(store, ["q-a", "q-b", "q-new"]) == ["q-b", "q-new"]
    finally:
        frozen_a.rollback()
        host_a.close()
        host_b.close()
        store.close()


def _budget_used(store: Store, action_id: str) -> int:
    return int(store.read(lambda c: c.execute(select(func.coalesce(func.sum(t.budget_counters.c.used), 0)).where(
        t.budget_counters.c.action_id == action_id)).scalar_one()))


def test_a_decision_leaves_out_a_budget_a_frozen_host_holds(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A host frozen mid-decision holds a budgeted action's lock, so that budget's use cannot be checked. A decision
    drawing the action leaves it out, as an exhausted budget would, after the group commit's 200 ms, rather than
    wait up to the lock timeout (10 s) and answer 503; the next one does not wait again. Once the host's session
    ends the action is drawn, and counted, again."""
    counting = _CountingLocks(monkeypatch)
    store = Store(postgres_url)
    frozen_host = None
    try:
        store.put_action("b", Action(channels=["web"], budget=Budget(limit=100, window="1d")), NOW)
        store.put_action("free", Action(channels=["web"]), NOW)
        store.put_policy("web", Policy(channels=["web"], reward=RewardSpec(window="1h", aggregation="sum")), NOW)
        engine = DecisionEngine(store, store.load_catalog, NoModel(), ManualClock(NOW), rng=random.Random(0))
        both = DecideRequest("c-1", "web", {}, candidates=["b", "free"], slots=2)
        frozen_host, frozen = _frozen_holding(store, ["budget:b"])

        for decided in (engine.decide(both).decision, asyncio.run(engine.decide_async(both)).decision):
            assert [choice.action_id for choice in decided.actions] == ["free"]
            assert [(e.action_id, e.rule, e.detail) for e in decided.excluded] == [("b", "budget:1d", BUDGET_HELD)]
            assert [(aid, p) for aid, p in decided.ranking] == [("free", 1.0)]
            assert decided.actions[0].probability == 1.0
        assert counting.briefly_waited_for.count(store.lock_id("budget:b")) == 1  # then remembered
        assert counting.patient_waits == 0 and store._batcher._patient_queue.empty()  # never set apart
        assert _budget_used(store, "b") == 0

        frozen.rollback()
        decided = engine.decide(both).decision
        assert sorted(choice.action_id for choice in decided.actions) == ["b", "free"] and not decided.excluded
        assert _budget_used(store, "b") == 1 and store.lock_id("budget:b") not in store._batcher._busy
    finally:
        if frozen_host is not None:
            frozen_host.close()
        store.close()


def test_a_decision_still_waits_for_its_customer_a_frozen_host_holds(postgres_url: str) -> None:
    """Only budgets are left out: a customer's lock (its caps and cooldowns) is waited for apart, as before, and
    the decision commits once the frozen host's session ends."""
    store = Store(postgres_url)
    frozen_host = None
    try:
        store.put_action("b", Action(channels=["web"], budget=Budget(limit=100, window="1d")), NOW)
        store.put_policy("web", Policy(channels=["web"], reward=RewardSpec(window="1h", aggregation="sum")), NOW)
        engine = DecisionEngine(store, store.load_catalog, NoModel(), ManualClock(NOW), rng=random.Random(0))
        frozen_host, frozen = _frozen_holding(store, ["customer:c-1", "budget:b"])
        answer: Future[Any] = Future()
        threading.Thread(target=lambda: answer.set_result(engine.decide(DecideRequest("c-1", "web", {})))).start()
        _until(lambda: store._batcher._patient_queue.empty() and _waiting_for_locks(store) >= 1)  # waits apart
        assert not answer.done()
        frozen.rollback()
        decided = answer.result(timeout=60).decision
        assert [choice.action_id for choice in decided.actions] == ["b"] and not decided.excluded
        assert _budget_used(store, "b") == 1
    finally:
        if frozen_host is not None:
            frozen_host.close()
        store.close()


def test_deployments_in_two_schemas_of_one_database_do_not_hold_each_others_locks(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL's advisory locks belong to the database: keys are prefixed with the schema, so a session
    frozen in one deployment's schema holds up no write of a deployment in another (nor a test beside this one)."""
    counting = _CountingLocks(monkeypatch)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(_pg_url())
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    store, other = Store(postgres_url), Store(_pg_url(schema))
    frozen_host = None
    try:
        assert store.lock_namespace and other.lock_namespace == f"{schema}/"
        assert store.lock_id("customer:c1") != other.lock_id("customer:c1")
        frozen_host, frozen = _frozen_holding(store, ["customer:c1"])
        assert other.write(_put("o-c1"), ["customer:c1"]) == "o-c1"  # at once: not the same lock
        assert counting.brief_waits == 0 and not other._batcher._busy
        frozen.rollback()
    finally:
        if frozen_host is not None:
            frozen_host.close()
        store.close()
        other.close()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def test_a_schema_created_ahead_in_the_search_path_does_not_change_the_locks_of_the_tables(postgres_url: str) -> None:
    """Keys were prefixed with the first schema of the search path: a schema created there later (PostgreSQL's
    default path starts with the role's name) gave the hosts started after it other locks for the same tables,
    and one wrote while another held the key (review)."""
    store = Store(postgres_url)
    schema = store.lock_namespace.rstrip("/")
    ahead = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(_pg_url())
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{ahead}"'))
    try:
        later = Store(_pg_url(f"{ahead},{schema}"))
        try:
            assert later.read(lambda c: c.execute(text("SELECT current_schema()")).scalar()) == ahead
            assert later.lock_namespace == store.lock_namespace == f"{schema}/"
            assert later.lock_id("customer:c1") == store.lock_id("customer:c1")
        finally:
            later.close()
    finally:
        store.close()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{ahead}" CASCADE'))
        admin.dispose()


def test_a_decision_waiting_apart_for_its_customer_holds_no_budget_meanwhile(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A frozen host holds one customer's key. The decision for that customer waits for it apart; it took its
    budget keys first when they sorted first and held them all the while, so every other decision of its own
    host left those budgets out for up to the lock timeout (a two-host run). It now takes budgets last, by trying."""
    counting = _CountingLocks(monkeypatch)
    store = Store(postgres_url)
    frozen_host = None
    try:
        store.put_action("b", Action(channels=["web"], budget=Budget(limit=100, window="1d")), NOW)
        store.put_policy("web", Policy(channels=["web"], reward=RewardSpec(window="1h", aggregation="sum")), NOW)
        engine = DecisionEngine(store, store.load_catalog, NoModel(), ManualClock(NOW), rng=random.Random(0))
        customer = next(f"c-{n}" for n in range(1000)  # one whose key is waited for after the budget's, in order
                        if store.lock_id(f"customer:c-{n}") > store.lock_id("budget:b"))
        frozen_host, frozen = _frozen_holding(store, [f"customer:{customer}"])
        waiting: Future[Any] = Future()
        threading.Thread(target=lambda: waiting.set_result(engine.decide(DecideRequest(customer, "web", {})))).start()
        _until(lambda: counting.patient_waits == 1 and _waiting_for_locks(store) == 1)  # waiting apart
        other = engine.decide(DecideRequest("c-other", "web", {})).decision
        assert [choice.action_id for choice in other.actions] == ["b"] and not other.excluded
        frozen.rollback()
        decided = waiting.result(timeout=60).decision
        assert [choice.action_id for choice in decided.actions] == ["b"] and not decided.excluded
        assert _budget_used(store, "b") == 2
    finally:
        if frozen_host is not None:
            frozen_host.close()
        store.close()


def _waiting_for(store: Store, key: str) -> int:
    """Sessions waiting for this key's advisory lock (a 64-bit key shows as two 32-bit halves in pg_locks)."""
    unsigned = store.lock_id(key) & 0xFFFFFFFFFFFFFFFF
    with store._reader.connect() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objsubid = 1 "
            "AND classid = CAST(:hi AS oid) AND objid = CAST(:lo AS oid)"),
            {"hi": unsigned >> 32, "lo": unsigned & 0xFFFFFFFF}).scalar_one())


def test_a_decision_that_waited_for_its_customer_waits_briefly_for_a_budget_in_use(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once its customer's key is had, a decision that waited apart takes its budget keys as the group commit does:
    waiting briefly for one another write holds for a moment, rather than leaving the action out at once (a
    two-host run: a decision that had waited seconds lost its budgeted action to a write of a few milliseconds)."""
    counting = _CountingLocks(monkeypatch)
    store = Store(postgres_url)
    # The brief wait for the budget, long enough to watch; the group commit keeps its 200 ms (set at its start).
    monkeypatch.setattr(batcher_module, "LOCK_PATIENCE_MS", 30_000)
    frozen_host = brief_host = None
    try:
        store.put_action("b", Action(channels=["web"], budget=Budget(limit=100, window="1d")), NOW)
        store.put_policy("web", Policy(channels=["web"], reward=RewardSpec(window="1h", aggregation="sum")), NOW)
        engine = DecisionEngine(store, store.load_catalog, NoModel(), ManualClock(NOW), rng=random.Random(0))
        frozen_host, frozen = _frozen_holding(store, ["customer:c-1"])
        waiting: Future[Any] = Future()
        threading.Thread(target=lambda: waiting.set_result(engine.decide(DecideRequest("c-1", "web", {})))).start()
        _until(lambda: counting.patient_waits == 1 and _waiting_for(store, "customer:c-1") == 1)
        brief_host, brief = _frozen_holding(store, ["budget:b"])  # another write, holding the budget a moment
        frozen.rollback()
        _until(lambda: _waiting_for(store, "budget:b") == 1)
        brief.rollback()
        decided = waiting.result(timeout=60).decision
        assert [choice.action_id for choice in decided.actions] == ["b"] and not decided.excluded
        assert _budget_used(store, "b") == 1
    finally:
        for host in (frozen_host, brief_host):
            if host is not None:
                host.close()
        store.close()


def test_a_write_waiting_apart_that_loses_its_connection_waits_only_until_its_deadline(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The patient lane's wait runs again on a new connection when its connection dies (a database restart, an
    idle timeout); it waits what is left until the write's deadline, not the whole time again."""
    monkeypatch.setattr(batcher_module, "WRITER_LOCK_TIMEOUT_MS", 30_000)
    waits: list[tuple[float, int | None]] = []  # (when, patience) of each wait in order
    real_lock_keys = batcher_module.lock_keys

    def lock_keys(conn: Connection, keys: list[str], patience_ms: int | None = None, try_first: bool = True,
                  *args: Any, **options: Any) -> None:
        if not try_first:
            waits.append((time.monotonic(), patience_ms))
        real_lock_keys(conn, keys, patience_ms, try_first, *args, **options)

    monkeypatch.setattr(batcher_module, "lock_keys", lock_keys)
    store = Store(postgres_url)
    frozen_host, frozen = _frozen_holding(store, ["customer:g1"])
    try:
        answer: Future[Any] = Future()
        _queued_together(store._batcher, [_Job(_put("g-1"), ["customer:g1"], future=answer)])
        _until(lambda: len(waits) == 1 and _waiting_for_locks(store) == 1)  # waiting apart, on its connection
        patient = store._batcher._patient
        assert patient is not None and patient.conn is not None
        pid = patient.conn.connection.dbapi_connection.info.backend_pid  # type: ignore[union-attr]
        with store._reader.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        _until(lambda: len(waits) == 2)  # run again, on a new connection
        (first_at, first), (second_at, second) = waits
        assert first is not None and second is not None
        between_ms = (second_at - first_at) * 1000
        assert between_ms >= 1 and second <= first - between_ms + 2  # what was left of it (it was the whole again)
        frozen.rollback()
        assert answer.result(timeout=60) == "g-1"
        assert _stored(store, ["g-1"]) == ["g-1"]
    finally:
        frozen_host.close()
        store.close()
