"""Probability vectors: checking what a policy returned, and drawing slots without repeats."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from nba.types import SlotChoice


class InvalidDistribution(ValueError):
    """A policy returned something that is not a probability vector over the eligible actions."""


def check_distribution(probabilities: Sequence[float], size: int, tolerance: float = 1e-4) -> list[float]:
    """Validate a probability vector and return it renormalised to sum exactly to one.

    >>> check_distribution([0.5, 0.25, 0.25], 3)
    [0.5, 0.25, 0.25]
    >>> check_distribution([1.5, -0.5], 2)
    Traceback (most recent call last):
    ...
    nba.sampling.InvalidDistribution: probability 1.5 at index 0 is not in [0, 1]
    """
    if len(probabilities) != size:
        raise InvalidDistribution(f"{len(probabilities)} probabilities for {size} actions")
    for index, p in enumerate(probabilities):
        if not math.isfinite(p) or p < 0.0 or p > 1.0 + tolerance:
            raise InvalidDistribution(f"probability {p} at index {index} is not in [0, 1]")
    total = math.fsum(probabilities)
    if abs(total - 1.0) > tolerance:
        raise InvalidDistribution(f"probabilities sum to {total}, not 1")
    return [p / total for p in probabilities]


def uniform(size: int) -> list[float]:
    """Equal probability over `size` actions."""
    return [1.0 / size] * size if size else []


def sample_slots(
    action_ids: Sequence[str], probabilities: Sequence[float], slots: int, rng: random.Random
) -> list[SlotChoice]:
    """Draw up to `slots` distinct actions; slot i's probability is conditional on the actions above it.

    Later slots renormalise the remaining mass; when no mass remains they draw uniformly from what is left.

    >>> picks = sample_slots(["a", "b"], [1.0, 0.0], 2, random.Random(0))
    >>> [(p.action_id, p.probability) for p in picks]
    [('a', 1.0), ('b', 1.0)]
    """
    remaining = list(range(len(action_ids)))
    choices: list[SlotChoice] = []
    for slot in range(min(slots, len(action_ids))):
        weights = [probabilities[i] for i in remaining]
        total = math.fsum(weights)
        if total <= 0.0:
            weights = [1.0] * len(remaining)
            total = float(len(remaining))
        draw = rng.random() * total
        picked = len(remaining) - 1
        acc = 0.0
        for position, weight in enumerate(weights):
            acc += weight
            if draw < acc and weight > 0.0:
                picked = position
                break
        while weights[picked] <= 0.0:  # floating-point tail: never return a zero-probability action
            picked -= 1
        index = remaining.pop(picked)
        choices.append(SlotChoice(slot, action_ids[index], weights[picked] / total))
    return choices
