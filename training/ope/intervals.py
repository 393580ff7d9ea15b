"""Confidence intervals for off-policy estimates: normal approximation, percentile bootstrap, empirical Bernstein.

Every estimator in `training.ope.estimators` reduces a log to `RoundTerms`, per-round arrays from which its
estimate is

    V = mean(direct) + sum(numerator) / sum(weight)

(IPS, DM and DR have only the `direct` part; SNIPS only the ratio; SNDR both). The intervals work on that form
alone, so each is written once for every estimator:

- `NormalInterval`: V ± z·sd(influence)/sqrt(n), with the influence values of the form above: the direct terms
  themselves plus the linearized ratio (numerator_i − ratio·weight_i) / mean(weight). For IPS these are w·r, for
  SNIPS w·(r − V)/mean(w), for DR the DR terms.
- `BootstrapInterval`: percentile bootstrap that recomputes V (ratio included) on resampled rows; resamples are
  drawn in chunks sized by a memory budget, and the result does not depend on the chunk size.
- `EmpiricalBernsteinInterval`: a finite-sample bound for a mean of terms with a known range (rewards in [0, 1]);
  see its docstring for the form and its assumptions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import ClassVar, Protocol

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class RoundTerms:
    """Per-round pieces of an estimate V = mean(direct) + sum(numerator) / sum(weight).

    weight: the importance weights as the estimator used them (clipped if it clips); they give the effective
        sample size and, when `numerator` is set, the ratio's denominator.
    direct: terms averaged as they are (None: no such part).
    numerator: numerator of the self-normalized part (None: no such part).
    value_range: (low, high) that every direct term lies in, when known; needed by the Bernstein bound.
    """

    weight: FloatArray
    direct: FloatArray | None = None
    numerator: FloatArray | None = None
    value_range: tuple[float, float] | None = None

    @property
    def n(self) -> int:
        return int(self.weight.shape[0])

    def effective_sample_size(self) -> float:
        """(sum w)^2 / sum w^2 (Kish); 0 when every weight is zero."""
        squares = float(np.dot(self.weight, self.weight))
        return float(self.weight.sum()) ** 2 / squares if squares > 0.0 else 0.0

    def _ratio(self) -> float:
        assert self.numerator is not None
        total = float(self.weight.sum())
        if total <= 0.0:
            raise ValueError("the self-normalized estimate is undefined: every importance weight is zero "
                             "(the target policy never takes a logged action)")
        return float(self.numerator.sum()) / total

    def estimate(self) -> float:
        value = 0.0 if self.direct is None else float(self.direct.mean())
        return value + (0.0 if self.numerator is None else self._ratio())

    def influence(self) -> FloatArray:
        """Per-round influence values; their mean is V and their sd/sqrt(n) its standard error (delta method)."""
        if self.numerator is None:
            assert self.direct is not None
            return self.direct
        ratio = self._ratio()
        linearized: FloatArray = (self.numerator - ratio * self.weight) / float(self.weight.mean())
        return linearized + ratio if self.direct is None else linearized + ratio + self.direct

    def resampled_estimates(self, index: NDArray[np.intp]) -> FloatArray:
        """V on each row of `index` (shape (resamples, n)), a bootstrap resample of rows; NaN where a resample's
        weights are all zero, so its self-normalized estimate is undefined."""
        out = np.zeros(index.shape[0])
        if self.direct is not None:
            out += np.take(self.direct, index).mean(axis=1)
        if self.numerator is not None:
            numerator = np.take(self.numerator, index).sum(axis=1)
            total = np.take(self.weight, index).sum(axis=1)
            ratio = np.full_like(numerator, np.nan)
            np.divide(numerator, total, out=ratio, where=total > 0.0)
            out += ratio
        return out


class Interval(Protocol):
    """How an estimator's interval is computed: `bounds` from the round terms and the point estimate."""

    @property
    def method(self) -> str: ...

    @property
    def confidence(self) -> float: ...

    def bounds(self, terms: RoundTerms, estimate: float) -> tuple[float, float]: ...


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def _check_rows(terms: RoundTerms, method: str) -> None:
    if terms.n < 2:
        raise ValueError(f"a {method} interval needs at least 2 rounds, got {terms.n}")


@dataclass(frozen=True)
class NormalInterval:
    """V ± z_{(1+confidence)/2} · sd(influence) / sqrt(n), with the sample sd (ddof=1).

    >>> terms = RoundTerms(weight=np.ones(4), direct=np.array([0.0, 1.0, 0.0, 1.0]))
    >>> [round(b, 4) for b in NormalInterval(0.95).bounds(terms, terms.estimate())]
    [-0.0658, 1.0658]
    """

    confidence: float = 0.95
    method: ClassVar[str] = "normal"

    def __post_init__(self) -> None:
        _check_confidence(self.confidence)

    def bounds(self, terms: RoundTerms, estimate: float) -> tuple[float, float]:
        _check_rows(terms, self.method)
        z = NormalDist().inv_cdf(0.5 + self.confidence / 2.0)
        half = z * float(terms.influence().std(ddof=1)) / math.sqrt(terms.n)
        return estimate - half, estimate + half


