"""Serving models from snapshots: a snapshot that fails its checks is never served, at start or at a hot-swap,
and the refusal is logged and shown in the model's status."""

from __future__ import annotations

import logging
import random

import pytest

from bandits.registry import PolicyModels
from bandits.vw_args import build_args
from bandits.vw_policy import VWPolicy, model_checksum, model_fingerprint
from features.namespaces import NamespaceFeaturizer
from nba.catalog import Learner, Policy
from nba.clock import ManualClock
from nba.store import Store
from nba.types import CustomerState

POLICY = Policy(channels=["web"])
ARGS = build_args(POLICY.learner)
SHARED = {"C": {"segment=s1": 1.0}, "U": {}}
ACTIONS = [{"A": {"id=a": 1.0}}, {"A": {"id=b": 1.0}}, {"A": {"id=c": 1.0}}]


def _trained(args: list[str], best: int = 1) -> VWPolicy:
    policy = VWPolicy(args)
    rng = random.Random(0)
    for _ in range(200):
        chosen = rng.randrange(len(ACTIONS))
        policy.learn(SHARED, ACTIONS, chosen, float(chosen == best), 1 / len(ACTIONS))
    return policy


def _save(store: Store, clock: ManualClock, policy: VWPolicy, model: bytes | None = None, examples: int = 200,
          recorded: bool = True) -> int:
    """Save `model` (default: the policy's own bytes) with the checksum and fingerprint of the policy's bytes."""
    serialized = policy.serialize()
    stored = serialized if model is None else model
    if not recorded:
        return store.save_snapshot("web", 1, stored, examples, [], clock.now())
    return store.save_snapshot("web", 1, stored, examples, [], clock.now(),
                               checksum=model_checksum(serialized), fingerprint=model_fingerprint(policy.args))


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "bandits.registry" and r.levelno >= logging.ERROR]


def test_a_corrupt_newest_snapshot_at_start_steps_back_to_the_previous_good_one(
    store: Store, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    good = _trained(ARGS)
    good_id = _save(store, clock, good)
    bad_id = _save(store, clock, good, model=good.serialize()[:-100], examples=300)
    models = PolicyModels(store, NamespaceFeaturizer())
    with caplog.at_level(logging.ERROR, logger="bandits.registry"):
        scorer = models.scorer("web", 1, POLICY)
    assert scorer is not None
    (status,) = models.statuses()
    assert status.healthy and (status.snapshot_id, status.examples) == (good_id, 200)
    assert f"snapshot {bad_id} unusable (corrupt" in status.message
    assert any(f"snapshot {bad_id} is unusable" in message for message in _errors(caplog))


def test_an_incompatible_only_snapshot_at_start_means_fallback(
    store: Store, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    other = _trained(build_args(Learner(vw_args="-q CU")))
    bad_id = _save(store, clock, other)
    models = PolicyModels(store, NamespaceFeaturizer())
    with caplog.at_level(logging.ERROR, logger="bandits.registry"):
        assert models.scorer("web", 1, POLICY) is None
    (status,) = models.statuses()
    assert not status.healthy and status.snapshot_id == bad_id
    assert "incompatible" in status.message and "fallback" in status.message
    assert any(str(bad_id) in message for message in _errors(caplog))


def test_a_refused_hot_swap_keeps_the_model_and_is_logged_once(
    store: Store, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    good = _trained(ARGS)
    good_id = _save(store, clock, good)
    models = PolicyModels(store, NamespaceFeaturizer())
    before = models.scorer("web", 1, POLICY)
    assert before is not None
    model = good.serialize()
    bad_id = _save(store, clock, good, model=model[: len(model) // 2], examples=300)
    with caplog.at_level(logging.ERROR, logger="bandits.registry"):
        for _ in range(3):  # a worker without the learner lease polls every second
            models.refresh({"web": (1, POLICY)})
    assert len(_errors(caplog)) == 1
    (status,) = models.statuses()
    assert status.healthy and status.snapshot_id == good_id
    assert f"snapshot {bad_id} is unusable (corrupt" in status.message

    newer = _trained(ARGS, best=2)
    newer_id = _save(store, clock, newer, examples=400)
    models.refresh({"web": (1, POLICY)})
    (status,) = models.statuses()
    assert status.healthy and status.snapshot_id == newer_id and status.message == "serving"
    after = models.scorer("web", 1, POLICY)
    assert after is not None
    probabilities = after.score({"segment": "s1"}, CustomerState("c-1"), [("a", {}), ("b", {}), ("c", {})])
    assert probabilities == newer.score(SHARED, ACTIONS, keys=["a", "b", "c"])


def test_a_legacy_snapshot_loads_unverified_and_says_so(
    store: Store, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Snapshots saved before checksums were recorded have nothing to be checked against: they load when Vowpal
    Wabbit accepts them, with a warning and a status that names them unverified."""
    legacy_id = _save(store, clock, _trained(ARGS), recorded=False)
    models = PolicyModels(store, NamespaceFeaturizer())
    with caplog.at_level(logging.WARNING, logger="bandits.registry"):
        assert models.scorer("web", 1, POLICY) is not None
    (status,) = models.statuses()
    assert status.healthy and status.snapshot_id == legacy_id and "unverified" in status.message
    assert any("unverified" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_a_legacy_snapshot_vowpal_wabbit_refuses_means_fallback(store: Store, clock: ManualClock) -> None:
    legacy_id = _save(store, clock, _trained(ARGS), model=b"not a model", recorded=False)
    models = PolicyModels(store, NamespaceFeaturizer())
    assert models.scorer("web", 1, POLICY) is None
    (status,) = models.statuses()
    assert not status.healthy and f"snapshot {legacy_id} unusable" in status.message


def test_a_bad_snapshot_refused_before_any_model_is_loaded_says_so(
    store: Store, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A process without a learner may see a snapshot before its first decision: refused, the log does not claim a
    previous model serves, and the first decision loads the last good snapshot, never the refused one."""
    good = _trained(ARGS)
    good_id = _save(store, clock, good)
    models = PolicyModels(store, NamespaceFeaturizer())
    bad_id = _save(store, clock, good, model=b"not a model", examples=300)
    with caplog.at_level(logging.ERROR, logger="bandits.registry"):
        models.refresh({"web": (1, POLICY)})
    (error,) = [m for m in _errors(caplog) if f"snapshot {bad_id}" in m]
    assert "nothing loaded yet" in error and "previous model" not in error, error
    assert models.scorer("web", 1, POLICY) is not None
    (status,) = models.statuses()
    assert status.healthy and status.snapshot_id == good_id, status
