"""Closing reward windows and releasing expired reservations, by one process of the deployment at a time.

Every worker used to sweep every second: with 2 workers both read the same due decisions and both took the
write lock to close them, and in steady state (windows closing as fast as decisions are made) that doubled the
sweep's share of the lock every decision's commit needs. A lease in the store now names the one process that
sweeps; another takes over once it has missed its renewals. Under `nba serve` the learner's own process sweeps:
it competes for the lease at once, and the workers defer to it, competing only while no process holds the
learner lease (no learner process is up: it has not started yet, or it is gone: ended on this machine, or
silent for longer than its lease elsewhere) and giving the sweep lease up as soon as one does.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import timedelta

from nba.clock import Clock
from nba.errors import StoreUnavailable
from nba.store import Store, lease_holder

LEASE = "sweep"


class Sweeper:
    """Closes what is due when its process holds the sweep lease."""

    def __init__(self, store: Store, clock: Clock, every: float, defer_to: str | None = None,
                 round_turn: AbstractContextManager[object] | None = None) -> None:
        self._store = store
        self._round_turn = round_turn  # held around each round (`Store.close_due`)
        self._clock = clock
        self._holder = lease_holder(self)
        # Outlasts two missed sweeps; renewed after every round of a long one.
        self._ttl = timedelta(seconds=max(10.0, 2 * every + 5))
        self._defer_to = defer_to  # a lease whose holder sweeps in this one's stead
        self._held = False

    def run_once(self, rest: Callable[[float], bool] | None = None) -> int | None:
        """Close every due decision if this process holds the lease; how many changed (None: another sweeps, or
        this one defers). `rest` as in `Store.close_due`; the lease is renewed after each rest, and the sweep
        ends if it was lost meanwhile (a sweep longer than the lease would otherwise run beside the next
        holder's)."""
        if self._defer_to is not None and self._store.lease_held(self._defer_to, self._clock.now()):
            if self._held:
                self.release()
            return None
        if not self._renew():
            return None

        def rest_and_renew(seconds: float) -> bool:
            return (rest is not None and rest(seconds)) or not self._renew()

        return self._store.close_due(self._clock.now(), rest=rest_and_renew, round_turn=self._round_turn)

    def _renew(self) -> bool:
        self._held = self._store.try_lease(LEASE, self._holder, self._clock.now(), self._ttl)
        return self._held

    def release(self) -> None:
        """Let another process sweep at once (a stopping one); a lease not released runs out by itself."""
        try:
            self._store.release_lease(LEASE, self._holder)
            self._held = False
        except StoreUnavailable:
            pass
