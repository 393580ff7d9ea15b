"""A snapshot's model is checked against the checksum and fingerprint its learner recorded before Vowpal Wabbit
loads it: VW itself loads a truncated model and a model trained with other arguments without complaint."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from bandits import vw_policy
from bandits.vw_args import build_args
from bandits.vw_policy import (
    CorruptModel,
    IncompatibleModel,
    ModelLoadError,
    VWPolicy,
    model_checksum,
    model_fingerprint,
    verify_model,
)
from nba.catalog import Learner

ARGS = build_args(Learner(exploration="epsilon", epsilon=0.1))
OTHER_ARGS = build_args(Learner(exploration="epsilon", epsilon=0.1, vw_args="-q CU"))
SHARED = {"C": {"x": 1.0}, "U": {"vip": 1.0}}
ACTIONS = [{"A": {"id=a": 1.0}}, {"A": {"id=b": 1.0}}, {"A": {"id=c": 1.0}}]


def _trained(args: list[str]) -> VWPolicy:
    policy = VWPolicy(args)
    rng = random.Random(0)
    for _ in range(100):
        chosen = rng.randrange(len(ACTIONS))
        policy.learn(SHARED, ACTIONS, chosen, float(chosen == 1), 1 / len(ACTIONS))
    return policy


@pytest.fixture(scope="module")
def trained() -> VWPolicy:
    return _trained(ARGS)


def test_vowpal_wabbit_alone_loads_what_should_be_refused(trained: VWPolicy) -> None:
    """Why the checks exist; also what a legacy snapshot (no checksum, no fingerprint) still risks."""
    model = trained.serialize()
    VWPolicy(ARGS, model[: len(model) // 2])
    VWPolicy(ARGS, _trained(OTHER_ARGS).serialize())


def test_a_sound_model_loads_and_scores_as_it_was_saved(trained: VWPolicy) -> None:
    model = trained.serialize()
    loaded = VWPolicy(ARGS, model, examples_learned=100, checksum=model_checksum(model),
                      fingerprint=model_fingerprint(ARGS))
    assert loaded.score(SHARED, ACTIONS) == trained.score(SHARED, ACTIONS)
    assert loaded.examples_learned == 100


@pytest.mark.parametrize("damage", [
    pytest.param(lambda m: m[: len(m) // 2], id="truncated"),
    pytest.param(lambda m: m[:-1], id="last-byte-lost"),
    pytest.param(lambda m: m[:40] + bytes([m[40] ^ 0x01]) + m[41:], id="one-bit-flipped"),
    pytest.param(lambda m: b"", id="empty"),
])
def test_damaged_bytes_are_refused_as_corrupt_before_vowpal_wabbit_sees_them(
    trained: VWPolicy, damage: Callable[[bytes], bytes]
) -> None:
    model = trained.serialize()
    damaged = damage(model)
    with pytest.raises(CorruptModel, match="corrupt"):
        VWPolicy(ARGS, damaged, checksum=model_checksum(model), fingerprint=model_fingerprint(ARGS))


def test_a_model_trained_with_other_arguments_is_refused_as_incompatible() -> None:
    model = _trained(OTHER_ARGS).serialize()
    with pytest.raises(IncompatibleModel, match="incompatible") as refused:
        VWPolicy(ARGS, model, checksum=model_checksum(model), fingerprint=model_fingerprint(OTHER_ARGS))
    assert "-q CU" in str(refused.value)  # the message shows what it was trained with


def test_another_feature_encoding_is_incompatible(monkeypatch: pytest.MonkeyPatch, trained: VWPolicy) -> None:
    model = trained.serialize()
    recorded = model_fingerprint(ARGS)
    monkeypatch.setattr(vw_policy, "FEATURE_ENCODING", "namespaces/2")
    with pytest.raises(IncompatibleModel):
        verify_model(model, ARGS, model_checksum(model), recorded)


def test_a_half_recorded_snapshot_is_refused(trained: VWPolicy) -> None:
    model = trained.serialize()
    with pytest.raises(CorruptModel):
        verify_model(model, ARGS, None, model_fingerprint(ARGS))
    with pytest.raises(IncompatibleModel):
        verify_model(model, ARGS, model_checksum(model), None)


def test_refusals_are_model_load_errors(trained: VWPolicy) -> None:
    """Callers that handle VW's own refusal (`ModelLoadError`) handle these too."""
    assert issubclass(CorruptModel, ModelLoadError) and issubclass(IncompatibleModel, ModelLoadError)


def test_the_fingerprint_is_the_exact_argument_list() -> None:
    assert model_fingerprint(ARGS) == model_fingerprint(list(ARGS))
    assert model_fingerprint(ARGS) != model_fingerprint(OTHER_ARGS)
    assert model_fingerprint(["-q", "CA"]) != model_fingerprint(["-q CA"])  # quoting keeps arguments apart
