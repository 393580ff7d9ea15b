"""Reward and event ingest over HTTP: events one per request, events 1,000 per request, rewards one per request.

Fresh database; the catalog is the bench catalog. Events go to 100,000 random customers (80% `page_view`, 20%
`purchase`, validated against their registered schema, each folded into the customer's stored state). Rewards go
to decisions made just before by a closed-loop decide run (bench/loadgen.py --capture), cycling through them
(the policies aggregate with `sum`, so every reward is stored and accepted).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import (
    BENCH,
    CHANNEL_KEY,
    CHANNELS,
    log,
    nba_server,
    post_events,
    profile_events,
    run_wrk,
    wait_for_quiet,
    write_catalog,
)

EVENT_CUSTOMERS = 100_000


def _env(mode: str, **extra: str) -> dict[str, str]:
    return {"BENCH_LUA_DIR": str(BENCH), "BENCH_MODE": mode, "BENCH_TOKEN": CHANNEL_KEY,
            "BENCH_CUSTOMERS": str(EVENT_CUSTOMERS), **extra}


def capture_decisions(port: int, seconds: float, path: Path) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.loadgen", "--port", str(port), "--token", CHANNEL_KEY,
            "--channel", CHANNELS[20], "--customers", "10000", "--duration", str(seconds), "--connections", "32",
            "--requests", "200000", "--capture", str(path)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, cwd=BENCH.parent)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _rate(result: dict[str, Any], per_request: int) -> dict[str, Any]:
    ok = result["statuses"].get("202", 0)
    return {
        "requests_per_s": round(result["rps"], 1),
        "items_per_s": round(ok * per_request / result["duration_s"], 1),
        "items_per_request": per_request,
        "accepted_requests": ok,
        "p50_ms": result["p50_ms"],
        "p99_ms": result["p99_ms"],
        "other_load_cores": result["cpu"]["other_cores"],
        "wrk": result,
    }


def run(workdir: Path, seconds: float = 10.0, workers_list: tuple[int, ...] = (1, 2)) -> dict[str, Any]:
    catalog = write_catalog(workdir)
    runs: list[dict[str, Any]] = []
    for workers in workers_list:
        database = workdir / f"ingest-w{workers}.db"
        with nba_server(workdir, database, catalog, workers, f"ingest-w{workers}") as server:
            import random

            post_events(server.url, profile_events("c-", 0, 10_000, random.Random(5)))
            log(f"ingest: single events, {workers} worker(s)")
            run_wrk(server.url, BENCH / "ingest.lua", _env("event"), 2, 32)
            wait_for_quiet()
            single = _rate(run_wrk(server.url, BENCH / "ingest.lua", _env("event"), seconds, 32, server=server), 1)
            log(f"  {single['items_per_s']:.0f} events/s (p50 {single['p50_ms']:.1f} ms, "
                f"p99 {single['p99_ms']:.1f} ms)")
            log(f"ingest: batches of 1,000 events, {workers} worker(s)")
            wait_for_quiet()
            batched = _rate(run_wrk(server.url, BENCH / "ingest.lua", _env("events", BENCH_BATCH="1000"), seconds, 4,
                                    timeout=60, server=server), 1000)
            log(f"  {batched['items_per_s']:.0f} events/s ({batched['requests_per_s']:.1f} batches/s, "
                f"p50 {batched['p50_ms']:.0f} ms per batch)")
            ids = workdir / f"decisions-w{workers}.txt"
            made = capture_decisions(server.port, min(seconds, 8.0), ids)
            log(f"ingest: rewards for {made['captured']} decisions, {workers} worker(s)")
            wait_for_quiet()
            rewards = _rate(run_wrk(server.url, BENCH / "ingest.lua", _env("reward", BENCH_IDS=str(ids)), seconds,
                                    32, server=server), 1)
            log(f"  {rewards['items_per_s']:.0f} rewards/s (p50 {rewards['p50_ms']:.1f} ms, "
                f"p99 {rewards['p99_ms']:.1f} ms)")
            runs.append({"workers": workers, "events_single": single, "events_batched": batched,
                         "rewards": rewards, "decisions_for_rewards": made["captured"]})
    return {
        "setup": {"server": "python -m training.cli serve (granian), fresh SQLite per worker count",
                  "wrk": {"threads": 1, "connections": {"single events": 32, "batched events": 4, "rewards": 32},
                          "seconds": seconds},
                  "event_customers": EVENT_CUSTOMERS},
        "runs": runs,
    }
