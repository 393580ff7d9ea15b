"""Model hot-swap: `bandits.registry.PolicyModels.publish` with a serialized model, as the online learner does.

A model is trained on logged decisions (bench/learn.py), serialized, and published again and again into the
serving registry; each publish loads the bytes into a new Vowpal Wabbit workspace and swaps it in under the
registry's lock. Also timed: `VWPolicy.serialize` (the learner's side of a swap) and a score right after.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from bandits.registry import PolicyModels
from bandits.vw_args import build_args
from bandits.vw_policy import VWPolicy
from bench.common import CHANNELS, log
from bench.learn import joined, logged_bodies
from features.namespaces import NamespaceFeaturizer
from nba.catalog import Learner, Policy
from nba.store import Store
from nba.types import CustomerState
from training.online import example_from_log

REPEATS = 40


def _stats(values_ms: list[float]) -> dict[str, float]:
    ordered = sorted(values_ms)
    return {"median_ms": round(statistics.median(ordered), 3), "mean_ms": round(statistics.fmean(ordered), 3),
            "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 3), "max_ms": round(ordered[-1], 3),
            "min_ms": round(ordered[0], 3), "repeats": len(ordered)}


def run(workdir: Path, database: Path, train_examples: int = 2000) -> dict[str, Any]:
    featurizer = NamespaceFeaturizer()
    store = Store(f"sqlite:///{workdir / 'hotswap.db'}")
    results: dict[str, Any] = {"setup": {"learner": "project default", "repeats": REPEATS,
                                         "trained_on": f"up to {train_examples} logged decisions"},
                               "by_candidates": {}}
    try:
        for n, name in ((20, "p20"), (200, "p200")):
            policy = Policy(channels=[CHANNELS[n]], learner=Learner())
            args = build_args(policy.learner)
            model = VWPolicy(args)
            examples = joined(logged_bodies(database, name, train_examples))
            for example in examples:
                shared, actions, chosen, reward, probability, keys = example_from_log(example, featurizer)
                model.learn(shared, actions, chosen, reward, probability, keys=keys)
            serialize_ms = []
            blob = b""
            for _ in range(REPEATS):
                started = time.perf_counter()
                blob = model.serialize()
                serialize_ms.append((time.perf_counter() - started) * 1000)
            models = PolicyModels(store, featurizer)
            body = examples[0].body
            ids = [r["action_id"] for r in body["ranking"]]
            candidates = [(aid, body["action_attributes"].get(aid, {})) for aid in ids]
            customer = CustomerState.from_json("c-1", body["customer"])
            publish_ms, first_score_ms, warm_score_ms = [], [], []
            for i in range(REPEATS):
                started = time.perf_counter()
                ok = models.publish(name, 1, policy, blob, snapshot_id=i + 1, examples=len(examples))
                publish_ms.append((time.perf_counter() - started) * 1000)
                if not ok:
                    raise RuntimeError("publish rejected the model")
                scorer = models.scorer(name, 1, policy)
                assert scorer is not None
                started = time.perf_counter()
                scorer.score(body["context"], customer, candidates)  # the first score on the new workspace
                first_score_ms.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                scorer.score(body["context"], customer, candidates)  # its action lines are cached now
                warm_score_ms.append((time.perf_counter() - started) * 1000)
            results["by_candidates"][str(n)] = {
                "examples_learned": len(examples),
                "model_bytes": len(blob),
                "serialize": _stats(serialize_ms),
                "publish": _stats(publish_ms),
                "first_score_after_publish": _stats(first_score_ms),
                "second_score_after_publish": _stats(warm_score_ms),
            }
            log(f"hot-swap at {n} candidates: model {len(blob) / 1024:.0f} KiB, publish median "
                f"{statistics.median(publish_ms):.1f} ms (max {max(publish_ms):.1f}), serialize median "
                f"{statistics.median(serialize_ms):.1f} ms")
    finally:
        store.close()
    return results
