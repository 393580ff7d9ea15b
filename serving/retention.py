"""The retention thread: keeps the store within `NBA_RETENTION_DAYS` while the service runs.

One process at a time prunes (a lease in the store: the workers of a machine and the hosts of a PostgreSQL
deployment share it). It looks for old records once a minute (`NBA_RETENTION_SECONDS`), and once a second while
a pass leaves work behind.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta

from nba.catalog_view import CatalogView
from nba.clock import Clock
from nba.constraints import longest_counter_window
from nba.errors import StoreUnavailable
from nba.store import Store, lease_holder
from nba.store.retention import Cursors, Horizons, PruneResult, Release, prune
from serving.metrics import RELEASED_BYTES, RETAINED_DELETED, child

log = logging.getLogger("nba.retention")

LEASE = "retention"
LEASE_TTL = timedelta(minutes=2)


class RetentionService:
    """A background thread that deletes what is past the retention period (see `nba.store.retention`)."""

    def __init__(
        self,
        store: Store,
        catalog: Callable[[], CatalogView],
        clock: Clock,
        keep: timedelta | None,
        idle_every: float = 60.0,
        busy_every: float = 1.0,
        release: Release | None = None,
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._clock = clock
        self._keep = keep
        self._idle_every = idle_every
        self._busy_every = busy_every
        self._release = release
        self._holder = lease_holder(self)
        # Held across the wait between passes: another process takes over only once this one has missed two.
        self._lease_ttl = max(LEASE_TTL, timedelta(seconds=2 * idle_every + 60))
        self._cursors = Cursors()
        self._told_unreleasable = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="nba-retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        try:
            self._store.release_lease(LEASE, self._holder)
        except StoreUnavailable:
            pass  # it runs out by itself

    def run_once(self) -> PruneResult | None:
        """One pass, if this process holds the lease (None when another does)."""
        now = self._clock.now()
        if not self._store.try_lease(LEASE, self._holder, now, self._lease_ttl):
            self._cursors = Cursors()  # another process prunes: where this one was is no longer known
            return None
        window = longest_counter_window(list(self._catalog().actions.values()))
        result = prune(self._store, Horizons.at(now, self._keep, window), self._cursors, rest=self._stop.wait,
                       release=self._release)
        for kind, count in result.deleted.items():
            if count:
                child(RETAINED_DELETED, kind).inc(count)
        if any(result.deleted.values()):
            log.info("retention deleted %s", ", ".join(f"{n} {kind}" for kind, n in result.deleted.items() if n))
        if result.released_bytes:
            RELEASED_BYTES.inc(result.released_bytes)
            log.info("retention gave %.1f MiB of free space back to the file system", result.released_bytes / 2**20)
        if result.unreleasable_bytes and not self._told_unreleasable:
            self._told_unreleasable = True
            log.warning("the database file holds %.1f MiB of free space it cannot give back: it was created before "
                        "incremental auto-vacuum; `nba compact`, while the service is stopped, converts it",
                        result.unreleasable_bytes / 2**20)
        return result

    def _run(self) -> None:
        wait = self._idle_every
        while not self._stop.wait(wait):
            try:
                result = self.run_once()
                wait = self._busy_every if result is not None and result.more else self._idle_every
            except StoreUnavailable as exc:
                log.warning("retention waiting for the store: %s", exc)
                wait = self._busy_every * 5
            except Exception:
                log.exception("retention pass failed")
                wait = self._idle_every
