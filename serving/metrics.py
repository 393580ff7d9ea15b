"""Prometheus metrics of this process, served at `/metrics`."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

DECISIONS = Counter("nba_decisions_total", "Decisions made and logged", ["channel", "mode"])
DECIDE_LATENCY = Histogram(
    "nba_decide_seconds", "Time to decide and durably log a decision",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
REWARDS = Counter("nba_rewards_total", "Rewards received", ["status"])
EVENTS = Counter("nba_events_total", "Events received", ["duplicate"])
