"""Closing reward windows and releasing expired reservations, by one process of the deployment at a time.

Every worker used to sweep every second: with 2 workers both read the same due decisions and both took the
write lock to close them, and in steady state (windows closing as fast as decisions are made) that doubled the
sweep's share of the lock every decision's commit needs. A lease in the store now names the one process that
sweeps; another takes over once it has missed its renewals. Under `nba serve` the learner's own process
competes for it at once and the workers only from `standby` seconds after their start, so the sweep normally
runs beside the workers rather than in one of them; if the learner process is down for longer than the lease,
a worker takes over (and keeps it: the learner process then waits its turn).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

from nba.clock import Clock
from nba.errors import StoreUnavailable
from nba.store import Store, lease_holder

LEASE = "sweep"


class Sweeper:
    """Closes what is due when its process holds the sweep lease."""

    def __init__(self, store: Store, clock: Clock, every: float, standby: float = 0.0) -> None:
        self._store = store
        self._clock = clock
        self._holder = lease_holder(self)
        # Outlasts two missed sweeps; renewed after every round of a long one.
        self._ttl = timedelta(seconds=max(10.0, 2 * every + 5))
        self._compete_from = time.monotonic() + standby

    def run_once(self, rest: Callable[[float], bool] | None = None) -> int | None:
        """Close every due decision if this process holds the lease; how many changed (None: another sweeps, or
        this one is still standing by). `rest` as in `Store.close_due`; the lease is renewed after each rest, and
        the sweep ends if it was lost meanwhile (a sweep longer than the lease would otherwise run beside the
        next holder's)."""
        if time.monotonic() < self._compete_from or not self._renew():
            return None

        def rest_and_renew(seconds: float) -> bool:
            return (rest is not None and rest(seconds)) or not self._renew()

        return self._store.close_due(self._clock.now(), rest=rest_and_renew)

    def _renew(self) -> bool:
        return self._store.try_lease(LEASE, self._holder, self._clock.now(), self._ttl)

    def release(self) -> None:
        """Let another process sweep at once (a stopping one); a lease not released runs out by itself."""
        try:
            self._store.release_lease(LEASE, self._holder)
        except StoreUnavailable:
            pass
