"""Off-policy evaluation throughput: logged decisions per second through `training.ope`, in process.

A synthetic log of 1,000,000 decisions over 20 actions with 10 context features (softmax logging and target
policies, Bernoulli rewards, seeded) is evaluated by each estimator (IPS, SNIPS, DM, DR, SNDR, and IPS and DR
clipped at 10) with the normal interval, then again with a 200-resample percentile bootstrap. DM, DR and SNDR
read precomputed q_hat; fitting it (`CrossFitRewardModel`: Ridge, 5 folds) is timed on its own, and so is
building and checking the `LoggedBandit`. Each figure gives wall seconds (the best of `repeats` runs for the
normal interval, one run for the bootstrap and the fit), rows per second, and the peak of memory allocated
during the call (tracemalloc, in a separate run so tracing does not slow the timed one; numpy reports its
buffers to it). Nothing here touches the service or the network.

`python -m bench.ope` writes bench/results/ope.json; `--quick` uses 100,000 rows.
"""

from __future__ import annotations

import argparse
import gc
import resource
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.common import CpuWatch, log, machine, write_result
from training.ope import (
    DM,
    DR,
    IPS,
    SNDR,
    SNIPS,
    BootstrapInterval,
    CrossFitRewardModel,
    Interval,
    LoggedBandit,
    NormalInterval,
    PolicyValueEstimate,
)

ROWS = 1_000_000
ACTIONS = 20
FEATURES = 10
RESAMPLES = 200
REPEATS = 3

Estimator = IPS | SNIPS | DM | DR | SNDR


def synthetic_log(rows: int, actions: int, features: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays for a LoggedBandit: contexts, a softmax logging policy that chose the actions, a different
    softmax target policy, Bernoulli rewards from a known mean, and a q_hat near that mean."""
    rng = np.random.default_rng(seed)
    context = rng.normal(size=(rows, features))

    def softmax(logits: np.ndarray) -> np.ndarray:
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=1, keepdims=True)
        return logits

    logging = softmax(context @ rng.normal(scale=0.3, size=(features, actions)))
    target = softmax(context @ rng.normal(scale=0.6, size=(features, actions)))
    cumulative = np.cumsum(logging, axis=1)
    action = np.minimum((rng.random(rows)[:, None] > cumulative).sum(axis=1), actions - 1)
    del cumulative
    mean = 1.0 / (1.0 + np.exp(-(context @ rng.normal(scale=0.2, size=(features, actions))
                                 + rng.normal(scale=0.5, size=actions) - 1.5)))
    index = np.arange(rows)
    reward = (rng.random(rows) < mean[index, action]).astype(np.float64)
    q_hat = np.clip(mean + rng.normal(scale=0.02, size=mean.shape), 0.0, 1.0)
    return {"action": action, "reward": reward, "pscore": logging[index, action], "action_dist": target,
            "context": context, "q_hat": q_hat}


def _peak_mib(call: Callable[[], object]) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return round(peak / 2**20, 1)


def _measure(call: Callable[[], Any], rows: int, repeats: int) -> tuple[dict[str, Any], Any]:
    """Best wall time of `repeats` calls, rows per second, and peak traced MiB of one more call; and the last
    call's result."""
    times = []
    with CpuWatch(None) as watch:
        for _ in range(repeats):
            gc.collect()
            started = time.perf_counter()
            value = call()
            times.append(time.perf_counter() - started)
    best = min(times)
    return {"seconds": round(best, 4), "rows_per_s": round(rows / best), "runs": repeats,
            "peak_alloc_mib": _peak_mib(call), "other_load_cores": watch.result["other_cores"]}, value


def run(rows: int = ROWS, actions: int = ACTIONS, features: int = FEATURES, resamples: int = RESAMPLES,
        repeats: int = REPEATS) -> dict[str, Any]:
    started = time.perf_counter()
    arrays = synthetic_log(rows, actions, features)
    log(f"ope: synthetic log of {rows:,} decisions x {actions} actions in {time.perf_counter() - started:.1f} s")
    results: dict[str, Any] = {"setup": {
        "rows": rows, "actions": actions, "context_features": features, "bootstrap_resamples": resamples,
        "log_mib": round(sum(a.nbytes for a in arrays.values()) / 2**20, 1),
        "timing": f"best of {repeats} for normal intervals and building the log; one run for bootstrap and fit",
    }}
    results["build_log"], data = _measure(lambda: LoggedBandit(**arrays), rows, repeats)
    estimators: list[Estimator] = [IPS(), SNIPS(), DM(), DR(), SNDR(), IPS(clip=10.0), DR(clip=10.0)]
    intervals: list[tuple[str, Interval, int]] = [
        ("normal", NormalInterval(0.95), repeats),
        ("bootstrap", BootstrapInterval(0.95, n_resamples=resamples, seed=0), 1),
    ]
    for label, interval, runs in intervals:
        estimators[0].estimate_interval(data, interval)  # warm-up: the first large allocations, untimed
        figures: dict[str, Any] = {}
        for estimator in estimators:
            def call(estimator: Estimator = estimator, interval: Interval = interval) -> PolicyValueEstimate:
                return estimator.estimate_interval(data, interval)

            figure, result = _measure(call, rows, runs)
            figure["estimate_lower_upper"] = [round(result.estimate, 5), round(result.lower, 5),
                                              round(result.upper, 5)]
            if label == "bootstrap":
                figure["resampled_rows_per_s"] = round(rows * resamples / figure["seconds"])
            figures[estimator.name] = figure
            log(f"  {label:9s} {estimator.name:14s} {figure['seconds']:8.3f} s {figure['rows_per_s']:>13,} rows/s"
                f"  peak {figure['peak_alloc_mib']} MiB")
        results[label] = figures
    model = CrossFitRewardModel(n_folds=5, seed=0)
    results["crossfit_ridge_5_folds"], _ = _measure(lambda: model.fit_predict(data), rows, 1)
    log(f"  cross-fit Ridge, 5 folds: {results['crossfit_ridge_5_folds']['seconds']:.2f} s "
        f"({results['crossfit_ridge_5_folds']['rows_per_s']:,} rows/s)")
    results["ess"] = round(IPS().estimate_interval(data).ess, 1)
    results["max_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ope", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--actions", type=int, default=ACTIONS)
    parser.add_argument("--resamples", type=int, default=RESAMPLES)
    parser.add_argument("--quick", action="store_true", help="100,000 rows, one run each")
    args = parser.parse_args(argv)
    rows, repeats = (min(args.rows, 100_000), 1) if args.quick else (args.rows, REPEATS)
    result = run(rows=rows, actions=args.actions, resamples=args.resamples, repeats=repeats)
    path = write_result("ope", {"machine": machine(), "quick": args.quick, **result})
    log(f"ope done in {result['seconds']:.0f} s -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
