"""Off-policy estimators of a target policy's value from a `LoggedBandit`, vectorized over numpy.

One small frozen class per estimator, with the formulas of the Open Bandit Pipeline (Saito et al. 2021), where
w_i = pi_e(a_i|x_i) / pscore_i, optionally clipped to min(w_i, clip) (OBP's `lambda_`), and
q(x, pi_e) = sum_a pi_e(a|x) q_hat(x, a):

    IPS    mean(w r)                                         Strehl et al. 2010
    SNIPS  sum(w r) / sum(w)                                 Swaminathan & Joachims 2015
    DM     mean(q(x, pi_e))                                  Beygelzimer & Langford 2009
    DR     mean(q(x, pi_e) + w (r − q_hat(x, a)))            Dudík et al. 2014
    SNDR   mean(q(x, pi_e)) + sum(w (r − q_hat(x, a))) / sum(w)   (OBP's SelfNormalizedDoublyRobust)

OBP clips only IPS and DR; here every weighting estimator takes `clip` (default no clipping, which is OBP's
formula). DM, DR and SNDR read reward-model predictions from `LoggedBandit.q_hat`; `CrossFitRewardModel`
makes them out of fold. Each estimator has two verbs: `estimate_policy_value(data) -> float` and
`estimate_interval(data, interval) -> PolicyValueEstimate` (estimate, interval, n and effective sample size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from training.ope.data import FloatArray, LoggedBandit
from training.ope.intervals import Interval, NormalInterval, RoundTerms

NORMAL_95 = NormalInterval(0.95)


@dataclass(frozen=True)
class PolicyValueEstimate:
    """An estimate of the target policy's value with its interval.

    ess is the effective sample size of the importance weights as used, (sum w)^2 / sum w^2: how many logged
    rounds the estimate is worth (n when the target policy is the logging policy; far fewer when they differ).
    """

    estimator: str
    estimate: float
    lower: float
    upper: float
    confidence: float
    n: int
    ess: float
    interval: str


@dataclass(frozen=True)
class _Estimator:
    """The two public verbs, written once over `round_terms`, which each estimator defines."""

    base_name: ClassVar[str] = ""

    @property
    def name(self) -> str:
        return self.base_name

    def round_terms(self, data: LoggedBandit) -> RoundTerms:
        raise NotImplementedError

    def estimate_policy_value(self, data: LoggedBandit) -> float:
        return self.round_terms(data).estimate()

    def estimate_interval(self, data: LoggedBandit, interval: Interval = NORMAL_95) -> PolicyValueEstimate:
        terms = self.round_terms(data)
        estimate = terms.estimate()
        lower, upper = interval.bounds(terms, estimate)
        return PolicyValueEstimate(estimator=self.name, estimate=estimate, lower=lower, upper=upper,
                                   confidence=interval.confidence, n=terms.n, ess=terms.effective_sample_size(),
                                   interval=interval.method)


@dataclass(frozen=True)
class _Weighted(_Estimator):
    """An estimator that weights rounds by importance, capped at `clip` (math.inf: no clipping)."""

    clip: float = math.inf

    def __post_init__(self) -> None:
        if not self.clip > 0.0:  # also refuses NaN
            raise ValueError(f"clip must be positive (math.inf for no clipping), got {self.clip!r}")

    @property
    def name(self) -> str:
        return self.base_name if self.clip == math.inf else f"{self.base_name}(clip={self.clip:g})"


def _in_unit_interval(values: FloatArray) -> bool:
    return float(values.min()) >= 0.0 and float(values.max()) <= 1.0


def _rewards_in_unit_interval(data: LoggedBandit) -> bool:
    return _in_unit_interval(data.reward)


def _model_terms(data: LoggedBandit, estimator: str) -> tuple[FloatArray, FloatArray]:
    """(q(x_i, pi_e), q_hat(x_i, a_i)): the model's value of the target policy and of the logged action."""
    if data.q_hat is None:
        raise ValueError(f"{estimator} needs reward-model predictions, but the log's q_hat is None: attach them "
                         "with data.with_q_hat(CrossFitRewardModel().fit_predict(data))")
    policy_value: FloatArray = np.einsum("ij,ij->i", data.action_dist, data.q_hat)
    factual: FloatArray = data.q_hat[np.arange(data.n_rounds), data.action]
    return policy_value, factual


