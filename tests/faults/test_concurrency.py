"""Caps, cooldowns and budgets under 32 concurrent clients spread over two server worker processes: zero overshoot.

The clients hammer a few customers on two channels, with multi-slot and deferred decisions (a deferred decision
reserves its units at decide), so every constraint is contended across processes; each is then checked against
the answers the clients got and against the store's own counters.
"""

from __future__ import annotations

import os
import random
import threading
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from nba.store import Store
from nba.store import schema as t
from tests.conftest import CHANNEL

pytestmark = pytest.mark.e2e

BOTH = ["web", "app"]
BUDGET = 60
CATALOG: dict[str, Any] = {
    "actions": {
        "budgeted": {"channels": BOTH, "attributes": {"category": "gift"}, "budget": {"limit": BUDGET, "window": "1d"}},
        "capped": {"channels": BOTH, "attributes": {"category": "discount"},
                   "caps": [{"per": "customer", "limit": 2, "window": "7d"}]},
        "channel-capped": {"channels": BOTH, "attributes": {"category": "service"},
                           "caps": [{"per": "customer_channel", "limit": 1, "window": "1d"}]},
        "cooled": {"channels": BOTH, "attributes": {"category": "loyalty"}, "cooldown": "12h"},
        "open": {"channels": BOTH, "attributes": {"category": "content"}},
    },
    "policies": {"omni": {"channels": BOTH, "learner": {"exploration": "epsilon", "epsilon": 0.5}}},
}
CLIENTS = 32
DECISIONS_PER_CLIENT = 30
CUSTOMERS = [f"c-{i}" for i in range(24)]


def _client(url: str, seed: int, answers: list[dict[str, Any]], errors: list[str], lock: threading.Lock) -> None:
    rng = random.Random(seed)
    # A new connection for every request: the two workers share one listening socket, so each accept goes to a
    # worker that is waiting; kept-alive connections would stay wherever a burst of 32 first connects landed.
    no_keepalive = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=url, timeout=60, limits=no_keepalive) as client:
        for _ in range(DECISIONS_PER_CLIENT):
            body = {"customer_id": rng.choice(CUSTOMERS), "channel": rng.choice(BOTH), "slots": rng.randint(1, 3),
                    "defer_activation": rng.random() < 0.25}
            response = client.post("/v1/decide", json=body, headers=CHANNEL)
            with lock:
                if response.status_code == 200:
                    answers.append(response.json())
                else:
                    errors.append(f"{response.status_code}: {response.text[:200]}")


def _worker_cpu_seconds(supervisor: int) -> dict[int, float]:
    """CPU time used so far by each worker process (a child of the server's supervisor, not its learner process),
    from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    used: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[1]) == supervisor and b"training.cli\0learn" not in _cmdline(entry):
            # fields after the command: state, ppid, ..., utime (11), stime (12)
            used[int(entry.name)] = (int(fields[11]) + int(fields[12])) / ticks
    return used


def _cmdline(process: Path) -> bytes:
    try:
        return (process / "cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_caps_and_budgets_never_overshoot_across_two_workers(
    start_server: Any, request: pytest.FixtureRequest, sqlite_url: str, backend: str
) -> None:
    database = sqlite_url if backend == "sqlite" else str(request.getfixturevalue("postgres_url"))
    server = start_server(CATALOG, workers=2, database_url=database)
    answers: list[dict[str, Any]] = []
    errors: list[str] = []
    lock = threading.Lock()
    assert server.proc is not None
    before = _worker_cpu_seconds(server.proc.pid)
    threads = [threading.Thread(target=_client, args=(server.url, seed, answers, errors, lock))
               for seed in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = _worker_cpu_seconds(server.proc.pid)
    assert not errors, errors[:5]
    assert len(answers) == CLIENTS * DECISIONS_PER_CLIENT
    spent = {pid: after[pid] - before.get(pid, 0.0) for pid in after}
    assert len(spent) == 2 and min(spent.values()) >= 0.2 * sum(spent.values()), f"one worker idle: {spent}"

    per_customer: Counter[tuple[str, str]] = Counter()
    per_channel: Counter[tuple[str, str, str]] = Counter()
    budget_by_day: Counter[str] = Counter()
    for answer in answers:
        chosen = [a["action_id"] for a in answer["actions"]]
        assert len(chosen) == len(set(chosen))
        for action_id in chosen:
            per_customer[(answer["customer_id"], action_id)] += 1
            per_channel[(answer["customer_id"], answer["channel"], action_id)] += 1
            if action_id == "budgeted":  # deferred or not: a reservation counts until it is released
                budget_by_day[datetime.fromisoformat(answer["created_at"]).date().isoformat()] += 1
    capped = [per_customer[(c, "capped")] for c in CUSTOMERS]
    channel_capped = [per_channel[(c, ch, "channel-capped")] for c in CUSTOMERS for ch in BOTH]
    cooled = [per_customer[(c, "cooled")] for c in CUSTOMERS]
    assert max(capped) == 2 and max(channel_capped) == 1 and max(cooled) == 1, (capped, channel_capped, cooled)
    # Contended and exhausted: nearly every customer reached each limit, and the budget ran out exactly.
    for counts, limit in ((capped, 2), (channel_capped, 1), (cooled, 1)):
        assert sum(count == limit for count in counts) >= 0.9 * len(counts), counts
    # The budget is per UTC day: never over it on any day, and used up (unless the run straddled midnight UTC).
    assert all(n <= BUDGET for n in budget_by_day.values()), budget_by_day
    assert max(budget_by_day.values()) == BUDGET or len(budget_by_day) > 1, budget_by_day

    store = Store(database)
    try:
        used = store.read(lambda c: sum(r.used for r in c.execute(
            select(t.budget_counters.c.used).where(t.budget_counters.c.action_id == "budgeted"))))
        contacts = store.read(lambda c: Counter((r.customer_id, r.action_id) for r in c.execute(
            select(t.contacts.c.customer_id, t.contacts.c.action_id))))
    finally:
        store.close()
    assert used == sum(budget_by_day.values())
    assert contacts == per_customer  # one contact row per chosen slot: the counters and the answers agree
