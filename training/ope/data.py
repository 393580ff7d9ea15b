"""The logged bandit data every off-policy estimator reads, checked once when it is built.

One frozen `LoggedBandit` holds a log of `n` decisions over `n_actions` actions: the action each decision took,
its reward, the logging policy's probability of that action (`pscore`), and the target policy's whole
distribution over actions (`action_dist`), plus optional context features and reward-model predictions
(`q_hat`). The checks live here, in one function, so no estimator repeats them and none can run on a log that
would make its arithmetic meaningless (a zero propensity, a distribution that does not sum to one, a NaN).

Arrays are not copied when they already have the right dtype; the dataclass keeps read-only views of them, so
the caller's arrays stay writable and the log cannot be changed through the dataclass.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

if TYPE_CHECKING:
    import pandas as pd

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.intp]

DIST_TOLERANCE = 1e-6


@dataclass(frozen=True)
class LoggedBandit:
    """A log of bandit decisions and the target policy to evaluate on it.

    action: shape (n,), int indices into `n_actions`, the action the logging policy took.
    reward: shape (n,), finite rewards observed for those actions.
    pscore: shape (n,), the logging policy's probability of the logged action, in (0, 1].
    action_dist: shape (n, n_actions), the target policy's probabilities pi_e(a|x_i); rows sum to 1.
    context: optional shape (n, d) features, used by reward models.
    q_hat: optional shape (n, n_actions) reward-model predictions q(x_i, a), used by DM, DR and SNDR.

    >>> log = LoggedBandit(action=[0, 1], reward=[1.0, 0.0], pscore=[0.5, 0.5],
    ...                    action_dist=[[1.0, 0.0], [0.5, 0.5]])
    >>> log.n_rounds, log.n_actions
    (2, 2)
    >>> log.importance_weight().tolist()
    [2.0, 1.0]
    """

    action: IntArray
    reward: FloatArray
    pscore: FloatArray
    action_dist: FloatArray
    context: FloatArray | None = None
    q_hat: FloatArray | None = None

    def __post_init__(self) -> None:
        for name, value in validate(
            action=self.action, reward=self.reward, pscore=self.pscore, action_dist=self.action_dist,
            context=self.context, q_hat=self.q_hat,
        ).items():
            object.__setattr__(self, name, value)

    @property
    def n_rounds(self) -> int:
        return int(self.action.shape[0])

    @property
    def n_actions(self) -> int:
        return int(self.action_dist.shape[1])

    def target_pscore(self) -> FloatArray:
        """pi_e(a_i|x_i): the target policy's probability of each logged action."""
        return self.action_dist[np.arange(self.n_rounds), self.action]

    def importance_weight(self, clip: float = math.inf) -> FloatArray:
        """w_i = pi_e(a_i|x_i) / pscore_i, capped at `clip` (OBP's lambda clipping: w = min(w, clip))."""
        weight = self.target_pscore() / self.pscore
        if clip != math.inf:
            np.minimum(weight, clip, out=weight)
        return weight

    def with_q_hat(self, q_hat: ArrayLike) -> LoggedBandit:
        """The same log with reward-model predictions attached (checked like the rest)."""
        return dataclasses.replace(self, q_hat=np.asarray(q_hat, dtype=np.float64))

    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        *,
        action_dist: ArrayLike | Sequence[str],
        action: str = "action",
        reward: str = "reward",
        pscore: str = "pscore",
        context: Sequence[str] | None = None,
        q_hat: ArrayLike | Sequence[str] | None = None,
    ) -> LoggedBandit:
        """Build a log from a pandas DataFrame: one row per decision.

        `action`, `reward` and `pscore` name columns. `action_dist` and `q_hat` are either arrays of shape
        (n, n_actions) or the names of n_actions columns, in action order; `context` names feature columns.

        >>> import pandas as pd
        >>> frame = pd.DataFrame({"action": [0, 1], "reward": [1.0, 0.0], "pscore": [0.5, 0.5],
        ...                       "pi_0": [1.0, 0.5], "pi_1": [0.0, 0.5]})
        >>> LoggedBandit.from_frame(frame, action_dist=["pi_0", "pi_1"]).importance_weight().tolist()
        [2.0, 1.0]
        """
        for name in (action, reward, pscore, *(context or ())):
            if name not in frame.columns:
                raise ValueError(f"column {name!r} is not in the frame (columns: {list(frame.columns)})")

        def matrix(value: ArrayLike | Sequence[str] | None) -> Any:
            if value is None:
                return None
            if isinstance(value, Sequence) and value and all(isinstance(v, str) for v in value):
                missing = [v for v in value if v not in frame.columns]
                if missing:
                    raise ValueError(f"columns {missing} are not in the frame")
                return frame[list(value)].to_numpy(dtype=np.float64)
            return value

        return cls(
            action=frame[action].to_numpy(),
            reward=frame[reward].to_numpy(dtype=np.float64),
            pscore=frame[pscore].to_numpy(dtype=np.float64),
            action_dist=matrix(action_dist),
            context=matrix(context),
            q_hat=matrix(q_hat),
        )


