"""Budget use as the decide path reads it: from the store, at most every `ttl` seconds per budget window.

Budgets are global counters that every decision on a budgeted action reads and every reservation changes.
The read only decides whether to leave an exhausted action out before scoring; the reservation in the
decision's write transaction (`decision_repo._take_budget`) is what enforces the limit. A slightly stale
read can therefore never let a budget be exceeded: at worst an action whose last unit just went is chosen,
its reservation fails, and the decision is drawn again without it, logged with the budget exclusion.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

from sqlalchemy import Connection

from nba.catalog import Action
from nba.store.decision_repo import budget_window, load_budget_used

Key = tuple[str, int, int]  # action id, window length (s), window start (epoch ms)


class BudgetReads:
    """A per-process cache of budget use, refreshed from the store when older than `ttl` seconds."""

    def __init__(self, ttl: float = 0.1, max_entries: int = 100_000) -> None:
        self._ttl = ttl
        self._max_entries = max_entries
        self._values: dict[Key, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def used(self, conn: Connection, actions: Mapping[str, Action], now_ms: int) -> dict[str, int]:
        keys = {aid: (aid, *budget_window(a, now_ms)) for aid, a in actions.items() if a.budget is not None}
        if not keys:
            return {}
        now = time.monotonic()
        with self._lock:
            cached = {aid: self._values.get(key) for aid, key in keys.items()}
        used = {aid: hit[0] for aid, hit in cached.items() if hit is not None and now - hit[1] <= self._ttl}
        stale = {aid: actions[aid] for aid in keys if aid not in used}
        if stale:
            fresh = load_budget_used(conn, stale, now_ms)
            with self._lock:
                if len(self._values) + len(fresh) > self._max_entries:
                    self._values.clear()
                for aid, value in fresh.items():
                    self._values[keys[aid]] = (value, now)
            used.update(fresh)
        return used

    def forget(self, action_id: str) -> None:
        """Drop what is cached for an action (its reservation just failed: the next decision reads it again)."""
        with self._lock:
            for key in [key for key in self._values if key[0] == action_id]:
                del self._values[key]
