"""The online learner in a process of its own (`nba learn`), and `nba serve`'s supervision of it.

In a worker's thread the learner shares that worker's GIL with its event loop: catching up on a backlog it left
the loop half the interpreter at best. Measured at an offered 700 decisions/s (1 worker, 2 cores, 130,000
examples waiting): in a thread, p50 0.76 s and p99 2.7 s, 1,430 examples learned a second; in a process,
p50 1.5-4.4 ms and p99 39-155 ms (four runs), 1,800-2,440 a second. The workers then serve the models the
learner snapshots (they look for new snapshots four times a second), so a served model is about a snapshot
interval (`NBA_SNAPSHOT_SECONDS`, 1 s) behind the learner.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from bandits.registry import PolicyModels
from features.namespaces import NamespaceFeaturizer
from nba.clock import Clock, SystemClock
from nba.errors import StoreUnavailable
from nba.store import Store
from nba.store.live_catalog import LiveCatalog
from serving.settings import Settings
from serving.sweeper import Sweeper
from training.fair_turn import FairTurn
from training.online import OnlineLearner

log = logging.getLogger(__name__)
PARENT_CHECK_SECONDS = 1.0
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
# Waits before starting a learner process again after it failed: longer for each failure that came within the
# longest wait of its start.
RESTART_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)


class LearnerProcess:
    """What `nba learn` runs: the store, the catalog as the store has it, the online learner, and (with
    `NBA_SWEEP`) a sweeper, which under `nba serve` holds the sweep lease (the workers defer to it): in a
    worker the sweep competes with requests for the GIL, and in steady state it closes as many decisions a
    second as are made."""

    def __init__(self, settings: Settings, store: Store | None = None, clock: Clock | None = None) -> None:
        self.store = store or Store(settings.database_url, synchronous=settings.sqlite_synchronous)
        self._owns_store = store is None
        clock = clock or SystemClock()
        featurizer = NamespaceFeaturizer()
        self._catalog = LiveCatalog(self.store)
        # The learner's CPU work and the sweep's rounds take turns: a round holds the store's write lock, which
        # every worker's commits wait for, and while the learner thread had the GIL a round took 30-190 ms instead
        # of 8 (steady state, 1,300 decisions/s: the workers' p99 followed). In the order asked for: a round waits
        # for the learner's chunk in progress, not for its whole pass.
        turn = FairTurn()
        self.learner = OnlineLearner(self.store, PolicyModels(self.store, featurizer), featurizer,
                                     self._catalog.current, clock, snapshot_every=settings.snapshot_seconds,
                                     publishes=False, turn=turn)
        self.sweeper = (Sweeper(self.store, clock, settings.sweep_seconds, round_turn=turn)
                        if settings.sweep else None)
        self._sweep_every = settings.sweep_seconds

    def run(self, stopped: Callable[[float], bool], parent: int | None = None) -> None:
        """Learn and sweep until `stopped(seconds)` (which waits up to that long) says so, or the process that
        started this one is gone; then snapshot and let go of the leases (`OnlineLearner.stop`)."""
        asked = False

        def rest(seconds: float) -> bool:
            nonlocal asked
            asked = asked or stopped(seconds)
            return asked

        self.learner.start()
        tick = min(PARENT_CHECK_SECONDS, self._sweep_every)
        last_sweep = time.monotonic()
        try:
            while not rest(tick):
                if parent is not None and os.getppid() != parent:
                    log.warning("learner: the serving process %d is gone; stopping", parent)
                    break
                if self.sweeper is not None and time.monotonic() - last_sweep >= self._sweep_every:
                    last_sweep = time.monotonic()
                    self._sweep(rest)
        finally:
            self.learner.stop()
            if self.sweeper is not None:
                self.sweeper.release()
            if self._owns_store:
                self.store.close()

    def _sweep(self, rest: Callable[[float], bool]) -> None:
        assert self.sweeper is not None
        try:
            self.sweeper.run_once(rest=rest)
        except StoreUnavailable as exc:
            log.warning("sweep waiting for the store: %s", exc)
        except Exception:
            log.exception("sweep failed")


def learn_main(parent: int | None) -> int:
    """`nba learn`: run the learner until SIGTERM or SIGINT (or the parent's exit, with `parent`).

    The signals must be blocked in every thread (the supervisor starts the process with them blocked; `nba learn`
    blocks them before its imports): one thread that does not block them (OpenBLAS starts one at numpy's import)
    takes the signal and dies of it with the whole process. `StopSignals` waits for them."""
    settings = Settings()
    settings.configure_logging()
    sys.setswitchinterval(settings.switch_interval_ms / 1000)
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # threads started from now on inherit the mask
    LearnerProcess(settings).run(StopSignals().start().wait, parent)
    return 0


class StopSignals:
    """SIGTERM and SIGINT, blocked in every thread, as an event: a thread of its own waits for them (`sigwait`).

    Not a handler: one that set an Event could interrupt that Event's own wait while it holds the Event's lock,
    and never return. Not `sigtimedwait` with a timeout in the main thread: interrupted (EINTR) once its timeout
    has passed, CPython's returns a siginfo it never filled in, whose signal number can be anything, a stop signal's
    included; after a SIGSTOP and SIGCONT (or a profiler attaching) the learner took that for a stop request and
    exited. `sigwait` has no timeout, and glibc's restarts it after EINTR."""

    def __init__(self) -> None:
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._wait_for_signal, name="nba-stop-signals", daemon=True)

    def start(self) -> StopSignals:
        self._thread.start()
        return self

    def _wait_for_signal(self) -> None:
        signal.sigwait(STOP_SIGNALS)
        self._stopped.set()

    def wait(self, seconds: float) -> bool:
        """Wait up to `seconds` for a stop signal; true once one has come."""
        return self._stopped.wait(seconds)


class LearnerSupervisor:
    """Runs `nba learn` beside the serving workers, in a session of its own (a Ctrl-C or a signal to the
    server's process group reaches the server, which stops it after its final snapshot), and starts another
    whenever it ends (a crash, a kill, or a stop nobody asked the supervisor for) until `stop`.

    The learner is started with `posix_spawn`, not `subprocess`: a `Popen` waits on a pipe until its child has
    called exec, and a granian worker forked meanwhile (granian forks them from another thread) holds that
    pipe open for its whole life, so the `Popen` never returned and no learner was ever started again.
    """

    def __init__(self, argv: Sequence[str], env: Mapping[str, str],
                 backoff: Sequence[float] = RESTART_BACKOFF) -> None:
        self._argv = list(argv)
        self._env = dict(env)
        self._backoff = tuple(backoff)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pid: int | None = None  # the learner running now, if any
        self._thread = threading.Thread(target=self._watch, name="nba-learner-supervisor", daemon=True)
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        with self._lock:
            return self._pid

    def start(self) -> None:
        self._thread.start()

    def _spawn(self) -> int | None:
        with self._lock:
            if self._stop.is_set():
                return None
            try:
                # Born with SIGTERM and SIGINT blocked, so every thread it starts blocks them too (see learn_main).
                self._pid = os.posix_spawn(self._argv[0], self._argv, self._env, setsid=True,
                                           setsigmask=STOP_SIGNALS)
            except OSError as exc:  # no memory or process slots for now: try again after the backoff
                log.error("could not start the learner process: %s", exc)
                return None
            return self._pid

    def _wait(self, pid: int) -> str:
        """Wait for the learner to end; it is forgotten before it is reaped, while its pid is still its own (a
        zombie's), so `stop` can never signal another process that was given the pid after the reaping."""
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:  # reaped by someone else
            pass
        with self._lock:
            self._pid = None
        try:
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
        except ChildProcessError:  # reaped by someone else: how it ended is not known
            code = None
        return f"learner process {pid} exited with {code}"

    def _watch(self) -> None:
        failures = 0
        while not self._stop.is_set():
            started = time.monotonic()
            pid = self._spawn()
            what = self._wait(pid) if pid is not None else "no learner"
            if self._stop.is_set():
                return
            failures = failures + 1 if time.monotonic() - started < self._backoff[-1] else 1
            delay = self._backoff[min(failures, len(self._backoff)) - 1]
            log.error("%s; starting another in %g s", what, delay)
            if self._stop.wait(delay):
                return
            self.restarts += 1

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the learner to stop (it snapshots first), and kill it if it has not within `timeout` s."""
        self._stop.set()
        if self._thread.ident is None:  # never started
            return
        self._signal(signal.SIGTERM)
        self._thread.join(timeout)
        if self._thread.is_alive():
            pid = self._signal(signal.SIGKILL)
            log.error("learner process %s did not stop within %g s; killed (the queue keeps what it had not "
                      "snapshotted)", pid, timeout)
            self._thread.join(timeout)

    def _signal(self, signum: int) -> int | None:
        """Signal the learner running now, if any (its pid, or None). Under the lock that `_wait` takes to forget a
        learner before reaping it: a pid read here is still that learner's, alive or a zombie."""
        with self._lock:
            if self._pid is not None:
                try:
                    os.kill(self._pid, signum)  # a zombie takes a signal and ignores it
                except ProcessLookupError:  # reaped by someone else (see _wait)
                    pass
            return self._pid
