"""Closing reward windows and releasing expired reservations, by one process of the deployment at a time.

Every worker used to sweep every second: with 2 workers both read the same due decisions and both took the
write lock to close them, and in steady state (windows closing as fast as decisions are made) that doubled the
sweep's share of the lock every decision's commit needs. A lease in the store now names the one process that
sweeps (the learner's own process under `nba serve`); another takes over once it has missed its renewals.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from nba.clock import Clock
from nba.errors import StoreUnavailable
from nba.store import Store, lease_holder

LEASE = "sweep"


class Sweeper:
    """Closes what is due when its process holds the sweep lease."""

    def __init__(self, store: Store, clock: Clock, every: float) -> None:
        self._store = store
        self._clock = clock
        self._holder = lease_holder(self)
        # Outlasts two missed sweeps and a long one (a backlog of 20,000 takes about 3 s with its rests).
        self._ttl = timedelta(seconds=max(10.0, 2 * every + 5))

    def run_once(self, rest: Callable[[float], bool] | None = None) -> int | None:
        """Close every due decision if this process holds the lease; how many changed (None: another sweeps).
        `rest` as in `Store.close_due`."""
        if not self._store.try_lease(LEASE, self._holder, self._clock.now(), self._ttl):
            return None
        return self._store.close_due(self._clock.now(), rest=rest)

    def release(self) -> None:
        """Let another process sweep at once (a stopping one); a lease not released runs out by itself."""
        try:
            self._store.release_lease(LEASE, self._holder)
        except StoreUnavailable:
            pass
