"""`nba learn`: the learner in a process of its own, and the supervisor that keeps one running beside the workers."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from bandits.registry import PolicyModels
from features.namespaces import NamespaceFeaturizer
from nba.catalog import Action, Policy, RewardSpec
from nba.clock import ManualClock
from nba.decide import DecideRequest, DecisionEngine
from nba.store import Store
from serving.settings import Settings
from serving.sweeper import Sweeper
from training.fair_turn import FairTurn
from training.learner_process import STOP_SIGNALS, LearnerProcess, LearnerSupervisor
from training.online import LEASE, LEASE_TTL
from training.simulator import SegmentSimulator


def _until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait for a background process to get somewhere (polling, not timing: returns as soon as it has)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _play(store: Store, clock: ManualClock, sim: SegmentSimulator, rounds: int) -> None:
    engine = DecisionEngine(store, store.load_catalog, PolicyModels(store, NamespaceFeaturizer()), clock,
                            rng=random.Random(3))
    for _ in range(rounds):
        customer = sim.customer()
        decision = engine.decide(DecideRequest(customer.customer_id, "web", dict(customer.context))).decision
        store.add_reward(decision.decision_id, 0, sim.reward(customer, decision.actions[0].action_id), clock.now())


def _snapshot_examples(store: Store) -> int:
    snapshot = store.latest_snapshot("web", 1)
    return snapshot.examples if snapshot is not None else 0


def test_the_learner_process_learns_what_the_catalog_it_finds_later_rewards(
    store: Store, store_url: str, clock: ManualClock
) -> None:
    """Started before any policy exists (as beside workers that have not applied the catalog file yet), it picks
    the policy up from the store, learns its rewarded decisions, and on stop snapshots and lets go of the lease."""
    process = LearnerProcess(Settings(database_url=store_url, snapshot_seconds=0.1), store=store, clock=clock)
    stop = threading.Event()
    runner = threading.Thread(target=process.run, args=(stop.wait,))
    runner.start()
    try:
        sim = SegmentSimulator(seed=5)
        for action_id in sim.action_ids:
            store.put_action(action_id, Action(channels=["web"], attributes=sim.action_attributes(action_id)),
                             clock.now())
        store.put_policy("web", Policy(channels=["web"], reward=RewardSpec(aggregation="first")), clock.now())
        _play(store, clock, sim, 80)
        _until(lambda: _snapshot_examples(store) == 80, "a snapshot of all 80 examples")
        _play(store, clock, sim, 20)
    finally:
        stop.set()
        runner.join(timeout=60)
    assert not runner.is_alive()
    # What it learned of the last 20 is in its final snapshot; what it had not is still in the queue, for the next.
    assert _snapshot_examples(store) + len(store.pending_examples("web", 1, 0)) == 100
    assert store.try_lease(LEASE, "another learner", clock.now(), LEASE_TTL)  # released, not left to expire


class _CountedTurn:
    """A turn lock that counts how often it was taken."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.taken = 0

    def __enter__(self) -> None:
        self.lock.acquire()
        self.taken += 1

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def test_the_learners_work_and_the_sweeps_rounds_take_turns(
    store: Store, store_url: str, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep round holds the store's write lock, which every worker's commits wait for: in the learner's
    process it runs holding the turn that the learner's CPU work takes in chunks, so the learner thread never
    has the GIL meanwhile (with it, rounds took 30-190 ms instead of 8 at 1,300 decisions/s)."""
    process = LearnerProcess(Settings(database_url=store_url), store=store, clock=clock)
    assert process.sweeper is not None and process.learner._turn is process.sweeper._round_turn
    assert isinstance(process.learner._turn, FairTurn)  # handed over in the order asked (test_fair_turn.py)
    turn = _CountedTurn()
    process.learner._turn = process.sweeper._round_turn = turn
    sim = SegmentSimulator(seed=6)
    for action_id in sim.action_ids:
        store.put_action(action_id, Action(channels=["web"], attributes=sim.action_attributes(action_id)), clock.now())
    store.put_policy("web", Policy(channels=["web"], reward=RewardSpec(window="1h")), clock.now())
    _play(store, clock, sim, 80)
    held_while: list[str] = []
    learn_one, close_round = process.learner._learn_one, store._close_due_round
    monkeypatch.setattr(process.learner, "_learn_one", lambda *a: held_while.append(
        f"learn {turn.lock.locked()}") or learn_one(*a))
    monkeypatch.setattr(store, "_close_due_round", lambda *a: held_while.append(
        f"round {turn.lock.locked()}") or close_round(*a))

    clock.advance(timedelta(hours=1, seconds=1))  # the windows close: the sweep sums each one's rewards
    assert process.sweeper.run_once() == 80
    rounds = turn.taken
    assert process.learner.learn_pending() == 80
    assert turn.taken - rounds == 1 + 3  # the read, then 80 examples in chunks of 32: a round may run between
    assert set(held_while) == {"learn True", "round True"} and held_while.count("learn True") == 80
    assert not turn.lock.locked()


def test_the_learner_process_stops_once_its_parent_is_gone(store: Store, store_url: str, clock: ManualClock) -> None:
    """`nba learn --parent PID` outlives no SIGKILLed `nba serve`: it stops at its next look (here at once: this
    process is not its own parent), and releases the lease."""
    process = LearnerProcess(Settings(database_url=store_url), store=store, clock=clock)
    process.run(lambda _seconds: False, parent=os.getpid())
    clock.advance(timedelta(milliseconds=1))
    assert store.try_lease(LEASE, "another learner", clock.now(), LEASE_TTL)


def _script(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "child.py"
    path.write_text(body)
    return [sys.executable, str(path)]


def test_the_supervisor_starts_another_learner_whenever_one_ends(tmp_path: Path) -> None:
    """A crash (exit 3) or an exit nobody asked for (0: a stray SIGTERM sent to the learner alone) leaves the
    deployment without a learner: either way another starts, until the supervisor itself is stopped."""
    runs = tmp_path / "runs"
    argv = _script(tmp_path, f"""
import pathlib, sys
runs = pathlib.Path({str(runs)!r})
runs.write_text(runs.read_text() + "x" if runs.exists() else "x")
sys.exit(3 if len(runs.read_text()) % 2 else 0)
""")
    supervisor = LearnerSupervisor(argv, os.environ, backoff=(0.01,))
    supervisor.start()
    _until(lambda: runs.exists() and len(runs.read_text()) >= 4, "four learners, after exits with 3 and 0")
    supervisor.stop()
    supervisor._thread.join(timeout=30)
    assert not supervisor._thread.is_alive()
    started = len(runs.read_text())
    assert supervisor.restarts >= 3 and started in (supervisor.restarts, supervisor.restarts + 1)


def test_stopping_the_supervisor_stops_its_learner(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """SIGTERM, which `nba learn` answers with a final snapshot; not started again afterwards."""
    ready = tmp_path / "ready"
    # The learner is born with SIGTERM blocked and takes it with sigwait, as `nba learn` does (StopSignals): a
    # handler never ran, so the stop ran out its 30 s and killed the child instead of stopping it.
    argv = _script(tmp_path, f"""
import pathlib, signal, sys
pathlib.Path({str(ready)!r}).write_text("up")
signal.sigwait({{signal.SIGTERM}})
sys.exit(0)
""")
    supervisor = LearnerSupervisor(argv, os.environ, backoff=(0.01,))
    supervisor.start()
    _until(ready.exists, "the child to start")
    pid = supervisor.pid
    assert pid is not None
    with caplog.at_level(logging.ERROR):
        supervisor.stop(timeout=30)
    assert not [r for r in caplog.records if "did not stop" in r.message]  # stopped by the SIGTERM, not killed
    assert not supervisor._thread.is_alive()  # the learner it waited for has been reaped
    assert supervisor.restarts == 0 and supervisor.pid is None
    assert not Path(f"/proc/{pid}").exists()


def test_the_supervisor_forgets_a_learner_before_reaping_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once reaped, a learner's pid may be given to any new process: the supervisor must not hold it then, or a
    `stop` at that moment would signal a stranger. While the learner is a zombie the pid is still its own."""
    supervisor = LearnerSupervisor(_script(tmp_path, "import sys; sys.exit(3)"), os.environ, backoff=(60.0,))
    held_at_reaping: list[tuple[int, int | None]] = []
    waitpid = os.waitpid

    def reap(pid: int, options: int) -> tuple[int, int]:
        held_at_reaping.append((pid, supervisor._pid))
        return waitpid(pid, options)

    monkeypatch.setattr(os, "waitpid", reap)
    supervisor.start()
    _until(lambda: bool(held_at_reaping), "the learner to exit and be reaped")
    supervisor.stop(timeout=30)
    assert not supervisor._thread.is_alive()
    [(pid, held)] = held_at_reaping
    assert pid > 0 and held is None


def test_the_learner_process_closes_reward_windows(store: Store, store_url: str, clock: ManualClock) -> None:
    """Under `nba serve` the workers leave the sweep to the learner's process; it lets go of the sweep lease when
    it stops, so a worker (say one started with the learner process off) can take over at once."""
    store.put_action("a", Action(channels=["web"]), clock.now())
    store.put_policy("web", Policy(channels=["web"], reward=RewardSpec(window="1h")), clock.now())
    engine = DecisionEngine(store, store.load_catalog, PolicyModels(store, NamespaceFeaturizer()), clock,
                            rng=random.Random(4))
    ids = [engine.decide(DecideRequest(f"c{i}", "web", {})).decision.decision_id for i in range(5)]
    clock.advance(timedelta(hours=1))

    def closed() -> bool:
        return all((d := store.get_decision(i)) is not None and d.state == "final" for i in ids)

    process = LearnerProcess(Settings(database_url=store_url, sweep_seconds=0.05), store=store, clock=clock)
    stop = threading.Event()
    runner = threading.Thread(target=process.run, args=(stop.wait,))
    runner.start()
    try:
        _until(closed, "the learner process to close the 5 windows")
    finally:
        stop.set()
        runner.join(timeout=60)
    assert Sweeper(store, clock, every=1.0).run_once() == 0  # the lease was released: taken at once
    assert LearnerProcess(Settings(database_url=store_url, sweep=False), store=store).sweeper is None


_WAITING_CHILD = f"""
import signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {sorted(int(s) for s in STOP_SIGNALS)})  # before any thread starts
from training.learner_process import StopSignals
stops = StopSignals().start()
import time
print("ready", flush=True)
while not stops.wait(0.05):
    print("waited", time.monotonic(), flush=True)
print("stopped", flush=True)
"""


def _waiting_child() -> subprocess.Popen[str]:
    """A process waiting for a stop signal as `nba learn` does, a twentieth of a second at a time."""
    child = subprocess.Popen([sys.executable, "-c", _WAITING_CHILD], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    return child


def _stopped_after_sigterm(child: subprocess.Popen[str]) -> bool:
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=30) == 0  # SIGTERM ended the wait, not the process
    assert child.stdout is not None
    return child.stdout.read().split()[-1] == "stopped"


def test_a_sigterm_is_waited_for_and_seen() -> None:
    """The stop signals blocked in every thread (as `nba learn` runs): SIGTERM stops the wait, not the process."""
    assert _stopped_after_sigterm(_waiting_child())


def test_a_stop_and_continue_is_no_stop_request() -> None:
    """SIGSTOP and SIGCONT (a debugger, a profiler attaching, a frozen VM): with CPython's sigtimedwait the wait
    returned garbage taken for a stop request, and the child exited 6 times in 6 of these rounds. The child must
    go on waiting after each round: a wait that ends after the round is seen to have ended by a timeout."""
    child = _waiting_child()
    assert child.stdout is not None
    for _ in range(3):
        child.send_signal(signal.SIGSTOP)
        time.sleep(0.2)  # not timing: the child must stay stopped past the timeout of the wait it is in
        child.send_signal(signal.SIGCONT)
        continued = time.monotonic()
        while True:  # its output up to a wait that ended after it was continued
            line = child.stdout.readline().split()
            assert line and line[0] == "waited", f"the child ended its wait with {line}"
            if float(line[1]) > continued:
                break
    assert _stopped_after_sigterm(child)
