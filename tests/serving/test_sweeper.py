"""The sweep: one process of a deployment at a time closes reward windows (a lease in the store)."""

from __future__ import annotations

import random
from datetime import timedelta

from bandits.registry import PolicyModels
from features.namespaces import NamespaceFeaturizer
from nba.catalog import Action, Policy, RewardSpec
from nba.clock import ManualClock
from nba.decide import DecideRequest, DecisionEngine
from nba.store import Store
from nba.store.learning_repo import LEARNER_LEASE
from serving.sweeper import Sweeper


def _decide(store: Store, clock: ManualClock, customers: range) -> None:
    engine = DecisionEngine(store, store.load_catalog, PolicyModels(store, NamespaceFeaturizer()), clock,
                            rng=random.Random(2))
    for i in customers:
        engine.decide(DecideRequest(f"c{i}", "web", {}))


def test_one_sweeper_at_a_time_closes_what_is_due(store: Store, clock: ManualClock) -> None:
    """A second process's sweeper finds the lease taken and leaves the work alone; once the first lets go (a
    stopping process), or stops renewing it, the second sweeps."""
    store.put_action("a", Action(channels=["web"]), clock.now())
    store.put_policy("p", Policy(channels=["web"], reward=RewardSpec(window="1h")), clock.now())
    start = clock.now()
    for offset, customers in ((0, range(3)), (5, range(3, 5)), (7, range(5, 9)), (9, range(9, 10))):
        clock.set(start + timedelta(seconds=offset))
        _decide(store, clock, customers)  # windows ending 1 h later: 3, 2, 4 and 1 decisions
    first, second = Sweeper(store, clock, every=1.0), Sweeper(store, clock, every=1.0)

    clock.set(start + timedelta(hours=1))
    assert first.run_once() == 3
    clock.advance(timedelta(seconds=5))
    assert second.run_once() is None  # the first holds the lease (10 s at a sweep a second)
    assert first.run_once() == 2
    clock.advance(timedelta(seconds=2))
    first.release()
    assert second.run_once() == 4
    clock.advance(timedelta(seconds=2))
    assert first.run_once() is None
    clock.advance(timedelta(seconds=11))  # the second missed its renewals: its lease ran out
    assert first.run_once() == 1


def test_a_worker_leaves_the_sweep_to_a_learner_process_while_one_is_up(store: Store, clock: ManualClock) -> None:
    """While the learner lease is held (a learner process is up), a deferring worker neither sweeps nor keeps
    the sweep lease; while it is not (not started yet, or gone for longer than its lease), the worker sweeps."""
    store.put_action("a", Action(channels=["web"]), clock.now())
    store.put_policy("p", Policy(channels=["web"], reward=RewardSpec(window="1h")), clock.now())
    start = clock.now()
    for offset, customers in ((0, range(2)), (3, range(2, 5)), (40, range(5, 6))):
        clock.set(start + timedelta(seconds=offset))
        _decide(store, clock, customers)
    worker = Sweeper(store, clock, every=1.0, defer_to=LEARNER_LEASE)
    learner = Sweeper(store, clock, every=1.0)

    clock.set(start + timedelta(hours=1))
    assert worker.run_once() == 2  # no learner process yet: the worker sweeps, and holds the lease
    clock.advance(timedelta(seconds=5))
    assert store.try_lease(LEARNER_LEASE, "learner process", clock.now(), timedelta(seconds=10))
    assert worker.run_once() is None  # a learner process is up: the worker lets go of the sweep at once ...
    assert learner.run_once() == 3  # ... so the learner process takes it without waiting for it to run out
    clock.advance(timedelta(seconds=40))  # the learner process is gone: its leases have run out
    assert worker.run_once() == 1


def test_a_sweep_that_lost_its_lease_stops(store: Store, clock: ManualClock) -> None:
    """The lease is renewed after each round; a sweeper that lost it meanwhile (a round longer than the lease)
    stops, and the new holder closes the rest, so two processes never sweep the same backlog together."""
    store.put_action("a", Action(channels=["web"]), clock.now())
    store.put_policy("p", Policy(channels=["web"], reward=RewardSpec(window="1h")), clock.now())
    _decide(store, clock, range(250))
    clock.advance(timedelta(hours=1))
    first, second = Sweeper(store, clock, every=1.0), Sweeper(store, clock, every=1.0)

    def stolen(_seconds: float) -> bool:
        clock.advance(timedelta(seconds=11))  # the first round outlasted the lease ...
        assert second.run_once(rest=lambda _s: True) == 100  # ... and another process took it (one round)
        return False

    assert first.run_once(rest=stolen) == 100  # its first round only
    assert first.run_once() is None
    assert second.run_once() == 50
