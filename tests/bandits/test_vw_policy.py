"""The Vowpal Wabbit contextual bandit behind `score` and `learn`: probabilities, learning, saving, loading."""

from __future__ import annotations

import math
import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from bandits.vw_args import build_args
from bandits.vw_policy import ModelLoadError, VWPolicy
from nba.catalog import Learner

EPSILON = build_args(Learner(exploration="epsilon", epsilon=0.1))
NO_CONTEXT: dict[str, dict[str, float]] = {"C": {}}
ACTIONS = [{"A": {"id=a": 1.0}}, {"A": {"id=b": 1.0}}, {"A": {"id=c": 1.0}}]


def _assert_distribution(probabilities: list[float], size: int) -> None:
    assert len(probabilities) == size
    assert all(0.0 <= p <= 1.0 for p in probabilities)
    assert math.fsum(probabilities) == pytest.approx(1.0, abs=1e-5)


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def _train_best(policy: VWPolicy, best: int, rounds: int = 150, seed: int = 0) -> None:
    """Log uniformly at random; reward 1 for `best`, 0 otherwise."""
    rng = random.Random(seed)
    for _ in range(rounds):
        chosen = rng.randrange(len(ACTIONS))
        policy.learn({"C": {"x": 1.0}}, ACTIONS, chosen, 1.0 if chosen == best else 0.0, 1 / len(ACTIONS))


def test_a_new_policy_scores_a_distribution_over_the_actions() -> None:
    policy = VWPolicy(EPSILON)
    for size in (1, 2, 3):
        _assert_distribution(policy.score({"C": {"x": 1.0}}, ACTIONS[:size]), size)
    _assert_distribution(policy.score({"C": {}, "U": {}}, ACTIONS), 3)  # a request that knows nothing
    assert policy.examples_learned == 0


def test_no_shared_namespaces_at_all_still_scores_the_actions() -> None:
    _assert_distribution(VWPolicy(EPSILON).score({}, ACTIONS), 3)


def test_probabilities_follow_the_actions_in_the_order_given() -> None:
    policy = VWPolicy(EPSILON)
    _train_best(policy, best=2)
    assert policy.examples_learned == 150
    forward = policy.score({"C": {"x": 1.0}}, ACTIONS)
    backward = policy.score({"C": {"x": 1.0}}, ACTIONS[::-1])
    assert _argmax(forward) == 2 and _argmax(backward) == 0
    assert forward[2] == pytest.approx(0.1 / 3 + 0.9)  # epsilon-greedy: 1 - epsilon + epsilon / n
    assert forward == pytest.approx(backward[::-1])


def test_the_default_learner_learns_which_action_suits_which_context() -> None:
    """Context only matters through context x action interactions; the default arguments include them."""
    policy = VWPolicy(build_args(Learner(exploration="epsilon", epsilon=0.05)))
    rng = random.Random(3)
    for _ in range(600):
        segment = rng.randrange(3)
        chosen = rng.randrange(3)
        policy.learn({"C": {f"segment=s{segment}": 1.0}}, ACTIONS, chosen, 1.0 if chosen == segment else 0.0, 1 / 3)
    for segment in range(3):
        assert _argmax(policy.score({"C": {f"segment=s{segment}": 1.0}}, ACTIONS)) == segment


@pytest.mark.parametrize("exploration", ["epsilon", "squarecb", "softmax", "greedy"])
def test_every_exploration_serves_distributions_after_learning(exploration: str) -> None:
    policy = VWPolicy(build_args(Learner(exploration=exploration)))  # type: ignore[arg-type]
    _train_best(policy, best=1, rounds=50)
    _assert_distribution(policy.score({"C": {"x": 1.0}}, ACTIONS), 3)


