"""Peak memory of a server holding many customer states.

Customer state lives in the store, so the server's memory should not grow with the number of customers. The
bench ingests one `profile_updated` event for each of N customers over HTTP in batches of 1,000 (two senders),
records the server's RSS every 100,000 customers, then decides for a sample of them and reads RSS and peak RSS
(VmHWM) of granian's main process and of the worker. N is 1,000,000 unless the time budget runs out first; then
the figures at the N reached are reported and the 1,000,000 figure is extrapolated linearly from the checkpoints,
clearly labelled as such.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec

from bench.common import BENCH, CHANNEL_AUTH, CHANNEL_KEY, CHANNELS, CpuWatch, log, nba_server, write_catalog

TARGET = 1_000_000
BATCH = 1_000
CHECKPOINT = 100_000
SENDERS = 2
DECIDE_SAMPLE = 2_000
ID_FORMAT = "m-{:07d}"


def _batch(start: int, rng: random.Random) -> bytes:
    events = [{"customer_id": ID_FORMAT.format(i), "type": "profile_updated", "event_id": f"pm-{i:07d}",
               "properties": {"age": rng.randint(16, 80), "segment": f"s{rng.randint(0, 9)}",
                              "loyalty_member": rng.random() < 0.3, "region": f"r{rng.randint(0, 49)}"}}
              for i in range(start, start + BATCH)]
    return msgspec.json.encode(events)


def _decide_sample(port: int, customers: int, requests: int) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.loadgen", "--port", str(port), "--token", CHANNEL_KEY,
            "--channel", CHANNELS[20], "--customers", str(customers), "--id-format", ID_FORMAT,
            "--requests", str(requests), "--duration", "60", "--connections", "32"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=BENCH.parent)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def run(workdir: Path, budget_s: float, target: int = TARGET) -> dict[str, Any]:
    catalog = write_catalog(workdir)
    database = workdir / "memory.db"
    batches = target // BATCH
    lock = threading.Lock()
    state = {"next": 0, "done": 0, "failed": None}
    deadline = time.monotonic() + budget_s
    checkpoints: list[dict[str, Any]] = []

    def sender(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=server.url, timeout=120,
                          headers={**CHANNEL_AUTH, "Content-Type": "application/json"}) as client:
            while True:
                with lock:
                    if state["next"] >= batches or time.monotonic() > deadline or state["failed"]:
                        return
                    index = state["next"]
                    state["next"] += 1
                body = _batch(index * BATCH, rng)
                response = client.post("/v1/events", content=body)
                if response.status_code != 202:
                    with lock:
                        state["failed"] = f"{response.status_code} {response.text[:300]}"
                    return
                with lock:
                    state["done"] += 1

    with nba_server(workdir, database, catalog, 1, "memory") as server:
        baseline = server.memory()
        log(f"memory: ingesting up to {target:,} customers in batches of {BATCH:,} "
            f"(budget {budget_s:.0f} s); server RSS at start {baseline['total_rss_kb'] / 1024:.0f} MiB")
        started = time.monotonic()
        watch = CpuWatch(server).__enter__()
        threads = [threading.Thread(target=sender, args=(i,), daemon=True) for i in range(SENDERS)]
        for thread in threads:
            thread.start()
        next_checkpoint = CHECKPOINT
        while any(t.is_alive() for t in threads):
            time.sleep(0.5)  # polling the progress counter for RSS checkpoints
            with lock:
                customers = state["done"] * BATCH
            if customers >= next_checkpoint:
                memory = server.memory()
                checkpoints.append({"customers": customers, "elapsed_s": round(time.monotonic() - started, 1),
                                    "worker_rss_kb": sum(w["rss_kb"] for w in memory["workers"].values()),
                                    "total_rss_kb": memory["total_rss_kb"],
                                    "db_bytes": _db_bytes(database)})
                log(f"  {customers:,} customers after {checkpoints[-1]['elapsed_s']:.0f} s, server RSS "
                    f"{memory['total_rss_kb'] / 1024:.0f} MiB")
                next_checkpoint = (customers // CHECKPOINT + 1) * CHECKPOINT
        for thread in threads:
            thread.join()
        if state["failed"]:
            raise RuntimeError(f"event ingest failed: {state['failed']}")
        watch.__exit__(None, None, None)
        ingested = state["done"] * BATCH
        ingest_s = time.monotonic() - started
        after_ingest = server.memory()
        log(f"  ingested {ingested:,} customers in {ingest_s:.0f} s ({ingested / ingest_s:.0f} events/s); "
            f"deciding for {DECIDE_SAMPLE:,} of them")
        sample = _decide_sample(server.port, ingested, DECIDE_SAMPLE)
        after_decide = server.memory()
        customers_in_store = _count(database, "customers")
    worker_after = sum(w["rss_kb"] for w in after_decide["workers"].values())
    worker_peak = max((w["peak_rss_kb"] for w in after_decide["workers"].values()), default=0)
    result: dict[str, Any] = {
        "setup": {"server": "python -m training.cli serve, 1 worker, SQLite", "batch": BATCH, "senders": SENDERS,
                  "event": "profile_updated with 4 properties, one per customer",
                  "decide_sample": DECIDE_SAMPLE, "budget_s": round(budget_s)},
        "customers_target": target,
        "customers_ingested": ingested,
        "customers_in_store": customers_in_store,
        "reached_target": ingested >= target,
        "ingest_seconds": round(ingest_s, 1),
        "ingest_events_per_s": round(ingested / ingest_s, 1) if ingest_s else None,
        "ingest_cpu": watch.result,
        "decide_sample_result": {k: sample[k] for k in ("completed", "achieved_rps", "statuses", "p50_ms", "p99_ms")},
        "memory_at_start": baseline,
        "memory_after_ingest": after_ingest,
        "memory_after_decide": after_decide,
        "server_rss_mib": round(after_decide["total_rss_kb"] / 1024, 1),
        "worker_rss_mib": round(worker_after / 1024, 1),
        "worker_peak_rss_mib": round(worker_peak / 1024, 1),
        "main_peak_rss_mib": round(after_decide["main"]["peak_rss_kb"] / 1024, 1),
        "database_mib": round(_db_bytes(database) / 2**20, 1),
        "checkpoints": checkpoints,
    }
    if ingested < target:
        result["extrapolated_to_target"] = _extrapolate(checkpoints, baseline, target)
    log(f"  server RSS {result['server_rss_mib']} MiB (worker peak {result['worker_peak_rss_mib']} MiB) with "
        f"{ingested:,} customers; database {result['database_mib']} MiB")
    return result


def _extrapolate(checkpoints: list[dict[str, Any]], baseline: dict[str, Any], target: int) -> dict[str, Any]:
    """A straight line through the RSS checkpoints (least squares), read at `target` customers."""
    points = [(0, baseline["total_rss_kb"])] + [(c["customers"], c["total_rss_kb"]) for c in checkpoints]
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / var if var else 0.0
    value = mean_y + slope * (target - mean_x)
    return {"label": f"EXTRAPOLATED (linear fit over {n} RSS checkpoints), not measured",
            "total_rss_mib_at_target": round(value / 1024, 1), "kib_per_1000_customers": round(slope * 1000, 2)}


def _db_bytes(database: Path) -> int:
    return sum(p.stat().st_size for p in database.parent.glob(database.name + "*") if p.exists())


def _count(database: Path, table: str) -> int:
    import sqlite3

    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
