"""Off-policy evaluation: estimate what a target policy would have earned from decisions another policy logged.

Build a `LoggedBandit` (from arrays or `LoggedBandit.from_frame`), optionally attach reward-model predictions
(`CrossFitRewardModel`), and ask an estimator for its value and interval:

>>> from training.ope import IPS, BootstrapInterval, LoggedBandit
>>> log = LoggedBandit(action=[0, 1, 0, 1], reward=[1.0, 0.0, 1.0, 1.0], pscore=[0.5] * 4,
...                    action_dist=[[0.9, 0.1]] * 4)
>>> result = IPS().estimate_interval(log, BootstrapInterval(n_resamples=100, seed=1))
>>> result.estimator, round(result.estimate, 3), result.n, round(result.ess, 2)
('ips', 0.95, 4, 2.44)
"""

from training.ope.data import LoggedBandit
from training.ope.estimators import DM, DR, IPS, SNDR, SNIPS, CrossFitRewardModel, PolicyValueEstimate
from training.ope.intervals import BootstrapInterval, EmpiricalBernsteinInterval, Interval, NormalInterval, RoundTerms

__all__ = [
    "DM",
    "DR",
    "IPS",
    "SNDR",
    "SNIPS",
    "BootstrapInterval",
    "CrossFitRewardModel",
    "EmpiricalBernsteinInterval",
    "Interval",
    "LoggedBandit",
    "NormalInterval",
    "PolicyValueEstimate",
    "RoundTerms",
]