def test_a_serialized_model_loads_and_scores_the_same() -> None:
    policy = VWPolicy(EPSILON)
    _train_best(policy, best=0)
    loaded = VWPolicy(EPSILON, policy.serialize(), examples_learned=policy.examples_learned)
    assert loaded.examples_learned == 150
    for context in ({"C": {"x": 1.0}}, {"C": {"y": 2.0}}, {"C": {}}):
        assert loaded.score(context, ACTIONS) == pytest.approx(policy.score(context, ACTIONS))
    assert VWPolicy(EPSILON).score({"C": {"x": 1.0}}, ACTIONS) != pytest.approx(policy.score({"C": {"x": 1.0}},
                                                                                            ACTIONS))


@pytest.mark.parametrize("model", [b"", b"not a model" * 20, bytes(1000)])
def test_a_model_vw_cannot_read_is_a_model_load_error(model: bytes) -> None:
    with pytest.raises(ModelLoadError, match="refused"):
        VWPolicy(EPSILON, model)


def test_arguments_vw_does_not_know_are_a_model_load_error() -> None:
    with pytest.raises(ModelLoadError, match="--no_such_option"):
        VWPolicy(["--cb_explore_adf", "--no_such_option", "--quiet"])


def test_cached_action_lines_follow_changed_attributes() -> None:
    """Lines are cached per key; an action whose features changed must not be scored on the old ones."""
    policy = VWPolicy(build_args(Learner(exploration="epsilon", epsilon=0.0)))
    rng = random.Random(1)
    hot, cold = {"A": {"temp=hot": 1.0}}, {"A": {"temp=cold": 1.0}}
    for _ in range(100):
        chosen = rng.randrange(2)
        policy.learn(NO_CONTEXT, [hot, cold], chosen, 1.0 if chosen == 0 else 0.0, 0.5)
    assert policy.score(NO_CONTEXT, [cold, hot], keys=["x", "y"]) == [0.0, 1.0]
    assert policy.score(NO_CONTEXT, [hot, cold], keys=["x", "y"]) == [1.0, 0.0]


def test_concurrent_scoring_and_learning_stay_consistent() -> None:
    policy = VWPolicy(EPSILON)

    def work(i: int) -> list[float]:
        if i % 4 == 0:
            policy.learn({"C": {"x": 1.0}}, ACTIONS, i % 3, 1.0, 1 / 3, keys=["a", "b", "c"])
        return policy.score({"C": {"x": float(i)}}, ACTIONS, keys=["a", "b", "c"])

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(work, range(200)))
    for probabilities in results:
        _assert_distribution(probabilities, 3)
    assert policy.examples_learned == 50


# Finite numbers that once made Vowpal Wabbit score NaN: a product of features beyond float32, or a tiny magnitude
# its parser reads as infinity. `bandits/vw_text.py` bounds every value, so each is scored and learned from.
EXTREMES = [1e308, -1e308, 1.7976931348623157e308, 3.4e38, 1e20, 1e-160, -1e-200, 5e-324]


@pytest.mark.parametrize("vw_args", ["", "--interactions CUA", "--interactions CCA --interactions UAA -q CA"],
                         ids=["default order 2", "order 3", "order 3 with repeats"])
@pytest.mark.parametrize("value", EXTREMES, ids=str)
def test_extreme_numbers_in_every_namespace_are_scored_and_learned(vw_args: str, value: float) -> None:
    policy = VWPolicy(build_args(Learner(vw_args=vw_args)))
    shared = {"C": {"amount": value, "x": 1.0}, "U": {"balance": value, "n_visit": 2.0}}
    actions = [{"A": {"id=a": 1.0, "price": value}}, {"A": {"id=b": 1.0, "price": -value}}, {"A": {"id=c": 1.0}}]
    for chosen in range(len(actions)):
        probabilities = policy.score(shared, actions)
        _assert_distribution(probabilities, len(actions))
        policy.learn(shared, actions, chosen, float(chosen == 0), probabilities[chosen])
    _assert_distribution(policy.score(shared, actions), len(actions))
    _assert_distribution(policy.score({"C": {"amount": 42.0}, "U": {"balance": 7.0}}, actions), len(actions))
