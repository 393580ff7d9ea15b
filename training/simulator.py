"""A simulated customer population with a known best action per segment, to test that policies learn.

Each customer belongs to a segment; each action converts with a probability that depends on the segment,
and exactly one action is best for each segment. Context also carries a noise feature that predicts nothing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SimulatedCustomer:
    customer_id: str
    segment: str
    context: dict[str, Any]


@dataclass
class SegmentSimulator:
    """Segments `s0..s{n-1}`, actions `a0..a{m-1}`; action `a{i mod m}` is best for segment `s{i}`.

    >>> sim = SegmentSimulator(seed=1)
    >>> sim.best_action("s2")
    'a2'
    >>> sim.reward_probability("s2", "a2") > sim.reward_probability("s2", "a0")
    True
    """

    segments: int = 3
    actions: int = 4
    best_rate: float = 0.6
    other_rate: float = 0.15
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    @property
    def action_ids(self) -> list[str]:
        return [f"a{i}" for i in range(self.actions)]

    def action_attributes(self, action_id: str) -> dict[str, Any]:
        index = int(action_id[1:])
        return {"category": f"cat{index}", "value": float(index + 1)}

    def best_action(self, segment: str) -> str:
        return f"a{int(segment[1:]) % self.actions}"

    def reward_probability(self, segment: str, action_id: str) -> float:
        return self.best_rate if action_id == self.best_action(segment) else self.other_rate

    def customer(self, index: int | None = None) -> SimulatedCustomer:
        number = self._rng.randrange(10_000_000) if index is None else index
        segment = f"s{self._rng.randrange(self.segments)}"
        context = {"segment": segment, "device": self._rng.choice(["mobile", "desktop", "tablet"])}
        return SimulatedCustomer(f"sim-{number}", segment, context)

    def reward(self, customer: SimulatedCustomer, action_id: str) -> float:
        return 1.0 if self._rng.random() < self.reward_probability(customer.segment, action_id) else 0.0
