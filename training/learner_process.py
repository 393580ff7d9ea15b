"""The online learner in a process of its own (`nba learn`), and `nba serve`'s supervision of it.

In a worker's thread the learner shares that worker's GIL with its event loop: catching up on a backlog it left
the loop half the interpreter at best. Measured at an offered 700 decisions/s (1 worker, 2 cores, 130,000
examples waiting): in a thread, p50 0.76 s and p99 2.7 s, 1,430 examples learned a second; in a process,
p50 1.8 ms and p99 72 ms, 2,250 a second. The workers then serve the models the learner snapshots (they look for
new snapshots every second), so a served model is at most `NBA_SNAPSHOT_SECONDS` and a second behind.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence

from bandits.registry import PolicyModels
from features.namespaces import NamespaceFeaturizer
from nba.catalog_view import CatalogView
from nba.clock import Clock, SystemClock
from nba.errors import StoreUnavailable
from nba.store import Store
from serving.settings import Settings
from training.online import OnlineLearner

log = logging.getLogger(__name__)
PARENT_CHECK_SECONDS = 1.0
# Waits before starting a learner process again after it failed: longer for each failure that came within the
# longest wait of its start.
RESTART_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)


class LearnerProcess:
    """What `nba learn` runs: the store, the catalog as the store has it, and the online learner."""

    def __init__(self, settings: Settings, store: Store | None = None, clock: Clock | None = None) -> None:
        self.store = store or Store(settings.database_url, synchronous=settings.sqlite_synchronous)
        self._owns_store = store is None
        featurizer = NamespaceFeaturizer()
        self._catalog = self.store.load_catalog()
        self.learner = OnlineLearner(self.store, PolicyModels(self.store, featurizer), featurizer, self.catalog,
                                     clock or SystemClock(), snapshot_every=settings.snapshot_seconds)

    def catalog(self) -> CatalogView:
        """The catalog as the store has it (a version read per call; the whole catalog only when it changed)."""
        try:
            if self.store.catalog_version() != self._catalog.version:
                self._catalog = self.store.load_catalog()
        except StoreUnavailable:  # nobody can change it while the store is down
            pass
        return self._catalog

    def run(self, stop: threading.Event, parent: int | None = None) -> None:
        """Learn until `stop` is set or the process that started this one is gone, then snapshot and let go of
        the lease (`OnlineLearner.stop`)."""
        self.learner.start()
        try:
            while not stop.wait(PARENT_CHECK_SECONDS):
                if parent is not None and os.getppid() != parent:
                    log.warning("learner: the serving process %d is gone; stopping", parent)
                    break
        finally:
            self.learner.stop()
            if self._owns_store:
                self.store.close()


def learn_main(parent: int | None) -> int:
    """`nba learn`: run the learner until SIGTERM or SIGINT (or the parent's exit, with `parent`)."""
    settings = Settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.setswitchinterval(settings.switch_interval_ms / 1000)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    LearnerProcess(settings).run(stop, parent)
    return 0


class LearnerSupervisor:
    """Runs `nba learn` beside the serving workers and starts it again if it dies (not if it exits cleanly:
    that is a stop the serving process is also going through)."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str],
                 backoff: Sequence[float] = RESTART_BACKOFF) -> None:
        self._argv = list(argv)
        self._env = dict(env)
        self._backoff = tuple(backoff)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._watch, name="nba-learner-supervisor", daemon=True)
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        with self._lock:
            return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _spawn(self) -> None:
        with self._lock:
            if not self._stop.is_set():
                self._proc = subprocess.Popen(self._argv, env=self._env)

    def _watch(self) -> None:
        failures = 0
        while not self._stop.is_set():
            proc = self._proc
            assert proc is not None
            started = time.monotonic()
            code = proc.wait()
            if self._stop.is_set() or code == 0:
                return
            failures = failures + 1 if time.monotonic() - started < self._backoff[-1] else 1
            delay = self._backoff[min(failures, len(self._backoff)) - 1]
            log.error("learner process %d exited with %d; starting another in %g s", proc.pid, code, delay)
            if self._stop.wait(delay):
                return
            self.restarts += 1
            self._spawn()

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the learner to stop (it snapshots first), and kill it if it has not within `timeout` s."""
        self._stop.set()
        with self._lock:
            proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.error("learner process %d did not stop within %g s; killed (the queue keeps what it had not "
                      "snapshotted)", proc.pid, timeout)
            proc.kill()
            proc.wait()
