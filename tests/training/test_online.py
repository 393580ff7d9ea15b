"""The online learner: learns joined examples off the request path, snapshots, and resumes exactly."""

from __future__ import annotations

import math
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, func, select, update

from bandits.registry import PolicyModels
from bandits.vw_args import build_args
from bandits.vw_policy import VWPolicy, model_checksum, model_fingerprint
from features.namespaces import NamespaceFeaturizer
from nba.catalog import Action, Policy, RewardSpec
from nba.clock import ManualClock, epoch_ms
from nba.decide import DecideRequest, DecisionEngine
from nba.store import Store, outcome_repo
from nba.store import schema as t
from nba.types import Decision
from training.online import LEASE_TTL, OnlineLearner, example_from_log, rest_after
from training.simulator import SegmentSimulator


def _setup(store: Store, clock: ManualClock, sim: SegmentSimulator) -> tuple[DecisionEngine, PolicyModels]:
    for action_id in sim.action_ids:
        store.put_action(action_id, Action(channels=["web"], attributes=sim.action_attributes(action_id)), clock.now())
    store.put_policy("web", Policy(channels=["web"], reward=RewardSpec(aggregation="first")), clock.now())
    models = PolicyModels(store, NamespaceFeaturizer())
    engine = DecisionEngine(store, store.load_catalog, models, clock, rng=random.Random(1))
    return engine, models


def _learner(store: Store, models: PolicyModels, clock: ManualClock) -> OnlineLearner:
    return OnlineLearner(store, models, NamespaceFeaturizer(), store.load_catalog, clock)


def _play(engine: DecisionEngine, store: Store, sim: SegmentSimulator, clock: ManualClock, rounds: int) -> None:
    for _ in range(rounds):
        customer = sim.customer()
        decision = engine.decide(DecideRequest(customer.customer_id, "web", dict(customer.context))).decision
        store.add_reward(decision.decision_id, 0, sim.reward(customer, decision.actions[0].action_id), clock.now())


def test_learner_resumes_from_snapshot_and_relearns_only_the_rest(store: Store, clock: ManualClock) -> None:
    sim = SegmentSimulator(seed=2)
    engine, models = _setup(store, clock, sim)
    learner = _learner(store, models, clock)
    _play(engine, store, sim, clock, 120)
    assert learner.learn_pending() == 120
    learner.snapshot_all()
    _play(engine, store, sim, clock, 30)
    assert learner.learn_pending() == 30  # learned, not yet snapshotted: a crash now loses these 30 only

    restarted = _learner(store, PolicyModels(store, NamespaceFeaturizer()), clock)
    assert restarted.learn_pending() == 30  # exactly the examples the snapshot does not hold
    assert restarted.learn_pending() == 0
    restarted.snapshot_all()
    snapshot = store.latest_snapshot("web", 1)
    assert snapshot is not None and snapshot.examples == 150


def test_published_model_serves_and_learns_the_segments(sqlite_url: str, clock: ManualClock) -> None:
    store = Store(sqlite_url)
    sim = SegmentSimulator(seed=4)
    engine, models = _setup(store, clock, sim)
    learner = _learner(store, models, clock)
    hits = []
    for _ in range(15):
        _play(engine, store, sim, clock, 100)
        learner.learn_pending()
        learner.publish_all()
    for _ in range(300):
        customer = sim.customer()
        decision = engine.decide(DecideRequest(customer.customer_id, "web", dict(customer.context))).decision
        hits.append(decision.actions[0].action_id == sim.best_action(customer.segment))
    assert sum(hits) / len(hits) > 0.8
    assert all(status.healthy for status in models.statuses())
    store.close()


def test_corrupt_snapshot_means_fallback_and_an_unhealthy_status(store: Store, clock: ManualClock) -> None:
    sim = SegmentSimulator(seed=6)
    engine, _ = _setup(store, clock, sim)
    store.save_snapshot("web", 1, b"not a vowpal wabbit model", 10, [], clock.now())
    models = PolicyModels(store, NamespaceFeaturizer())
    engine = DecisionEngine(store, store.load_catalog, models, clock)
    decision = engine.decide(DecideRequest("c-1", "web", {"segment": "s0"})).decision
    assert decision.policy.mode == "fallback"
    assert [round(p, 9) for _, p in decision.ranking] == [0.25] * 4  # true (uniform) propensities are logged
    (status,) = models.statuses()
    assert not status.healthy and "unusable" in status.message


