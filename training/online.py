"""Online learning: joined examples from the decision log train each policy's model, off the request path.

One learner per deployment holds a lease in the store; it trains its own copy of each model, publishes it to
the serving models every `publish_every` seconds and snapshots it to the store every `snapshot_every`
seconds. A snapshot records which examples it contains, so a restart relearns exactly the rest.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from bandits.registry import Featurizer, PolicyModels, newest_usable
from bandits.vw_args import build_args
from bandits.vw_policy import VWPolicy, model_checksum, model_fingerprint
from nba.catalog import Policy
from nba.catalog_view import CatalogView
from nba.clock import Clock
from nba.errors import LeaseLost, StoreUnavailable
from nba.store import Store, lease_holder
from nba.store.learning_repo import LEARNER_LEASE, JoinedExample

log = logging.getLogger(__name__)
LEASE = LEARNER_LEASE
LEASE_TTL = timedelta(seconds=10)
# Examples learned per turn (`OnlineLearner(turn=...)`): about 3 ms of CPU at 20 actions, the longest a sweep round
# waits to start in the learner's process (`training.fair_turn`); once it has started, nothing in its process
# competes with it for the GIL while it holds the write lock.
TURN_EXAMPLES = 32


@dataclass
class _Track:
    model: VWPolicy
    # Seqs learned since the last snapshot: their rows are still pending, and are not to be learned again.
    unsnapshotted: set[int] = field(default_factory=set)
    published_examples: int = 0
    snapshot_id: int = 0


def example_from_log(example: JoinedExample, featurizer: Featurizer) -> tuple[dict, list, int, float, float, list]:
    """Rebuild (shared, actions, chosen index, reward, probability, keys) for one logged decision slot.

    Slot i was drawn from the eligible actions not taken by slots above it, with its conditional probability.
    """
    body = example.body
    taken_above = {a["action_id"] for a in body["actions"] if a["slot"] < example.slot}
    chosen = next(a for a in body["actions"] if a["slot"] == example.slot)
    ids = [r["action_id"] for r in body["ranking"] if r["action_id"] not in taken_above]
    shared = featurizer.shared(body["context"], body["customer"])
    actions = [featurizer.action(aid, body["action_attributes"].get(aid, {})) for aid in ids]
    return shared, actions, ids.index(chosen["action_id"]), example.reward, float(chosen["probability"]), ids


class OnlineLearner:
    """A background thread that keeps every online policy's model learning from the log."""

    def __init__(
        self,
        store: Store,
        models: PolicyModels,
        featurizer: Featurizer,
        catalog: Callable[[], CatalogView],
        clock: Clock,
        publish_every: float = 0.25,
        snapshot_every: float = 5.0,
        poll_every: float = 0.05,
        publishes: bool = True,
        turn: AbstractContextManager[object] | None = None,
    ) -> None:
        self._store = store
        # Taken around each chunk of this thread's CPU work, in turns with a sweep's rounds in the same process
        # (`Store.close_due`): a round holds the store's write lock, and must not wait for the GIL meanwhile.
        self._turn: AbstractContextManager[object] = turn if turn is not None else nullcontext()
        self._models = models
        self._featurizer = featurizer
        self._catalog = catalog
        self._clock = clock
        self._publish_every = publish_every
        self._snapshot_every = snapshot_every
        self._poll_every = poll_every
        # False for a learner in a process of its own (`nba learn`): its models serve no request there, so it
        # neither publishes them nor picks up the snapshots of another learner holding the lease.
        self._publishes = publishes
        self._holder = lease_holder(self)
        self._tracks: dict[tuple[str, int], _Track] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.has_lease = False
        self._lease_until: datetime | None = None  # when the lease last granted to this learner runs out
        # Set once this learner has asked for the lease (the running learner does, before anything else): from then
        # on it snapshots only while it holds the lease. One driven by hand (a replay, a test) never competes.
        self._leased = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="nba-learner", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the thread, then snapshot what it learned and release the lease (if it stopped in `timeout` s)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            if self._thread.is_alive():
                # Still inside an iteration (a store that hangs): a snapshot now would race it for the models and
                # the seqs it marks. Nothing is lost without one: what was not snapshotted stays in the queue.
                log.error("learner did not stop within %g s; no final snapshot (the queue keeps what it learned)",
                          timeout)
                return
        if self.has_lease:
            try:
                if self.renew_lease():  # a lease lost meanwhile must not end in a snapshot of a stale model
                    self.snapshot_all()
                self._store.release_lease(LEASE, self._holder)
            except StoreUnavailable as exc:
                log.error("final snapshot failed: %s", exc)

    def _run(self) -> None:
        last_publish = last_snapshot = last_lease = 0.0
        idle_wait = self._poll_every
        clock = _Monotonic()
        while not self._stop.is_set():
            now = clock()
            try:
                if now - last_lease > 2.0 or not self.has_lease:
                    self.renew_lease()
                    last_lease = now
                if not self.has_lease:
                    if self._publishes:
                        self._models.refresh(self._catalog().policies)
                    self._stop.wait(1.0)
                    continue
                started = clock()
                learned = self.learn_pending()
                spent = clock() - started
                if self._publishes and now - last_publish >= self._publish_every:
                    self.publish_all()
                    last_publish = now
                if now - last_snapshot >= self._snapshot_every:
                    self.snapshot_all()
                    last_snapshot = now
                # Poll fast while rewards flow; back off to at most 0.5 s while none come, so an idle learner
                # does not take the store and the GIL from requests twenty times a second.
                idle_wait = self._poll_every if learned else min(max(0.5, self._poll_every), idle_wait * 2)
                self._stop.wait(rest_after(learned, spent, idle_wait))
            except StoreUnavailable as exc:
                log.warning("learner waiting for the store: %s", exc)
                self._stop.wait(1.0)
            except Exception:
                log.exception("learner iteration failed")
                self._stop.wait(1.0)

    def renew_lease(self) -> bool:
        """Take or renew the learner lease; true while this learner holds it.

        A learner that did not hold the lease throughout drops its models: meanwhile another learner may have held
        it, learned, and snapshotted examples this one has not seen, so they are rebuilt from the newest snapshot
        and the queue. That holds whether the lease was refused or lapsed unnoticed and is granted again (no
        renewal within the TTL: a stalled process, a store outage).
        """
        self._leased = True
        now = self._clock.now()
        held_throughout = self.has_lease and self._lease_until is not None and now < self._lease_until
        self.has_lease = self._store.try_lease(LEASE, self._holder, now, LEASE_TTL)
        self._lease_until = now + LEASE_TTL if self.has_lease else None
        if not (self.has_lease and held_throughout):
            self._drop_tracks()
        return self.has_lease

    def _drop_tracks(self) -> None:
        """Forget the in-memory models; what they learned but did not snapshot is still in the queue."""
        if self._tracks:
            log.warning("learner: lease not held throughout; rebuilding models from the newest snapshots")
            self._tracks.clear()

    def _track(self, name: str, version: int, policy: Policy) -> _Track:
        track = self._tracks.get((name, version))
        if track is None:
            args = build_args(policy.learner)
            found, rejected = newest_usable(self._store, name, version, args)
            for refusal in rejected:
                log.error("learner: snapshot %d of %s v%d unusable, not resuming from it: %s",
                          refusal.snapshot_id, name, version, refusal.reason)
            # Examples already counted in a refused snapshot are not relearned: they are lost with it.
            model, snapshot_id = (found[0], found[1].snapshot_id) if found is not None else (VWPolicy(args), 0)
            if found is None and rejected:
                log.error("learner: no usable snapshot of %s v%d, starting fresh", name, version)
            track = _Track(model, published_examples=model.examples_learned, snapshot_id=snapshot_id)
            self._tracks[(name, version)] = track
        return track

    def learn_pending(self, batch: int = 1000) -> int:
        """Learn every joined example waiting for any online policy; returns how many were learned."""
        total = 0
        policies = self._catalog().policies
        for key in [k for k in self._tracks if policies.get(k[0], (None,))[0] != k[1]]:
            # A version no longer current: its model lives on in the current version's, which continues from
            # its newest snapshot and learns the examples it had not snapshotted (they are still pending).
            del self._tracks[key]
        for name, (version, policy) in policies.items():
            if policy.mode != "online":
                continue
            track = self._track(name, version, policy)
            # By what the track learned, not by the highest seq read: on PostgreSQL a lower seq can commit after
            # a higher one was read.
            with self._turn:
                examples = self._store.unlearned_examples(name, version, track.unsnapshotted, batch)
            for start in range(0, len(examples), TURN_EXAMPLES):
                with self._turn:
                    for example in examples[start:start + TURN_EXAMPLES]:
                        self._learn_one(track, example)
            total += len(examples)
        return total

    def _learn_one(self, track: _Track, example: JoinedExample) -> None:
        try:
            shared, actions, chosen, reward, probability, keys = example_from_log(example, self._featurizer)
            track.model.learn(shared, actions, chosen, reward, probability, keys=keys)
        except Exception as exc:  # one unusable example must not stop all learning (it would be read again at
            # every pass): it is skipped, and leaves the queue with the next snapshot like the others
            log.error("learner: skipping the example of decision %s slot %d (seq %d): %s: %s",
                      example.decision_id, example.slot, example.seq, exc.__class__.__name__, exc)
        track.unsnapshotted.add(example.seq)

    def publish_all(self) -> None:
        for (name, version), track in self._tracks.items():
            if track.model.examples_learned != track.published_examples:
                policy = self._catalog().policies.get(name)
                if policy is None or policy[0] != version:
                    continue
                self._models.publish(name, version, policy[1], track.model.serialize(), track.snapshot_id,
                                     track.model.examples_learned)
                track.published_examples = track.model.examples_learned

    def snapshot_all(self) -> None:
        """Snapshot every model with examples not yet in a snapshot; a learner that has asked for the lease, only
        while it still holds it (checked in the snapshot's own transaction)."""
        for (name, version), track in self._tracks.items():
            if not track.unsnapshotted:
                continue
            seqs = sorted(track.unsnapshotted)
            with self._turn:
                model = track.model.serialize()
            try:
                track.snapshot_id = self._store.save_snapshot(
                    name, version, model, track.model.examples_learned, seqs, self._clock.now(),
                    checksum=model_checksum(model), fingerprint=model_fingerprint(track.model.args),
                    lease=(LEASE, self._holder) if self._leased else None,
                )
            except LeaseLost as exc:  # it ran out mid-iteration: another learner may have learned meanwhile
                log.warning("learner: %s", exc)
                self.has_lease, self._lease_until = False, None
                self._drop_tracks()
                return
            track.unsnapshotted.difference_update(seqs)


def rest_after(learned: int, spent: float, idle_wait: float) -> float:
    """How long the learner waits after a pass that learned `learned` examples in `spent` seconds.

    While it catches up on a backlog (a restart after downtime, many reward windows closing at once) every pass is
    a full batch, and without a rest the thread holds the GIL nearly all the time: each of a decide's store calls
    lets go of the GIL and then waits for it behind the learner (measured: at an offered 700 decisions/s, 296 were
    answered, p50 17 s, while a learner went through 385,000 examples). Resting as long as it learned keeps it to
    half the GIL at most; at 6,000 to 10,000 examples a second it still learns far faster than decisions come.
    """
    return spent if learned else idle_wait


class _Monotonic:
    def __call__(self) -> float:
        import time

        return time.monotonic()