@dataclass(frozen=True)
class BootstrapInterval:
    """Percentile bootstrap: the (1−c)/2 and (1+c)/2 quantiles of V over `n_resamples` resamples of the rows.

    The estimator is recomputed on each resample (SNIPS and SNDR re-normalize), not just the mean of fixed
    terms. Indices come from `numpy.random.default_rng(seed)` in chunks of resamples whose index and gathered
    arrays stay under `max_chunk_bytes` (16 bytes per row per resample), so 1,000,000 rows × 200 resamples
    needs about 128 MiB beyond the log; 64-bit draws make the result independent of the chunk size. Resamples
    whose importance weights are all zero (possible only for tiny logs) have no self-normalized estimate and
    are left out of the quantiles. A percentile interval can, for a very skewed sample, exclude V.
    """

    confidence: float = 0.95
    n_resamples: int = 200
    seed: int = 0
    max_chunk_bytes: int = 128 * 2**20
    method: ClassVar[str] = "bootstrap"

    def __post_init__(self) -> None:
        _check_confidence(self.confidence)
        if self.n_resamples < 2:
            raise ValueError(f"n_resamples must be at least 2, got {self.n_resamples!r}")
        if self.max_chunk_bytes <= 0:
            raise ValueError(f"max_chunk_bytes must be positive, got {self.max_chunk_bytes!r}")

    def resample(self, terms: RoundTerms) -> FloatArray:
        """V on each of the `n_resamples` bootstrap resamples, in draw order."""
        n = terms.n
        rng = np.random.default_rng(self.seed)
        chunk = max(1, min(self.n_resamples, self.max_chunk_bytes // (16 * n)))
        estimates = np.empty(self.n_resamples)
        for start in range(0, self.n_resamples, chunk):
            size = min(chunk, self.n_resamples - start)
            index = rng.integers(0, n, size=(size, n), dtype=np.intp)
            estimates[start:start + size] = terms.resampled_estimates(index)
        return estimates

    def bounds(self, terms: RoundTerms, estimate: float) -> tuple[float, float]:
        _check_rows(terms, self.method)
        estimates = self.resample(terms)
        if np.isnan(estimates).all():
            raise ValueError("no bootstrap resample has a defined estimate (all importance weights zero)")
        tail = (1.0 - self.confidence) / 2.0
        lower, upper = np.nanquantile(estimates, [tail, 1.0 - tail])
        return float(lower), float(upper)


@dataclass(frozen=True)
class EmpiricalBernsteinInterval:
    """Empirical-Bernstein bound (Maurer & Pontil 2009, Theorem 4) for a mean of terms in a known range.

    For i.i.d. Z_i in [0, 1] and δ in (0, 1), with probability at least 1 − δ,
    E[Z] <= mean(Z) + sqrt(2 V_n ln(2/δ) / n) + 7 ln(2/δ) / (3 (n − 1)), V_n the sample variance (ddof=1).
    Applied to X_i = low + R·Z_i (R = high − low) on each side with δ = (1 − confidence)/2, the half-width is

        sqrt(2 Var(X) ln(4/δ') / n) + 7 R ln(4/δ') / (3 (n − 1)),   δ' = 1 − confidence,

    and the interval is clipped to [low, high], where the mean must lie. The estimators supply the range when
    rewards are in [0, 1]: IPS terms w·r lie in [0, M], DR terms in [−M, 1 + M] (with q_hat in [0, 1]) and DM
    terms in [0, 1], where M is the largest importance weight in the log (after clipping). M is read from the
    data: the bound is exact when the clip cap is attained (or M is otherwise known in advance) and a plug-in
    otherwise; clipping keeps it small and the bound tight. Self-normalized estimates are ratios, not means of
    bounded terms, and are refused.

    >>> terms = RoundTerms(weight=np.ones(4), direct=np.array([0.0, 1.0, 0.0, 1.0]), value_range=(0.0, 1.0))
    >>> EmpiricalBernsteinInterval(0.95).bounds(terms, terms.estimate())
    (0.0, 1.0)
    """

    confidence: float = 0.95
    method: ClassVar[str] = "empirical_bernstein"

    def __post_init__(self) -> None:
        _check_confidence(self.confidence)

    def bounds(self, terms: RoundTerms, estimate: float) -> tuple[float, float]:
        _check_rows(terms, self.method)
        if terms.numerator is not None or terms.direct is None:
            raise ValueError("the empirical-Bernstein bound needs a mean of bounded terms; a self-normalized "
                             "estimate (SNIPS, SNDR) is a ratio: use NormalInterval or BootstrapInterval")
        if terms.value_range is None:
            raise ValueError("the empirical-Bernstein bound needs per-round terms of known range: rewards "
                             "(and q_hat at the logged action and under the target policy) in [0, 1]")
        low, high = terms.value_range
        log_term = math.log(4.0 / (1.0 - self.confidence))
        n = terms.n
        variance = float(terms.direct.var(ddof=1))
        half = math.sqrt(2.0 * variance * log_term / n) + 7.0 * (high - low) * log_term / (3.0 * (n - 1))
        return max(low, estimate - half), min(high, estimate + half)