@dataclass(frozen=True)
class IPS(_Weighted):
    """Inverse propensity scoring: V = mean(w_i r_i), w_i = min(pi_e(a_i|x_i) / pscore_i, clip).

    Unbiased without clipping when the propensities are right; clipping trades bias for variance.

    >>> log = LoggedBandit(action=[0, 1, 0], reward=[1.0, 0.0, 0.5], pscore=[0.5, 0.25, 0.8],
    ...                    action_dist=[[0.6, 0.4], [0.5, 0.5], [1.0, 0.0]])
    >>> round(IPS().estimate_policy_value(log), 6)  # (1.2 * 1 + 2 * 0 + 1.25 * 0.5) / 3
    0.608333
    >>> IPS(clip=1.0).estimate_interval(log).estimator
    'ips(clip=1)'
    """

    base_name: ClassVar[str] = "ips"

    def round_terms(self, data: LoggedBandit) -> RoundTerms:
        weight = data.importance_weight(self.clip)
        bounds = (0.0, float(weight.max())) if _rewards_in_unit_interval(data) else None
        return RoundTerms(weight=weight, direct=weight * data.reward, value_range=bounds)


@dataclass(frozen=True)
class SNIPS(_Weighted):
    """Self-normalized IPS: V = sum(w_i r_i) / sum(w_i).

    Biased but consistent; unchanged when every weight is scaled by the same factor, and always within the
    range of the observed rewards.

    >>> log = LoggedBandit(action=[0, 1, 0], reward=[1.0, 0.0, 0.5], pscore=[0.5, 0.25, 0.8],
    ...                    action_dist=[[0.6, 0.4], [0.5, 0.5], [1.0, 0.0]])
    >>> round(SNIPS().estimate_policy_value(log), 6)  # (1.2 + 0.625) / (1.2 + 2 + 1.25)
    0.410112
    """

    base_name: ClassVar[str] = "snips"

    def round_terms(self, data: LoggedBandit) -> RoundTerms:
        weight = data.importance_weight(self.clip)
        return RoundTerms(weight=weight, numerator=weight * data.reward)


@dataclass(frozen=True)
class DM(_Estimator):
    """Direct method: V = mean(sum_a pi_e(a|x_i) q_hat(x_i, a)); no importance weights.

    As good as the reward model: low variance, biased when the model is wrong. Its interval treats q_hat as
    fixed, so it shows only the spread of q(x, pi_e) over contexts, not the model's error, and under-covers
    whenever the model is biased; prefer DR's interval for inference. The effective sample size reported is
    that of the (unclipped) importance weights, a measure of the log's overlap with the target.

    >>> log = LoggedBandit(action=[0, 1], reward=[1.0, 0.0], pscore=[0.5, 0.5],
    ...                    action_dist=[[1.0, 0.0], [0.5, 0.5]], q_hat=[[0.8, 0.2], [0.4, 0.0]])
    >>> round(DM().estimate_policy_value(log), 6)  # (0.8 + 0.2) / 2
    0.5
    """

    base_name: ClassVar[str] = "dm"

    def round_terms(self, data: LoggedBandit) -> RoundTerms:
        policy_value, factual = _model_terms(data, "DM")
        bounds = (0.0, 1.0) if _in_unit_interval(policy_value) else None
        return RoundTerms(weight=data.importance_weight(), direct=policy_value, value_range=bounds)


@dataclass(frozen=True)
class DR(_Weighted):
    """Doubly robust: V = mean(q(x_i, pi_e) + w_i (r_i − q_hat(x_i, a_i))).

    Unbiased when either the propensities or the reward model is right; the model's residuals, not the raw
    rewards, carry the importance weights, so its variance is usually well below IPS's.

    >>> log = LoggedBandit(action=[0, 1], reward=[1.0, 0.0], pscore=[0.5, 0.5],
    ...                    action_dist=[[1.0, 0.0], [0.5, 0.5]], q_hat=[[0.8, 0.2], [0.4, 0.0]])
    >>> round(DR().estimate_policy_value(log), 6)  # (0.8 + 2 * 0.2 + 0.2 + 1 * 0) / 2
    0.7
    """

    base_name: ClassVar[str] = "dr"

    def round_terms(self, data: LoggedBandit) -> RoundTerms:
        policy_value, factual = _model_terms(data, "DR")
        weight = data.importance_weight(self.clip)
        bounded = _rewards_in_unit_interval(data) and _in_unit_interval(policy_value) and _in_unit_interval(factual)
        top = float(weight.max())
        return RoundTerms(weight=weight, direct=policy_value + weight * (data.reward - factual),
                          value_range=(-top, 1.0 + top) if bounded else None)


