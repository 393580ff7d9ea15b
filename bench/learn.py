"""Learning throughput: joined examples per second into Vowpal Wabbit, in process.

The examples are real logged decisions (the bodies the decide benchmark wrote to its database), each given a
reward, and rebuilt the way the online learner does it: `training.online.example_from_log`, then
`bandits.vw_policy.VWPolicy.learn` on a model with the project's default learner arguments. Three figures:
rebuilding only, learning only (features already built), and the learner's whole per-example work (decode the
logged JSON body, rebuild, learn).
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bandits.vw_args import build_args
from bandits.vw_policy import VWPolicy
from bench.common import CpuWatch, log
from features.namespaces import NamespaceFeaturizer
from nba.catalog import Learner
from nba.store.codec import loads
from nba.store.learning_repo import JoinedExample
from training.online import example_from_log

MAX_EXAMPLES = 20_000
MIN_EXAMPLES = 3_000  # fewer logged decisions are cycled through to reach this many
PHASE_SECONDS = 6.0


def logged_bodies(database: Path, policy: str, limit: int) -> list[str]:
    """Raw JSON bodies of logged decisions that chose at least one action."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT body FROM decisions WHERE policy_name = ? ORDER BY created_ms LIMIT ?",
                            (policy, limit)).fetchall()
    return [row[0] for row in rows if loads(row[0])["actions"]]


def joined(bodies: Sequence[str], seed: int = 11) -> list[JoinedExample]:
    rng = random.Random(seed)
    return [JoinedExample(seq=i + 1, decision_id=f"d-{i}", slot=0, reward=1.0 if rng.random() < 0.1 else 0.0,
                          body=loads(raw)) for i, raw in enumerate(bodies)]


def _repeat(items: Sequence[str], at_least: int) -> list[str]:
    out = list(items)
    while out and len(out) < at_least:
        out += items[: at_least - len(out)]
    return out


def _timed(items: Sequence[Any], step: Callable[[Any], None], seconds: float) -> dict[str, Any]:
    """Run `step` over items until done or `seconds` pass; examples per second."""
    started = time.perf_counter()
    done = 0
    with CpuWatch(None) as watch:
        for item in items:
            step(item)
            done += 1
            if done % 64 == 0 and time.perf_counter() - started > seconds:
                break
    elapsed = time.perf_counter() - started
    return {"examples": done, "seconds": round(elapsed, 3), "per_s": round(done / elapsed, 1),
            "us_per_example": round(elapsed / done * 1e6, 1), "other_load_cores": watch.result["other_cores"]}


def measure(bodies: Sequence[str], seconds: float = PHASE_SECONDS) -> dict[str, Any]:
    featurizer = NamespaceFeaturizer()
    args = build_args(Learner())
    bodies = _repeat(bodies, MIN_EXAMPLES)
    examples = joined(bodies)
    rebuilt: list[tuple[Any, ...]] = []

    def rebuild(example: JoinedExample) -> None:
        rebuilt.append(example_from_log(example, featurizer))

    out: dict[str, Any] = {"vw_args": " ".join(args), "actions_per_example": len(examples[0].body["ranking"])}
    out["rebuild_only"] = _timed(examples, rebuild, seconds)
    model = VWPolicy(args)

    def learn(item: tuple[Any, ...]) -> None:
        shared, actions, chosen, reward, probability, keys = item
        model.learn(shared, actions, chosen, reward, probability, keys=keys)

    out["learn_only"] = _timed(rebuilt, learn, seconds)
    fresh = VWPolicy(args)
    rng = random.Random(11)

    def whole(raw: str) -> None:
        example = JoinedExample(0, "d", 0, 1.0 if rng.random() < 0.1 else 0.0, loads(raw))
        shared, actions, chosen, reward, probability, keys = example_from_log(example, featurizer)
        fresh.learn(shared, actions, chosen, reward, probability, keys=keys)

    out["decode_rebuild_learn"] = _timed(bodies, whole, seconds)
    return out


def run(database: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"setup": {
        "source": f"logged decision bodies from the decide benchmark's database ({database.name})",
        "learner": "project default (Learner()): bandits/vw_args.py build_args",
        "phase_seconds": PHASE_SECONDS,
    }, "by_candidates": {}}
    for n, policy in ((20, "p20"), (200, "p200")):
        bodies = logged_bodies(database, policy, MAX_EXAMPLES)
        if not bodies:
            raise RuntimeError(f"no logged decisions for {policy} in {database}: run the http benchmark first")
        log(f"learn: {len(bodies)} logged decisions at {n} candidates")
        figures = measure(bodies)
        figures["logged_decisions_available"] = len(bodies)
        results["by_candidates"][str(n)] = figures
        log(f"  rebuild {figures['rebuild_only']['per_s']:.0f}/s, learn {figures['learn_only']['per_s']:.0f}/s, "
            f"whole {figures['decode_rebuild_learn']['per_s']:.0f}/s")
    return results