def test_example_from_log_rebuilds_conditional_slots(store: Store, clock: ManualClock) -> None:
    sim = SegmentSimulator(seed=8)
    engine, _ = _setup(store, clock, sim)
    decision = engine.decide(DecideRequest("c-9", "web", {"segment": "s1"}, slots=3)).decision
    for slot in range(3):
        store.add_reward(decision.decision_id, slot, 1.0, clock.now())
    examples = store.pending_examples("web", 1, 0)
    assert [e.slot for e in examples] == [0, 1, 2]
    for example in examples:
        _, actions, chosen, reward, probability, keys = example_from_log(example, NamespaceFeaturizer())
        taken = decision.actions[example.slot]
        assert len(actions) == 4 - example.slot  # slots above are not candidates for this one
        assert keys[chosen] == taken.action_id and probability == taken.probability and reward == 1.0
    clock.advance(timedelta(hours=2))


def test_snapshots_record_the_checksum_and_fingerprint_of_the_model(store: Store, clock: ManualClock) -> None:
    sim = SegmentSimulator(seed=10)
    engine, models = _setup(store, clock, sim)
    learner = _learner(store, models, clock)
    _play(engine, store, sim, clock, 20)
    learner.learn_pending()
    learner.snapshot_all()
    snapshot = store.latest_snapshot("web", 1)
    assert snapshot is not None
    assert snapshot.checksum == model_checksum(snapshot.model)
    assert snapshot.fingerprint == model_fingerprint(build_args(Policy(channels=["web"]).learner))


def test_learner_resumes_from_the_newest_snapshot_that_passes_its_checks(store: Store, clock: ManualClock) -> None:
    sim = SegmentSimulator(seed=12)
    engine, models = _setup(store, clock, sim)
    learner = _learner(store, models, clock)
    _play(engine, store, sim, clock, 40)
    learner.learn_pending()
    learner.snapshot_all()
    good = store.latest_snapshot("web", 1)
    assert good is not None
    store.save_snapshot("web", 1, good.model[:-50], 60, [], clock.now(), checksum=good.checksum,
                        fingerprint=good.fingerprint)

    restarted = _learner(store, PolicyModels(store, NamespaceFeaturizer()), clock)
    _play(engine, store, sim, clock, 5)
    assert restarted.learn_pending() == 5
    restarted.snapshot_all()
    latest = store.latest_snapshot("web", 1)
    assert latest is not None and latest.examples == 45  # the good snapshot's 40, then the 5 new ones


def test_learner_skips_what_it_learned_since_the_snapshot_however_much(store: Store, clock: ManualClock) -> None:
    """Examples learned but not yet snapshotted are still pending in the store: each poll passes over them, even
    when they outnumber a batch, and learns only the rest."""
    sim = SegmentSimulator(seed=14)
    engine, models = _setup(store, clock, sim)
    learner = _learner(store, models, clock)
    _play(engine, store, sim, clock, 25)
    assert [learner.learn_pending(batch=10) for _ in range(4)] == [10, 10, 5, 0]
    learner.snapshot_all()
    snapshot = store.latest_snapshot("web", 1)
    assert snapshot is not None and snapshot.examples == 25
    assert store.pending_examples("web", 1, 0) == []