@dataclass(frozen=True)
class SNDR(_Weighted):
    """Self-normalized DR: V = mean(q(x_i, pi_e)) + sum(w_i (r_i − q_hat(x_i, a_i))) / sum(w_i).

    DR with w replaced by w / mean(w), as OBP's SelfNormalizedDoublyRobust: bounded correction, little bias.

    >>> log = LoggedBandit(action=[0, 1], reward=[1.0, 0.0], pscore=[0.5, 0.5],
    ...                    action_dist=[[1.0, 0.0], [0.5, 0.5]], q_hat=[[0.8, 0.2], [0.4, 0.0]])
    >>> round(SNDR().estimate_policy_value(log), 6)  # 0.5 + (2 * 0.2 + 1 * 0) / 3
    0.633333
    """

    base_name: ClassVar[str] = "sndr"

    def round_terms(self, data: LoggedBandit) -> RoundTerms:
        policy_value, factual = _model_terms(data, "SNDR")
        weight = data.importance_weight(self.clip)
        return RoundTerms(weight=weight, direct=policy_value, numerator=weight * (data.reward - factual))


@dataclass(frozen=True)
class CrossFitRewardModel:
    """q_hat(x, a) for every round and action from a scikit-learn regressor, cross-fitted over K folds.

    Features are the context columns followed by a one-hot encoding of the action. The rows are split into
    `n_folds` shuffled folds (seeded); each fold's predictions come from a clone of `regressor` fitted on the
    other folds, so no round's q_hat has seen its own reward, which DR's unbiasedness argument needs. The
    default regressor is `Ridge(alpha=1.0)`: additive in context and action; pass one that models
    interactions (e.g. `HistGradientBoostingRegressor`) when action effects depend on context.

    >>> log = LoggedBandit(action=[0, 1] * 10, reward=[1.0, 0.0] * 10, pscore=[0.5] * 20,
    ...                    action_dist=[[0.5, 0.5]] * 20)
    >>> q_hat = CrossFitRewardModel(n_folds=2).fit_predict(log)
    >>> q_hat.shape, bool((q_hat[:, 0] > q_hat[:, 1]).all())
    ((20, 2), True)
    """

    regressor: Any = None
    n_folds: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_folds < 2:
            raise ValueError(f"n_folds must be at least 2, got {self.n_folds!r}")
        if self.regressor is not None and not (hasattr(self.regressor, "fit") and hasattr(self.regressor, "predict")):
            raise ValueError(f"regressor must be a scikit-learn regressor (fit/predict), got {self.regressor!r}")

    def fit_predict(self, data: LoggedBandit) -> FloatArray:
        """Out-of-fold predictions, shape (n, n_actions)."""
        from sklearn.base import clone
        from sklearn.linear_model import Ridge
        from sklearn.model_selection import KFold

        n, n_actions = data.n_rounds, data.n_actions
        if self.n_folds > n:
            raise ValueError(f"n_folds ({self.n_folds}) cannot exceed the number of rounds ({n})")
        context = data.context if data.context is not None else np.empty((n, 0))
        width = context.shape[1]
        features = np.zeros((n, width + n_actions))
        features[:, :width] = context
        features[np.arange(n), width + data.action] = 1.0
        base = self.regressor if self.regressor is not None else Ridge(alpha=1.0)
        q_hat = np.empty((n, n_actions))
        folds = KFold(n_splits=self.n_folds, shuffle=True, random_state=self.seed)
        for train, test in folds.split(features):
            model = clone(base).fit(features[train], data.reward[train])
            counterfactual = np.zeros((test.shape[0], width + n_actions))
            counterfactual[:, :width] = context[test]
            for a in range(n_actions):
                counterfactual[:, width + a] = 1.0
                q_hat[test, a] = model.predict(counterfactual)
                counterfactual[:, width + a] = 0.0
        return q_hat