def _float_array(name: str, value: ArrayLike, ndim: int) -> FloatArray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric: {exc}") from None
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {array.shape}")
    bad = ~np.isfinite(array)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} must be finite; {name}{list(where)} = {array[where]}")
    return array


def _frozen(array: NDArray[Any]) -> NDArray[Any]:
    view = array.view()
    view.flags.writeable = False
    return view


def validate(
    *,
    action: ArrayLike,
    reward: ArrayLike,
    pscore: ArrayLike,
    action_dist: ArrayLike,
    context: ArrayLike | None = None,
    q_hat: ArrayLike | None = None,
) -> dict[str, NDArray[Any] | None]:
    """Check a log's arrays and return them as read-only numpy arrays; ValueError names the bad parameter.

    Shapes must agree on n >= 1 rows, actions must be integers in [0, n_actions), propensities in (0, 1],
    rewards and every other value finite, and each row of `action_dist` non-negative and summing to 1 within
    1e-6 (the target policy must be a distribution for the estimators to mean anything).
    """
    dist = _float_array("action_dist", action_dist, 2)
    n, n_actions = dist.shape
    if n == 0 or n_actions == 0:
        raise ValueError(f"action_dist must have at least one row and one action, got shape {dist.shape}")
    negative = dist < 0.0
    if negative.any():
        i, a = (int(v) for v in np.argwhere(negative)[0])
        raise ValueError(f"action_dist must be non-negative; action_dist[{i}, {a}] = {dist[i, a]}")
    off = np.abs(dist.sum(axis=1) - 1.0) > DIST_TOLERANCE
    if off.any():
        i = int(np.argmax(off))
        raise ValueError(f"each row of action_dist must sum to 1 (within {DIST_TOLERANCE}); "
                         f"row {i} sums to {float(dist[i].sum())!r}")

    raw_action = np.asarray(action)
    if raw_action.shape != (n,):
        raise ValueError(f"action must have shape ({n},) to match action_dist, got {raw_action.shape}")
    if raw_action.dtype.kind not in "iu":
        if raw_action.dtype.kind != "f" or not np.array_equal(raw_action, np.round(raw_action)):
            raise ValueError(f"action must hold integer indices into n_actions, got dtype {raw_action.dtype}")
    acts = raw_action.astype(np.intp, copy=False)
    out_of_range = (acts < 0) | (acts >= n_actions)
    if out_of_range.any():
        i = int(np.argmax(out_of_range))
        raise ValueError(f"action must be in [0, {n_actions}); action[{i}] = {raw_action[i]}")

    rewards = _float_array("reward", reward, 1)
    if rewards.shape != (n,):
        raise ValueError(f"reward must have shape ({n},), got {rewards.shape}")
    ps = _float_array("pscore", pscore, 1)
    if ps.shape != (n,):
        raise ValueError(f"pscore must have shape ({n},), got {ps.shape}")
    outside = (ps <= 0.0) | (ps > 1.0)
    if outside.any():
        i = int(np.argmax(outside))
        raise ValueError(f"pscore must be in (0, 1]; pscore[{i}] = {ps[i]}")

    features = None
    if context is not None:
        features = _float_array("context", context, 2)
        if features.shape[0] != n:
            raise ValueError(f"context must have {n} rows, got shape {features.shape}")
    predictions = None
    if q_hat is not None:
        predictions = _float_array("q_hat", q_hat, 2)
        if predictions.shape != (n, n_actions):
            raise ValueError(f"q_hat must have shape ({n}, {n_actions}) like action_dist, got {predictions.shape}")

    return {
        "action": _frozen(acts), "reward": _frozen(rewards), "pscore": _frozen(ps), "action_dist": _frozen(dist),
        "context": None if features is None else _frozen(features),
        "q_hat": None if predictions is None else _frozen(predictions),
    }