@pytest.mark.postgres
def test_example_committed_below_a_seq_already_read_is_learned_once(postgres_url: str, clock: ManualClock) -> None:
    """Two workers on one PostgreSQL database. A queued example takes its seq at INSERT and becomes visible at
    COMMIT, so a reward whose transaction commits late appears below a seq the learner has already read: the live
    learner learns it once it is committed, and learns nothing twice."""
    first, second = Store(postgres_url), Store(postgres_url)
    try:
        engine, _ = _setup(first, clock, SegmentSimulator(seed=16))
        slow, quick = (engine.decide(DecideRequest(f"c-{i}", "web", {})).decision.decision_id for i in range(2))
        enqueued, commit = threading.Event(), threading.Event()

        def slow_reward(conn: Connection) -> str:
            status = outcome_repo.add_reward(conn, slow, 0, 1.0, epoch_ms(clock.now()))  # its seq is taken here
            enqueued.set()
            assert commit.wait(timeout=60)  # ... and it commits once the learner has read past it
            return status

        learner = _learner(second, PolicyModels(second, NamespaceFeaturizer()), clock)
        with ThreadPoolExecutor(1) as pool:
            try:
                written = pool.submit(first.write, slow_reward, [f"decision:{slow}"])
                assert enqueued.wait(timeout=60)
                assert second.add_reward(quick, 0, 1.0, clock.now()) == "accepted"  # a higher seq, committed first
                assert [e.decision_id for e in second.pending_examples("web", 1, 0)] == [quick]
                assert learner.learn_pending() == 1
            finally:
                commit.set()
            assert written.result(timeout=60) == "accepted"
        assert [e.decision_id for e in second.pending_examples("web", 1, 0)] == [slow, quick]
        assert learner.learn_pending() == 1  # the late one, below the seq already read
        assert learner.learn_pending() == 0  # and the one learned before is not learned again
        learner.snapshot_all()
        snapshot = second.latest_snapshot("web", 1)
        assert snapshot is not None and snapshot.examples == 2
        assert second.pending_examples("web", 1, 0) == []
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("refused_meanwhile", [False, True], ids=["lapsed", "refused"])
def test_learner_that_regains_the_lease_resumes_from_the_other_learners_snapshot(
    store: Store, clock: ManualClock, refused_meanwhile: bool
) -> None:
    """Learner A cannot renew its lease within the TTL; B takes it over, learns and snapshots, then releases it.
    When A takes the lease again (whether or not it was refused it meanwhile), its in-memory model and learned
    seqs are stale: it rebuilds from B's snapshot, so the newest snapshot holds every example exactly once."""
    sim = SegmentSimulator(seed=18)
    engine, models = _setup(store, clock, sim)
    a, b = _learner(store, models, clock), _learner(store, models, clock)
    assert a.renew_lease()
    _play(engine, store, sim, clock, 3)
    assert a.learn_pending() == 3
    a.snapshot_all()
    _play(engine, store, sim, clock, 2)
    assert a.learn_pending() == 2  # learned, not yet snapshotted
    assert a.renew_lease() and a.learn_pending() == 0  # renewed in time: A keeps what it learned

    clock.advance(LEASE_TTL + timedelta(seconds=1))  # A does not renew within the TTL
    assert b.renew_lease()
    assert b.learn_pending() == 2  # B resumes from A's snapshot: the 2 it lacks
    _play(engine, store, sim, clock, 2)
    assert b.learn_pending() == 2
    b.snapshot_all()
    if refused_meanwhile:
        assert not a.renew_lease()
    b.stop()  # B's worker stops: lease released

    assert a.renew_lease()
    _play(engine, store, sim, clock, 1)
    assert a.learn_pending() == 1
    a.snapshot_all()
    latest = store.latest_snapshot("web", 1)
    assert latest is not None and latest.examples == 8
    assert store.pending_examples("web", 1, 0) == []


