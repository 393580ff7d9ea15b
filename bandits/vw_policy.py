"""The contextual-bandit policy: a Vowpal Wabbit `cb_explore_adf` workspace behind `score` and `learn`."""

from __future__ import annotations

import hashlib
import math
import shlex
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import vowpal_wabbit_next as vw

from bandits.vw_args import build_args, check_bits
from bandits.vw_text import namespaces_line
from nba.catalog import REWARD_LIMIT, Policy
from nba.errors import InvalidInput

Namespaces = Mapping[str, Mapping[str, float]]

# Part of every model's fingerprint. Vowpal Wabbit hashes feature names, so a model's weights only mean something
# for the names it was trained on: bump this when `features/namespaces.py` or `bandits/vw_text.py` change how a
# feature is named or escaped, and older snapshots are refused as incompatible instead of served.
FEATURE_ENCODING = "namespaces/1"


# The largest reward Vowpal Wabbit is given to learn from, in absolute value. A client's reward is at most
# REWARD_LIMIT, but a `sum` of many is larger; measured with the default learner, the model still tells actions
# apart at 1e18 and scores every action alike from about 1e20 (1e308 turns its weights NaN).
LEARNABLE_REWARD = REWARD_LIMIT * 1e6


class ModelLoadError(RuntimeError):
    """A model file that Vowpal Wabbit cannot load with the policy's arguments."""


class CorruptModel(ModelLoadError):
    """Model bytes that are not the ones their writer recorded: damaged on disk, truncated, badly restored."""


class IncompatibleModel(ModelLoadError):
    """A sound model trained with other arguments or another feature encoding than the policy's.

    Vowpal Wabbit loads such a model without complaint and scores with features hashed differently.
    """


def model_checksum(model: bytes) -> str:
    """The checksum stored with a snapshot, computed by the learner from the bytes it serialized.

    >>> model_checksum(b"")
    'sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'
    """
    return "sha256:" + hashlib.sha256(model).hexdigest()


def model_fingerprint(args: Sequence[str]) -> str:
    """What a model was trained with: the feature encoding and the exact Vowpal Wabbit arguments.

    Readable rather than hashed, so a refusal can say what differs.

    >>> model_fingerprint(["--cb_explore_adf", "-q", "CA"])
    'namespaces/1 --cb_explore_adf -q CA'
    """
    return f"{FEATURE_ENCODING} {shlex.join(args)}"


def verify_model(model: bytes, args: Sequence[str], checksum: str | None, fingerprint: str | None) -> None:
    """Raise `CorruptModel` or `IncompatibleModel` unless `model` is what its snapshot recorded, trained as `args`.

    A legacy snapshot records neither (it predates checksums) and passes unverified: only Vowpal Wabbit's own
    checks stand between it and serving. One that records only one of the two is refused.

    >>> verify_model(b"model", ["--quiet"], model_checksum(b"model"), model_fingerprint(["--quiet"]))
    >>> verify_model(b"mod", ["--quiet"], model_checksum(b"model"), model_fingerprint(["--quiet"]))
    Traceback (most recent call last):
    ...
    bandits.vw_policy.CorruptModel: corrupt: its 3 bytes hash to sha256:e55cffc81a5a..., not to sha256:9372c470eead...
    """
    if checksum is None and fingerprint is None:
        return
    if checksum is None:
        raise CorruptModel("corrupt: it records what it was trained with but no checksum to verify its bytes")
    actual = model_checksum(model)
    if actual != checksum:
        raise CorruptModel(f"corrupt: its {len(model)} bytes hash to {actual[:19]}..., not to {checksum[:19]}..., "
                           "recorded when it was saved")
    if fingerprint is None:
        raise IncompatibleModel("incompatible: it does not record the arguments it was trained with")
    expected = model_fingerprint(args)
    if fingerprint != expected:
        raise IncompatibleModel(f"incompatible: trained with `{fingerprint}`, the policy runs `{expected}`")


