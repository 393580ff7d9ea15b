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


class PolicyScorer:
    """Adapts a `VWPolicy` to the decision engine's `Scorer`: featurize, then score."""

    def __init__(self, model: VWPolicy, featurizer: Featurizer) -> None:
        self._model = model
        self._featurizer = featurizer

    def score(
        self, context: Context, customer: CustomerState, actions: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> list[float]:
        shared = self._featurizer.shared(context, customer)
        namespaces = [self._featurizer.action(aid, attrs) for aid, attrs in actions]
        return self._model.score(shared, namespaces, keys=[aid for aid, _ in actions])


class PolicyModels:
    """Holds one serving model per (policy, version); thread-safe swaps, never a half-loaded model."""

    def __init__(self, store: Store, featurizer: Featurizer) -> None:
        self._store = store
        self._featurizer = featurizer
        self._models: dict[tuple[str, int], tuple[VWPolicy, ModelStatus]] = {}
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
                snapshot = self._store.latest_snapshot(name, version)
            except StoreUnavailable as exc:
                # Not cached: a blank model must not be pinned because the store blinked; serve fallback now and
                # load the snapshot on the next request.
                return model, ModelStatus(name, version, 0, 0, False, f"store unavailable, serving fallback: {exc}")
            status = ModelStatus(name, version, 0, 0, True, "new model (no snapshot yet)")
            if snapshot is not None:
                try:
                    model = VWPolicy(args, snapshot.model, examples_learned=snapshot.examples)
                    status = ModelStatus(name, version, snapshot.snapshot_id, snapshot.examples, True,
                                         f"loaded snapshot {snapshot.snapshot_id}")
                except ModelLoadError as exc:
                    log.error("policy %s v%d: snapshot %d is unusable: %s", name, version, snapshot.snapshot_id, exc)
                    status = ModelStatus(name, version, snapshot.snapshot_id, 0, False,
                                         f"snapshot {snapshot.snapshot_id} unusable, serving fallback: {exc}")
            self._models[(name, version)] = (model, status)
            return model, status

    def publish(self, name: str, version: int, policy: Policy, model: bytes, snapshot_id: int, examples: int) -> bool:
        """Swap in a new model; a model that does not load leaves the current one serving."""
        try:
            loaded = VWPolicy(build_args(policy.learner), model, examples_learned=examples)
        except ModelLoadError as exc:
            log.error("policy %s v%d: new model rejected, keeping the last good one: %s", name, version, exc)
            with self._lock:
                current = self._models.get((name, version))
                if current is not None:
                    current[1].message = f"last hot-swap rejected ({exc}); serving the previous model"
            return False
        with self._lock:
            self._models[(name, version)] = (
                loaded, ModelStatus(name, version, snapshot_id, examples, True, "serving")
            )
        return True

    def refresh(self, policies: Mapping[str, tuple[int, Policy]]) -> None:
        """Pick up snapshots written by another process (the learner may live elsewhere)."""
        for name, (version, policy) in policies.items():
            current = self._models.get((name, version))
            newer_than = current[1].snapshot_id if current is not None else 0
            snapshot = self._store.latest_snapshot(name, version, newer_than=newer_than)
            if snapshot is not None and (current is None or snapshot.examples > current[1].examples):
                self.publish(name, version, policy, snapshot.model, snapshot.snapshot_id, snapshot.examples)

    def statuses(self) -> list[ModelStatus]:
        return [status for _, status in self._models.values()]
