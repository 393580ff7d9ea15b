"""The live models of every policy version: loaded from snapshots, scored from, hot-swapped on publish."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bandits.vw_args import build_args
from bandits.vw_policy import ModelLoadError, VWPolicy
from nba.catalog import Policy
from nba.errors import InvalidInput, StoreUnavailable
from nba.store import Store
from nba.store.learning_repo import Snapshot
from nba.types import Context, CustomerState

log = logging.getLogger(__name__)
Namespaces = dict[str, dict[str, float]]


class Featurizer(Protocol):
    """Turns what a decision knows into namespaces for the model (see `features.namespaces`)."""

    def shared(self, context: Mapping[str, Any], customer: CustomerState | Mapping[str, Any]) -> Namespaces: ...

    def action(self, action_id: str, attributes: Mapping[str, Any]) -> Namespaces: ...


@dataclass
class ModelStatus:
    """What `/health` says about one policy version's model."""

    policy: str
    version: int
    snapshot_id: int
    examples: int
    healthy: bool
    message: str


@dataclass(frozen=True)
class Rejection:
    """A snapshot that was not loaded, and why (`CorruptModel`, `IncompatibleModel` or Vowpal Wabbit's refusal)."""

    snapshot_id: int
    reason: str


def load_snapshot(args: list[str], snapshot: Snapshot) -> VWPolicy:
    """The snapshot's model, verified against its checksum and fingerprint first; raises `ModelLoadError`."""
    return VWPolicy(args, snapshot.model, examples_learned=snapshot.examples,
                    checksum=snapshot.checksum, fingerprint=snapshot.fingerprint)


def newest_usable(
    store: Store, name: str, version: int, args: list[str]
) -> tuple[tuple[VWPolicy, Snapshot] | None, list[Rejection]]:
    """The newest snapshot of a policy version that loads, stepping back past those that do not.

    A version with no snapshot of its own continues the model of the newest snapshot of an earlier version,
    if that loads with this version's learner (same Vowpal Wabbit arguments and feature encoding: its
    fingerprint says so): a policy edit that leaves the learner alone (a reward window, a channel, the mode
    and back) does not throw away what the model learned. Otherwise the version starts a new model.

    Returns the loaded model and its snapshot (None when no snapshot loads) and the newer ones of this version
    refused, newest first. A store failure propagates as `StoreUnavailable`.
    """
    rejected: list[Rejection] = []
    older_than: int | None = None
    while (snapshot := store.latest_snapshot(name, version, older_than=older_than)) is not None:
        try:
            return (load_snapshot(args, snapshot), snapshot), rejected
        except ModelLoadError as exc:
            rejected.append(Rejection(snapshot.snapshot_id, str(exc)))
            older_than = snapshot.snapshot_id
    if rejected:  # this version's own snapshots are unusable: serve the fallback and say so, as always
        return None, rejected
    earlier = store.latest_earlier_snapshot(name, version)
    if earlier is None or earlier.fingerprint is None:  # a legacy one cannot show it was trained the same way
        return None, rejected
    try:
        return (load_snapshot(args, earlier), earlier), rejected
    except ModelLoadError as exc:
        log.info("policy %s v%d: not continuing v%d's model (snapshot %d): %s", name, version,
                 earlier.policy_version, earlier.snapshot_id, exc)
        return None, rejected


def _loaded_unverified(name: str, version: int, snapshot: Snapshot) -> bool:
    """Warn about, and say whether, a loaded snapshot is legacy: saved before checksums and fingerprints were
    recorded, so only Vowpal Wabbit's own checks stood between it and serving."""
    if snapshot.checksum is not None or snapshot.fingerprint is not None:
        return False
    log.warning("policy %s v%d: snapshot %d predates checksums, loaded unverified", name, version, snapshot.snapshot_id)
    return True


