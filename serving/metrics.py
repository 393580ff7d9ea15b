"""Prometheus metrics of this process, served at `/metrics`."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from prometheus_client import Counter, Histogram

DECISIONS = Counter("nba_decisions_total", "Decisions made and logged", ["channel", "mode"])
DECIDE_LATENCY = Histogram(
    "nba_decide_seconds", "Time to decide and durably log a decision",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
REWARDS = Counter("nba_rewards_total", "Rewards received", ["status"])
EVENTS = Counter("nba_events_total", "Events received", ["duplicate"])
RETAINED_DELETED = Counter("nba_retention_deleted_total", "Records deleted past the retention period", ["kind"])
RELEASED_BYTES = Counter("nba_retention_released_bytes_total",
                         "Free space of the database file given back to the file system by retention (SQLite)")


@lru_cache(maxsize=4096)
def child(metric: Any, *values: str) -> Any:
    """The metric's child for these label values, looked up once (`labels` validates and locks on every call,
    which showed in the decide path's profile and runs once per event of a batch)."""
    return metric.labels(*values)
