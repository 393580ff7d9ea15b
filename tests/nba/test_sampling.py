"""Probability vectors: validation, and drawing distinct slots with conditional propensities."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from nba.sampling import InvalidDistribution, check_distribution, sample_slots, uniform

weights = st.lists(st.floats(min_value=0.0, max_value=1.0, allow_nan=False), min_size=1, max_size=12)


def _normalised(raw: list[float]) -> list[float]:
    total = math.fsum(raw)
    return [w / total for w in raw] if total > 0 else uniform(len(raw))


# -- check_distribution -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("probabilities", "size", "message"),
    [
        ([0.5, 0.5], 3, "2 probabilities for 3 actions"),
        ([1.5, -0.5], 2, "probability 1.5 at index 0"),
        ([0.5, -0.0001, 0.5001], 3, "at index 1"),
        ([math.nan, 1.0], 2, "nan"),
        ([math.inf, 0.0], 2, "inf"),
        ([0.5, 0.4], 2, "sum to"),
        ([0.0, 0.0], 2, "sum to 0.0"),
        ([], 0, "sum to 0"),
        ([-8.0, 1.0, 8.0], 3, "-8.0"),
    ],
)
def test_check_distribution_refuses_what_is_not_a_probability_vector(
    probabilities: list[float], size: int, message: str
) -> None:
    with pytest.raises(InvalidDistribution, match=message.replace(".", r"\.")):
        check_distribution(probabilities, size)


def test_check_distribution_renormalises_within_tolerance() -> None:
    result = check_distribution([0.50004, 0.5], 2)
    assert math.fsum(result) == pytest.approx(1.0, abs=1e-15)
    assert result[0] > result[1]
    with pytest.raises(InvalidDistribution):
        check_distribution([0.5002, 0.5], 2)


@given(raw=weights)
def test_check_distribution_accepts_any_normalised_vector_and_keeps_it_a_distribution(raw: list[float]) -> None:
    probabilities = _normalised(raw)
    checked = check_distribution(probabilities, len(probabilities))
    assert len(checked) == len(probabilities)
    assert all(0.0 <= p <= 1.0 for p in checked)
    assert math.fsum(checked) == pytest.approx(1.0, abs=1e-12)
    for before, after in zip(probabilities, checked, strict=True):
        assert after == pytest.approx(before, abs=1e-9)


def test_uniform() -> None:
    assert uniform(0) == []
    assert uniform(4) == [0.25] * 4


# -- sample_slots -------------------------------------------------------------------------------------


@settings(max_examples=300)
@given(raw=weights, slots=st.integers(min_value=1, max_value=15), seed=st.integers(min_value=0, max_value=2**32))
def test_sample_slots_draws_distinct_actions_with_valid_conditional_probabilities(
    raw: list[float], slots: int, seed: int
) -> None:
    probabilities = _normalised(raw)
    ids = [f"a{i}" for i in range(len(probabilities))]
    picks = sample_slots(ids, probabilities, slots, random.Random(seed))

    assert len(picks) == min(slots, len(ids))
    assert [p.slot for p in picks] == list(range(len(picks)))
    assert len({p.action_id for p in picks}) == len(picks)
    remaining = dict(zip(ids, probabilities, strict=True))
    for pick in picks:
        assert 0.0 < pick.probability <= 1.0
        mass = math.fsum(remaining.values())
        if mass > 0.0:
            # A zero-probability action is never drawn while positive mass remains, and the
            # propensity is the action's share of the mass that remains.
            assert remaining[pick.action_id] > 0.0
            assert pick.probability == pytest.approx(remaining[pick.action_id] / mass, rel=1e-9)
        else:
            assert pick.probability == pytest.approx(1.0 / len(remaining))
        del remaining[pick.action_id]


def test_sample_slots_with_no_mass_left_draws_uniformly_from_the_rest() -> None:
    picks = sample_slots(["a", "b", "c"], [1.0, 0.0, 0.0], 3, random.Random(7))
    assert picks[0].action_id == "a" and picks[0].probability == 1.0
    assert [p.probability for p in picks[1:]] == [0.5, 1.0]
    assert {p.action_id for p in picks[1:]} == {"b", "c"}


def test_sample_slots_with_nothing_to_choose_from() -> None:
    assert sample_slots([], [], 3, random.Random(0)) == []


def test_sample_slots_is_reproducible_with_the_same_seed() -> None:
    ids, probs = ["a", "b", "c", "d"], [0.1, 0.2, 0.3, 0.4]
    first = [sample_slots(ids, probs, 2, random.Random(11)) for _ in range(3)]
    assert first[0] == first[1] == first[2]


# -- the draws follow the distribution ---------------------------------------------------------------

PROBABILITIES = [0.5, 0.25, 0.15, 0.07, 0.03]
IDS = [f"a{i}" for i in range(len(PROBABILITIES))]
DRAWS = 20_000


def _slot_counts(slot: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    counts = Counter(sample_slots(IDS, PROBABILITIES, slot + 1, rng)[slot].action_id for _ in range(DRAWS))
    return [counts[a] for a in IDS]


def test_slot_zero_frequencies_match_the_probabilities() -> None:
    observed = _slot_counts(0, seed=20261124)
    result = chisquare(observed, [p * DRAWS for p in PROBABILITIES])
    assert result.pvalue > 0.001, (observed, result)


def test_the_same_check_rejects_a_wrong_distribution() -> None:
    """The companion of the test above: the chi-square check is able to fail."""
    observed = _slot_counts(0, seed=20261124)
    wrong = [0.45, 0.28, 0.15, 0.08, 0.04]  # close to the truth, still detectably wrong
    result = chisquare(observed, [p * DRAWS for p in wrong])
    assert result.pvalue < 1e-6


def test_slot_one_frequencies_match_sampling_without_replacement() -> None:
    """P(slot 1 = j) = sum over i != j of p_i * p_j / (1 - p_i)."""
    expected = [
        sum(pi * pj / (1.0 - pi) for i, pi in enumerate(PROBABILITIES) if i != j)
        for j, pj in enumerate(PROBABILITIES)
    ]
    assert math.fsum(expected) == pytest.approx(1.0)
    observed = _slot_counts(1, seed=7)
    result = chisquare(observed, [e * DRAWS for e in expected])
    assert result.pvalue > 0.001, (observed, result)
    assert chisquare(observed, [p * DRAWS for p in PROBABILITIES]).pvalue < 1e-6