class VWPolicy:
    """Scores candidate actions with propensities and learns from logged (action, probability, reward).

    >>> policy = VWPolicy(["--cb_explore_adf", "--epsilon", "0.2", "--quiet"])
    >>> probs = policy.score({"C": {"x": 1.0}}, [{"A": {"id=a": 1.0}}, {"A": {"id=b": 1.0}}])
    >>> round(sum(probs), 6), len(probs)
    (1.0, 2)
    >>> policy.learn({"C": {"x": 1.0}}, [{"A": {"id=a": 1.0}}, {"A": {"id=b": 1.0}}], 1, 1.0, 0.5)
    >>> VWPolicy(policy.args, policy.serialize(), examples_learned=1).examples_learned
    1

    A model from a snapshot is checked against what the snapshot recorded before Vowpal Wabbit sees it:

    >>> model = policy.serialize()
    >>> VWPolicy(policy.args, model[:-9], checksum=model_checksum(model), fingerprint=model_fingerprint(policy.args))
    Traceback (most recent call last):
    ...
    bandits.vw_policy.CorruptModel: corrupt: ...
    """

    def __init__(
        self, args: Sequence[str], model: bytes | None = None, examples_learned: int = 0, *,
        checksum: str | None = None, fingerprint: str | None = None,
    ) -> None:
        self.args = list(args)
        if model is not None:
            verify_model(model, self.args, checksum, fingerprint)
        try:
            self._ws = vw.Workspace(self.args, model_data=model) if model is not None else vw.Workspace(self.args)
        except RuntimeError as exc:
            raise ModelLoadError(f"Vowpal Wabbit refused the model or arguments: {exc}") from exc
        self._parser = vw.TextFormatParser(self._ws)
        self._lock = threading.Lock()
        self._action_lines: dict[str, tuple[Namespaces, str]] = {}
        self._action_examples: dict[str, tuple[object, Any]] = {}
        # The workspace's own multi-example predict, without the wrapper's per-example label-type check: every
        # example here comes from this workspace's parser, so the labels always match.
        self._predict_raw = getattr(getattr(self._ws, "_workspace", None), "predict_multi_ex_one", None)
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
        if keys is None:
            lines = self._lines(shared, actions, None)
            with self._lock:
                ranked: Any = self._ws.predict_one([self._parser.parse_line(line) for line in lines])
            return _in_order(ranked, len(actions))
        return self.score_keyed(shared, list(zip(keys, actions, strict=True)), _identity)

    def score_keyed(
        self, shared: Namespaces, actions: Sequence[tuple[str, Any]], build: Callable[[str, Any], Namespaces]
    ) -> list[float]:
        """Score actions given as (key, token): `build(key, token)` makes an action's namespaces. Its parsed
        example is kept per key and reused while the token is the same object, so an unchanged
        catalog action is featurized and parsed once, not once per request. Reusing parsed action examples
        leaves predictions unchanged (tests/bandits/test_vw_policy.py checks it against fresh ones)."""
        shared_line = namespaces_line(shared, prefix="shared")
        with self._lock:
            examples = [self._parser.parse_line(shared_line)]
            examples.extend(self._action_example(key, token, build) for key, token in actions)
            ranked: Any
            if self._predict_raw is not None:
                ranked = self._predict_raw([example._example for example in examples])
            else:
                ranked = self._ws.predict_one(examples)
        return _in_order(ranked, len(actions))

    def _action_example(self, key: str, token: Any, build: Callable[[str, Any], Namespaces]) -> Any:
        cached = self._action_examples.get(key)
        # Identity only: equal-looking values can featurize differently (`[1]`, `[1.0]` and `[True]` compare
        # equal), and catalog entries are immutable objects replaced whole when they change.
        if cached is not None and cached[0] is token:
            return cached[1]
        example = self._parser.parse_line(namespaces_line(build(key, token)))
        if len(self._action_examples) > 10_000:
            self._action_examples.clear()
        self._action_examples[key] = (token, example)
        return example

    def learn(
        self,
        shared: Namespaces,
        actions: Sequence[Namespaces],
        chosen: int,
        reward: float,
        probability: float,
        keys: Sequence[str] | None = None,
    ) -> None:
        """Learn from one logged choice; the cost VW minimises is the negative reward.

        A reward beyond LEARNABLE_REWARD (or not finite) or a probability outside (0, 1] is refused (ValueError):
        one such example can turn every weight NaN, and the model would never recover.
        """
        if not (math.isfinite(reward) and abs(reward) <= LEARNABLE_REWARD):
            raise ValueError(f"reward {reward!r} is not a finite number within ±{LEARNABLE_REWARD:g}")
        if not 0.0 < probability <= 1.0:
            raise ValueError(f"probability {probability!r} is not in (0, 1]")
        lines = self._lines(shared, actions, keys)
        lines[chosen + 1] = f"0:{-reward!r}:{probability!r} {lines[chosen + 1]}"
        with self._lock:
            example = [self._parser.parse_line(line) for line in lines]
            self._ws.learn_one(example)
            self.examples_learned += 1

    def serialize(self) -> bytes:
        with self._lock:
            return bytes(self._ws.serialize())


def _in_order(ranked: Sequence[tuple[int, float]], count: int) -> list[float]:
    probabilities = [0.0] * count
    for index, probability in ranked:
        probabilities[index] = float(probability)
    return probabilities


def _identity(_key: str, namespaces: Namespaces) -> Namespaces:
    return namespaces


def check_learner(policy: Policy, field: str = "learner") -> None:
    """Refuse (InvalidInput naming `field`) a policy whose learner a client may not save: one Vowpal Wabbit
    cannot build, or one whose hash table is too large (`check_bits`)."""
    try:
        args = build_args(policy.learner)
        check_bits(args)
    except InvalidInput as exc:  # named under `field` (`learner.vw_args` -> `<field>.vw_args`)
        raise InvalidInput(exc.message, field=field + (exc.field or "learner")[len("learner"):]) from exc
    try:
        VWPolicy(args)
    except ModelLoadError as exc:  # the client's own arguments, if any, are what VW refused (the rest are ours)
        raise InvalidInput(str(exc), field=f"{field}.vw_args" if policy.learner.vw_args else field) from exc