class PolicyScorer:
    """Adapts a `VWPolicy` to the decision engine's `Scorer`: featurize, then score."""

    def __init__(self, model: VWPolicy, featurizer: Featurizer) -> None:
        self._model = model
        self._featurizer = featurizer

    def score(
        self, context: Context, customer: CustomerState, actions: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> list[float]:
        shared = self._featurizer.shared(context, customer)
        # An action's attributes object is its cache token: the same catalog entry is featurized once.
        return self._model.score_keyed(shared, actions, self._featurizer.action)


class PolicyModels:
    """Holds one serving model per (policy, version); thread-safe swaps, never a half-loaded model.

    A snapshot is verified before it is loaded (see `load_snapshot`). One that fails is never served: at start
    the newest snapshot that passes is loaded instead, else the policy serves its fallback; at a hot-swap the
    current model keeps serving. Either way the refusal is logged at ERROR and shown in the model's status.
    """

    def __init__(self, store: Store, featurizer: Featurizer) -> None:
        self._store = store
        self._featurizer = featurizer
        self._models: dict[tuple[str, int], tuple[VWPolicy, ModelStatus]] = {}
        # The newest snapshot refused per policy version, so `refresh` does not retry (and re-log) it every poll.
        self._refused: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()

    def scorer(self, name: str, version: int, policy: Policy) -> PolicyScorer | None:
        entry = self._models.get((name, version))
        if entry is None:
            entry = self._load(name, version, policy)
        model, status = entry
        return PolicyScorer(model, self._featurizer) if status.healthy else None

    def _load(self, name: str, version: int, policy: Policy) -> tuple[VWPolicy, ModelStatus]:
        with self._lock:
            entry = self._models.get((name, version))
            if entry is not None:
                return entry
            try:
                args = build_args(policy.learner)
                model = VWPolicy(args)
            except (InvalidInput, ModelLoadError) as exc:
                log.error("policy %s v%d: its learner cannot be built, serving fallback: %s", name, version, exc)
                entry = (VWPolicy(["--cb_explore_adf", "--quiet"]),
                         ModelStatus(name, version, 0, 0, False, f"learner cannot be built, serving fallback: {exc}"))
                self._models[(name, version)] = entry
                return entry
            try:
                found, rejected = newest_usable(self._store, name, version, args)
            except StoreUnavailable as exc:
                # Not cached: a blank model must not be pinned because the store blinked; serve fallback now and
                # load the snapshot on the next request.
                return model, ModelStatus(name, version, 0, 0, False, f"store unavailable, serving fallback: {exc}")
            for refusal in rejected:
                log.error("policy %s v%d: snapshot %d is unusable, not serving it: %s",
                          name, version, refusal.snapshot_id, refusal.reason)
            if rejected:
                self._refused[(name, version)] = rejected[0].snapshot_id
            status = ModelStatus(name, version, 0, 0, True, "new model (no snapshot yet)")
            if found is not None:
                model, snapshot = found
                message = f"loaded snapshot {snapshot.snapshot_id}"
                if snapshot.policy_version != version:
                    message += f" of v{snapshot.policy_version} (continuing its model)"
                if _loaded_unverified(name, version, snapshot):
                    message += " (legacy, unverified)"
                if rejected:
                    message += f"; newer {_refusals(rejected)}"
                status = ModelStatus(name, version, snapshot.snapshot_id, snapshot.examples, True, message)
            elif rejected:
                newest = rejected[0]
                status = ModelStatus(name, version, newest.snapshot_id, 0, False,
                                     f"{_refusals(rejected)}; serving fallback")
            self._models[(name, version)] = (model, status)
            return model, status

    def publish(self, name: str, version: int, policy: Policy, model: bytes, snapshot_id: int, examples: int) -> bool:
        """Swap in a model the learner in this process just trained; one that does not load leaves the current
        one serving."""
        try:
            loaded = VWPolicy(build_args(policy.learner), model, examples_learned=examples)
        except (InvalidInput, ModelLoadError) as exc:
            self._keep_current(name, version, "new model", exc)
            return False
        self._install(name, version, loaded, snapshot_id, examples)
        return True

    def refresh(self, policies: Mapping[str, tuple[int, Policy]]) -> None:
        """Pick up snapshots written by another process (the learner may live elsewhere), verified first."""
        for name, (version, policy) in policies.items():
            key = (name, version)
            current = self._models.get(key)
            newer_than = max(current[1].snapshot_id if current is not None else 0, self._refused.get(key, 0))
            snapshot = self._store.latest_snapshot(name, version, newer_than=newer_than)
            if snapshot is None or (current is not None and snapshot.examples <= current[1].examples):
                continue
            try:
                loaded = load_snapshot(build_args(policy.learner), snapshot)
            except (InvalidInput, ModelLoadError) as exc:
                self._refused[key] = snapshot.snapshot_id
                self._keep_current(name, version, f"snapshot {snapshot.snapshot_id}", exc)
                continue
            _loaded_unverified(name, version, snapshot)
            self._install(name, version, loaded, snapshot.snapshot_id, snapshot.examples, only_if_newer=True)

    def _install(self, name: str, version: int, model: VWPolicy, snapshot_id: int, examples: int,
                 only_if_newer: bool = False) -> None:
        """Serve `model`; with `only_if_newer`, not over a healthy model that has learned as much (one that
        another path installed while this one was loading)."""
        with self._lock:
            current = self._models.get((name, version))
            if only_if_newer and current is not None and current[1].healthy and current[1].examples >= examples:
                return
            status = ModelStatus(name, version, snapshot_id, examples, True, "serving")
            self._models[(name, version)] = (model, status)

    def _keep_current(self, name: str, version: int, what: str, exc: Exception) -> None:
        """Leave what serves in place (the last good model, or the fallback if there is none) and say so. With
        nothing loaded yet, the policy's first decision loads the newest snapshot that passes its checks."""
        with self._lock:
            current = self._models.get((name, version))
            if current is None:
                serving = "nothing loaded yet (the first decision loads the newest usable snapshot)"
            else:
                serving = "the previous model" if current[1].healthy else "fallback"
            if current is not None:
                current[1].message = f"last hot-swap rejected: {what} is unusable ({exc}); serving {serving}"
        log.error("policy %s v%d: %s is unusable, still serving %s: %s", name, version, what, serving, exc)

    def statuses(self) -> list[ModelStatus]:
        return [status for _, status in self._models.values()]


def _refusals(rejected: list[Rejection]) -> str:
    """`snapshot 7 unusable (corrupt: ...)`, naming every refused snapshot and the newest one's reason."""
    ids = ", ".join(str(r.snapshot_id) for r in rejected)
    noun = "snapshot" if len(rejected) == 1 else "snapshots"
    return f"{noun} {ids} unusable ({rejected[0].reason})"
