"""Everything a server process holds: store, catalog view, live models, the decision engine, background work."""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from bandits.registry import PolicyModels
from bandits.vw_policy import check_learner
from features.namespaces import NamespaceFeaturizer
from nba.catalog import catalog_digest, load_catalog_file
from nba.catalog_view import CatalogView
from nba.clock import Clock, SystemClock
from nba.decide import DecisionEngine
from nba.errors import StoreUnavailable
from nba.store import Store
from nba.store.learning_repo import LEARNER_LEASE
from nba.store.live_catalog import LiveCatalog
from serving.settings import Settings
from serving.sweeper import Sweeper

log = logging.getLogger(__name__)
MODEL_REFRESH_TICKS = 1  # maintenance ticks (0.25 s) between looks for new model snapshots without a learner


class Service(Protocol):
    """Background work started and stopped with the server (the online learner, later the outbox)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


ServiceFactory = Callable[["Runtime"], Service]


class Runtime:
    """The process-wide state behind the HTTP layer; built once per server worker."""

    def __init__(
        self,
        settings: Settings,
        store: Store | None = None,
        clock: Clock | None = None,
        services: Sequence[ServiceFactory] = (),
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.store = store or Store(settings.database_url, synchronous=settings.sqlite_synchronous)
        self.featurizer = NamespaceFeaturizer()
        if settings.catalog:
            self._apply_catalog_file(settings.catalog)
        self._catalog = LiveCatalog(self.store)
        self.models = PolicyModels(self.store, self.featurizer)
        self.engine = DecisionEngine(
            self.store, self.catalog, self.models, self.clock, refresh_catalog=self.refresh_catalog
        )
        self.api_keys = settings.keys()
        self._sweeper = (Sweeper(self.store, self.clock, settings.sweep_seconds, defer_to=self._sweep_defers_to())
                         if settings.sweep else None)
        self._services = [factory(self) for factory in services]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.store_healthy = True

    def catalog(self) -> CatalogView:
        return self._catalog.view

    def _sweep_defers_to(self) -> str | None:
        """A worker of `nba serve` whose learner runs in a process of its own leaves the sweep to that process
        while it is up, that is while the learner lease is held (see `serving.sweeper`)."""
        return LEARNER_LEASE if self.settings.learner_process and not self.settings.learner else None

    @property
    def services(self) -> tuple[Service, ...]:
        """The background services this process runs (the learner, retention)."""
        return tuple(self._services)

    def current_catalog(self) -> CatalogView:
        """The catalog as the store has it now (one small read): what another process changed a moment ago is in
        it, where `catalog()` may be up to a maintenance tick (0.25 s) behind."""
        return self._catalog.current()

    def refresh_catalog(self) -> CatalogView:
        """Reload the catalog from the store (after an admin change here or in another process)."""
        return self._catalog.refresh()

    def start(self) -> None:
        # Load every online policy's model now, not in the first request that needs it (a snapshot read and a
        # model load would otherwise run inside that request, in the event loop).
        for name, (version, policy) in self._catalog.view.policies.items():
            if policy.mode == "online":
                try:
                    self.models.scorer(name, version, policy)
                except Exception as exc:  # the first decide tries again and falls back if it must
                    log.warning("could not load the model of policy %s v%d at start: %s", name, version, exc)
        self._thread = threading.Thread(target=self._maintain, name="nba-maintenance", daemon=True)
        self._thread.start()
        for service in self._services:
            service.start()
        # Everything loaded so far (modules, catalog, models) lives as long as the process: keep it out of the
        # cyclic garbage collector's full passes, which otherwise stall requests for tens of milliseconds.
        gc.collect()
        gc.freeze()

    def _apply_catalog_file(self, path: str) -> None:
        """Apply `NBA_CATALOG` if its content is new to the store, validated as strictly as the admin API does;
        a file the store has applied before is left alone, so restarts keep what the admin API changed since.
        A changed file that is invalid, or that conflicts with the store (a channel another policy serves), stops
        the start with the reason: it is an operator's change, and serving without it would hide that."""
        digest = catalog_digest(load_catalog_file(path))
        if self.store.applied_catalog_digest() == digest:
            log.info("catalog file %s: applied before; the store's catalog (admin changes included) stands", path)
            return
        if self.store.adopt_catalog_digest(digest):  # a store from before digests: it applied the file at each start
            log.info("catalog file %s: counted as applied (the store predates catalog digests); its catalog stands",
                     path)
            return
        catalog = load_catalog_file(path, client_input=True)
        for name, policy in catalog.policies.items():
            check_learner(policy, field=f"policies.{name}.learner")
        if self.store.seed_catalog(catalog, self.clock.now(), digest=digest, clock=self.clock.now):
            log.info("catalog file %s: applied (%s)", path, digest)

    def stop(self) -> None:
        self._stop.set()
        for service in self._services:
            service.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._sweeper is not None:
            self._sweeper.release()
        self.store.close()

    def sweep(self) -> int:
        """Close due reward windows and release expired reservations now, whoever holds the sweep lease."""
        return self.store.close_due(self.clock.now())

    def _maintain(self) -> None:
        """Keep the catalog current and close reward windows, until stopped. A process that runs no learner also
        picks up, at every tick, the models a learner elsewhere snapshots (a learner's own process does that
        while another holds the learning lease)."""
        ticks = 0
        sweep_every = max(1, int(self.settings.sweep_seconds / 0.25))
        refresh_every = 0 if self.settings.learner else MODEL_REFRESH_TICKS
        while not self._stop.wait(0.25):
            ticks += 1
            try:
                if self.store.catalog_version() != self._catalog.view.version:
                    self.refresh_catalog()
                if self._sweeper is not None and ticks % sweep_every == 0:
                    self._sweeper.run_once(rest=self._stop.wait)
                if refresh_every and ticks % refresh_every == 0:
                    self.models.refresh(self._catalog.view.policies)
                self.store_healthy = True
            except StoreUnavailable as exc:
                self.store_healthy = False
                log.warning("maintenance waiting for the store: %s", exc)
            except Exception:
                log.exception("maintenance iteration failed")
