"""The `nba` command: `nba serve` starts the service, `nba learn` the online learner alone; experiment commands
join in later issues."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from serving.settings import Settings

if TYPE_CHECKING:
    from training.learner_process import LearnerSupervisor

log = logging.getLogger("nba.serve")


def _serve(args: argparse.Namespace) -> int:
    from granian import Granian
    from granian.constants import Interfaces

    settings = Settings()
    host = args.host or settings.host
    port = args.port or settings.port
    workers = args.workers or settings.workers
    if settings.database_url.startswith("sqlite") and ":memory:" in settings.database_url:
        print("NBA_DATABASE_URL must be a file or a server: an in-memory database loses every decision",
              file=sys.stderr)
        return 2
    print(f"nba: serving on http://{host}:{port} with {workers} worker(s), store {settings.database_url}",
          flush=True)
    supervisor = _learner_beside_workers(settings)
    try:
        return serve_until_stopped(lambda: Granian(
            "training.service:app_from_env",
            factory=True,
            address=host,
            port=port,
            interface=Interfaces.ASGI,
            workers=workers,
            log_access=False,
            respawn_failed_workers=True,
            workers_kill_timeout=settings.worker_stop_seconds,
        ), restore_handlers=False)
    finally:
        if supervisor is not None:
            supervisor.stop()


# Waits before starting granian again after it gave up on a crashing worker: longer for each time it gave up
# within the longest wait of its start. Once it has given up that often in a row, `nba serve` gives up too (exit 1):
# a worker that dies at every start (a store it cannot reach, a broken install) is for whatever runs `nba serve`
# to see, not to be retried here for ever.
SERVER_RESTART_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)
STOP_CHECK_SECONDS = 0.1


def serve_until_stopped(make_server: Callable[[], Any], backoff: Sequence[float] = SERVER_RESTART_BACKOFF,
                        sleep: Callable[[float], None] = time.sleep, restore_handlers: bool = True) -> int:
    """Run the server until a signal stops it, starting it again when it gives up on its workers by itself.

    granian respawns a worker that dies, but exits, stopping the healthy workers too, when the same worker dies
    again within 5.5 s of its respawn (a fixed "crash loop" rule): two OOM kills in a row took the whole service
    down for good in a chaos run. It is started again after a backoff instead; a server that stopped for any
    other reason (a signal, a port it cannot bind) ends `nba serve`, with 0 after a signal.

    Between two servers SIGTERM and SIGINT go to a handler of this function's: it stops the wait, and one that
    comes while the next server starts (before granian installs its own handlers) is passed on to that server.
    The handler only sets flags, and the wait looks at them every `STOP_CHECK_SECONDS`: a handler that set an
    Event could interrupt that Event's own wait while it holds the Event's lock, and never return.
    """
    stop = {"asked": False}
    starting: list[Any] = []

    def on_signal(_signum: int, _frame: object) -> None:
        stop["asked"] = True
        for server in starting:
            server.signal_handler_interrupt()  # granian's own, which its serve loop reads

    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _serve_again(make_server, backoff, sleep, stop, starting, on_signal)
    finally:
        # `nba serve` keeps these (a second Ctrl-C must not cut the learner's stop short); a caller may want its own.
        if restore_handlers:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def _serve_again(make_server: Callable[[], Any], backoff: Sequence[float], sleep: Callable[[float], None],
                 stop: dict[str, bool], starting: list[Any], on_signal: Callable[[int, object], None]) -> int:
    failures = 0
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while True:
        if stop["asked"]:
            return 0
        server = make_server()
        starting[:] = [server]
        if stop["asked"]:  # came while the server was being made, before the handler could pass it on
            return 0
        started = time.monotonic()
        try:
            server.serve()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        finally:  # granian's handlers, installed by serve(), give way to this function's again
            starting.clear()
            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
        if server.interrupt_signal or stop["asked"]:
            return 0
        if not server.interrupt_children:
            return code
        failures = failures + 1 if time.monotonic() - started < backoff[-1] else 1
        workers = ", ".join(str(i + 1) for i in server.interrupt_children)
        if failures > len(backoff):
            log.error("the server stopped after worker %s kept dying, %d times in a row; giving up", workers,
                      failures)
            return code or 1
        delay = backoff[failures - 1]
        log.error("the server stopped after worker %s kept dying; starting it again in %g s", workers, delay)
        for _ in range(max(1, round(delay / STOP_CHECK_SECONDS))):
            if stop["asked"]:
                return 0
            sleep(STOP_CHECK_SECONDS)


def _learner_beside_workers(settings: Settings) -> LearnerSupervisor | None:
    """With `NBA_LEARNER_PROCESS`, start `nba learn` and tell the workers (through their environment) to serve
    its snapshots instead of learning themselves."""
    if not (settings.learner and settings.learner_process):
        return None
    from training.learner_process import LearnerSupervisor

    env = {**os.environ, "NBA_LEARNER": "true"}
    os.environ["NBA_LEARNER"] = "false"
    supervisor = LearnerSupervisor([sys.executable, "-m", "training.cli", "learn", "--parent", str(os.getpid())], env)
    supervisor.start()
    return supervisor


def _learn(args: argparse.Namespace) -> int:
    # Blocked before anything starts a thread (importing numpy starts OpenBLAS's): a thread that does not block
    # them would take a SIGTERM meant for `learn_main`'s wait and die of it, with no final snapshot.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    from training.learner_process import learn_main

    return learn_main(args.parent)


def _compact(_args: argparse.Namespace) -> int:
    import sqlite3

    from nba.errors import StoreUnavailable
    from nba.store.free_space import compact

    url = Settings().database_url
    try:
        before, after = compact(url)
    except (ValueError, OSError, sqlite3.Error, StoreUnavailable) as exc:
        print(f"nba compact: {url}: {exc}", file=sys.stderr)
        return 2
    print(f"nba compact: {url}: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB; retention now gives free "
          "space back as it goes")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nba", description="Real-time next-best-action service")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the HTTP service (settings from NBA_* variables)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--workers", type=int, default=None)
    serve.set_defaults(func=_serve)
    learn = sub.add_parser("learn", help="run the online learner alone (`nba serve` starts one unless "
                                         "NBA_LEARNER_PROCESS=false)")
    learn.add_argument("--parent", type=int, default=None, help="stop when this process is gone")
    learn.set_defaults(func=_learn)
    compact = sub.add_parser("compact", help="rewrite the SQLite file (NBA_DATABASE_URL) without its free space, "
                                             "so that retention can shrink it from then on; stop the service first")
    compact.set_defaults(func=_compact)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
