"""The contextual-bandit policy: a Vowpal Wabbit `cb_explore_adf` workspace behind `score` and `learn`."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import vowpal_wabbit_next as vw

from bandits.vw_text import namespaces_line

Namespaces = Mapping[str, Mapping[str, float]]


class ModelLoadError(RuntimeError):
    """A model file that Vowpal Wabbit cannot load with the policy's arguments."""


class VWPolicy:
    """Scores candidate actions with propensities and learns from logged (action, probability, reward).

    >>> policy = VWPolicy(["--cb_explore_adf", "--epsilon", "0.2", "--quiet"])
    >>> probs = policy.score({"C": {"x": 1.0}}, [{"A": {"id=a": 1.0}}, {"A": {"id=b": 1.0}}])
    >>> round(sum(probs), 6), len(probs)
    (1.0, 2)
    >>> policy.learn({"C": {"x": 1.0}}, [{"A": {"id=a": 1.0}}, {"A": {"id=b": 1.0}}], 1, 1.0, 0.5)
    >>> VWPolicy(policy.args, policy.serialize(), examples_learned=1).examples_learned
    1
    """

    def __init__(self, args: Sequence[str], model: bytes | None = None, examples_learned: int = 0) -> None:
        self.args = list(args)
        try:
            self._ws = vw.Workspace(self.args, model_data=model) if model is not None else vw.Workspace(self.args)
        except RuntimeError as exc:
            raise ModelLoadError(f"Vowpal Wabbit refused the model or arguments: {exc}") from exc
        self._parser = vw.TextFormatParser(self._ws)
        self._lock = threading.Lock()
        self._action_lines: dict[str, tuple[Namespaces, str]] = {}
        self.examples_learned = examples_learned

    def _lines(self, shared: Namespaces, actions: Sequence[Namespaces], keys: Sequence[str] | None) -> list[str]:
        lines = [namespaces_line(shared, prefix="shared")]
        for index, action in enumerate(actions):
            key = keys[index] if keys is not None else None
            cached = self._action_lines.get(key) if key is not None else None
            if cached is not None and cached[0] == action:
                lines.append(cached[1])
                continue
            line = namespaces_line(action)
            if key is not None:
                if len(self._action_lines) > 10_000:
                    self._action_lines.clear()
                self._action_lines[key] = (action, line)
            lines.append(line)
        return lines

    def score(
        self, shared: Namespaces, actions: Sequence[Namespaces], keys: Sequence[str] | None = None
    ) -> list[float]:
        """The probability of each action, in the order given (VW answers sorted by probability)."""
        lines = self._lines(shared, actions, keys)
        with self._lock:
            example = [self._parser.parse_line(line) for line in lines]
            ranked = self._ws.predict_one(example)
        probabilities = [0.0] * len(actions)
        for index, probability in ranked:
            probabilities[index] = float(probability)
        return probabilities

    def learn(
        self,
        shared: Namespaces,
        actions: Sequence[Namespaces],
        chosen: int,
        reward: float,
        probability: float,
        keys: Sequence[str] | None = None,
    ) -> None:
        """Learn from one logged choice; the cost VW minimises is the negative reward."""
        lines = self._lines(shared, actions, keys)
        lines[chosen + 1] = f"0:{-reward!r}:{probability!r} {lines[chosen + 1]}"
        with self._lock:
            example = [self._parser.parse_line(line) for line in lines]
            self._ws.learn_one(example)
            self.examples_learned += 1

    def serialize(self) -> bytes:
        with self._lock:
            return bytes(self._ws.serialize())