def test_a_learner_that_does_not_stop_in_time_takes_no_final_snapshot(
    store: Store, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot beside a learner thread still inside an iteration would race it for the model and the seqs it
    marks (review): a learner whose thread does not stop in time takes none; the queue keeps what it learned."""
    sim = SegmentSimulator(seed=2)
    engine, models = _setup(store, clock, sim)
    _play(engine, store, sim, clock, 20)
    learner = _learner(store, models, clock)
    learned, entered, release = [0], threading.Event(), threading.Event()
    learn = VWPolicy.learn

    def stalling_learn(self: VWPolicy, *args: Any, **kwargs: Any) -> Any:
        learned[0] += 1
        if learned[0] == 10:  # nine examples learned and not snapshotted: the thread stalls on the tenth
            entered.set()
            release.wait()
        return learn(self, *args, **kwargs)

    monkeypatch.setattr(VWPolicy, "learn", stalling_learn)
    learner.start()
    assert entered.wait(timeout=30)
    learner.stop(timeout=0.05)
    assert store.latest_snapshot("web", 1) is None
    release.set()
    assert learner._thread is not None
    learner._thread.join(timeout=30)
    assert not learner._thread.is_alive()
    snapshot = store.latest_snapshot("web", 1)  # the thread's own, at the end of its iteration: all of it, once
    assert snapshot is not None and snapshot.examples == 20 and store.pending_examples("web", 1, 0) == []


def test_a_learner_whose_lease_ran_out_mid_iteration_stores_no_snapshot(store: Store, clock: ManualClock) -> None:
    """Leases are renewed between iterations; a snapshot is checked against the lease in its own transaction, so a
    learner that stalled past its lease cannot store a model missing what the next holder learned (review)."""
    sim = SegmentSimulator(seed=18)
    engine, models = _setup(store, clock, sim)
    a, b = _learner(store, models, clock), _learner(store, models, clock)
    assert a.renew_lease()
    _play(engine, store, sim, clock, 2)
    assert a.learn_pending() == 2  # A's iteration learns, then stalls before its snapshot ...
    clock.advance(LEASE_TTL + timedelta(seconds=1))
    assert b.renew_lease()  # ... long enough for B to take over, learn more and snapshot
    _play(engine, store, sim, clock, 2)
    assert b.learn_pending() == 4
    b.snapshot_all()
    a.snapshot_all()  # A's iteration resumes
    latest = store.latest_snapshot("web", 1)
    assert latest is not None and latest.examples == 4
    assert not a.has_lease and store.pending_examples("web", 1, 0) == []


def test_an_unusable_example_is_skipped_and_the_model_keeps_learning(store: Store, clock: ManualClock) -> None:
    """A queued reward VW cannot learn from (one stored before rewards were bounded, say 1e308) would turn every
    weight NaN, and, failing each pass, stop all learning after it. It is skipped, logged, and leaves the queue."""
    sim = SegmentSimulator(seed=21)
    engine, models = _setup(store, clock, sim)
    learner = _learner(store, models, clock)
    _play(engine, store, sim, clock, 20)
    poisoned = store.read(lambda c: c.execute(select(func.min(t.learn_queue.c.seq))).scalar_one())
    store.write(lambda c: c.execute(update(t.learn_queue).where(t.learn_queue.c.seq == poisoned).values(reward=1e308)))

    assert learner.learn_pending() == 20
    learner.snapshot_all()
    snapshot = store.latest_snapshot("web", 1)
    assert snapshot is not None and snapshot.examples == 19  # all but the unusable one
    assert store.pending_examples("web", 1, 0) == []
    model = VWPolicy(build_args(Policy(channels=["web"]).learner), snapshot.model)
    featurizer = NamespaceFeaturizer()
    customer = sim.customer()
    scores = model.score(featurizer.shared(dict(customer.context), {}),
                         [featurizer.action(a, sim.action_attributes(a)) for a in sim.action_ids])
    assert all(math.isfinite(s) for s in scores) and len(set(scores)) > 1  # still a model that tells actions apart

    _play(engine, store, sim, clock, 5)
    assert learner.learn_pending() == 5


def test_vw_refuses_a_reward_or_probability_it_cannot_learn_from() -> None:
    model = VWPolicy(build_args(Policy(channels=["web"]).learner))
    shared, actions = {"C": {"x": 1.0}}, [{"A": {"id=a": 1.0}}, {"A": {"id=b": 1.0}}]
    for reward, probability in [(1e308, 0.5), (-1.5e15, 0.5), (float("nan"), 0.5), (1.0, 0.0), (1.0, 1.5)]:
        with pytest.raises(ValueError):
            model.learn(shared, actions, 0, reward, probability)
    model.learn(shared, actions, 0, 1e15, 1.0)  # the limits themselves are fine
    model.learn(shared, actions, 1, -1.2e9, 0.5)  # a `sum` of client rewards may pass REWARD_LIMIT
    assert model.examples_learned == 2


def test_a_sum_of_rewards_past_the_reward_limit_is_learned(store: Store, clock: ManualClock) -> None:
    """Each reward is within ±1e9; their sum need not be, and the decision is learned from with the sum."""
    for action_id in ("a", "b"):
        store.put_action(action_id, Action(channels=["web"]), clock.now())
    store.put_policy("web", Policy(channels=["web"], reward=RewardSpec(aggregation="sum")), clock.now())
    models = PolicyModels(store, NamespaceFeaturizer())
    engine = DecisionEngine(store, store.load_catalog, models, clock, rng=random.Random(1))
    decision = engine.decide(DecideRequest("c1", "web", {})).decision
    for _ in range(2):
        assert store.add_reward(decision.decision_id, 0, 6e8, clock.now()) == "accepted"
    clock.advance(timedelta(hours=2))
    assert store.close_due(clock.now()) == 1
    learner = _learner(store, models, clock)
    assert learner.learn_pending() == 1
    learner.snapshot_all()
    snapshot = store.latest_snapshot("web", 1)
    assert snapshot is not None and snapshot.examples == 1


def _learned_then_decided(
    store: Store, clock: ManualClock, seed: int, rounds: int
) -> tuple[DecisionEngine, OnlineLearner, Any, Decision]:
    """`rounds` rewarded decisions learned and snapshotted, then one more decision (not rewarded yet)."""
    sim = SegmentSimulator(seed=seed)
    engine, models = _setup(store, clock, sim)
    learner = _learner(store, models, clock)
    _play(engine, store, sim, clock, rounds)
    assert learner.learn_pending() == rounds
    learner.snapshot_all()
    customer = sim.customer()
    decision = engine.decide(DecideRequest(customer.customer_id, "web", dict(customer.context))).decision
    return engine, learner, customer, decision


def _edited(store: Store, clock: ManualClock, policy: Policy) -> PolicyModels:
    """Save `policy` as the second version of `web`; the models of a process that starts then, serving it."""
    version, _ = store.put_policy("web", policy, clock.now())
    assert version == 2
    serving = PolicyModels(store, NamespaceFeaturizer())
    assert serving.scorer("web", 2, policy) is not None
    return serving


def test_a_policy_edit_that_keeps_the_learner_continues_its_model_and_learns_earlier_decisions(
    store: Store, clock: ManualClock
) -> None:
    """A new version (here: a longer reward window) continues the previous version's model, and the rewards of
    decisions made just before the edit are learned by it: they were accepted, so they must be learned."""
    engine, learner, customer, before_edit = _learned_then_decided(store, clock, seed=23, rounds=20)
    assert before_edit.policy.version == 1

    serving = _edited(store, clock, Policy(channels=["web"], reward=RewardSpec(aggregation="first", window="2h")))
    [status] = serving.statuses()
    assert (status.version, status.examples) == (2, 20) and "of v1" in status.message, status

    assert store.add_reward(before_edit.decision_id, 0, 1.0, clock.now()) == "accepted"
    assert learner.learn_pending() == 1
    learner.snapshot_all()
    snapshot = store.latest_snapshot("web", 2)
    assert snapshot is not None and snapshot.examples == 21
    assert store.pending_examples("web", 1, 0) == []  # nothing of v1 is left waiting
    after = engine.decide(DecideRequest(customer.customer_id, "web", dict(customer.context))).decision
    assert after.policy.version == 2 and after.policy.mode == "online"


def test_a_policy_edit_that_changes_the_learner_starts_a_new_model_that_learns_earlier_decisions(
    store: Store, clock: ManualClock
) -> None:
    _, learner, _, before_edit = _learned_then_decided(store, clock, seed=24, rounds=10)

    serving = _edited(store, clock, Policy(channels=["web"], reward=RewardSpec(aggregation="first"),
                                           learner={"exploration": "epsilon", "epsilon": 0.2}))
    assert [(s.version, s.examples, s.message) for s in serving.statuses()] == [(2, 0, "new model (no snapshot yet)")]

    store.add_reward(before_edit.decision_id, 0, 1.0, clock.now())
    assert learner.learn_pending() == 1  # into the new model: the logged propensities hold whatever it runs
    learner.snapshot_all()
    snapshot = store.latest_snapshot("web", 2)
    assert snapshot is not None and snapshot.examples == 1


def test_a_learner_catching_up_rests_as_long_as_it_learned() -> None:
    """A pass that learned holds the GIL for `spent`; the learner then lets requests have it as long (half the
    time at most while a backlog lasts); an idle one backs off as before."""
    assert rest_after(learned=1000, spent=0.15, idle_wait=0.5) == 0.15
    assert rest_after(learned=1, spent=0.002, idle_wait=0.05) == 0.002
    assert rest_after(learned=0, spent=0.001, idle_wait=0.4) == 0.4
