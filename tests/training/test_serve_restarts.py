"""`nba serve` starts its server again when granian gives up on a worker that keeps dying, and only then."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from training.cli import SERVER_RESTART_BACKOFF, STOP_CHECK_SECONDS, serve_until_stopped


class FakeServer:
    """What `serve_until_stopped` reads of a granian server once it has stopped (granian leaves the event of its
    serve loop set when it gives up on a worker)."""

    def __init__(self, exit_code: int | None, interrupt_children: list[int], interrupt_signal: bool = False,
                 signal_while_serving: int | None = None) -> None:
        self.exit_code = exit_code
        self.interrupt_children = interrupt_children
        self.interrupt_signal = interrupt_signal
        self.main_loop_interrupt = threading.Event()
        self.signal_while_serving = signal_while_serving
        self.served = 0

    def signal_handler_interrupt(self) -> None:
        self.interrupt_signal = True
        self.main_loop_interrupt.set()

    def serve(self) -> None:
        self.served += 1
        if self.signal_while_serving is not None:  # before granian would have installed its own handlers
            os.kill(os.getpid(), self.signal_while_serving)
            return
        self.main_loop_interrupt.set()
        if self.exit_code is not None:
            raise SystemExit(self.exit_code)


def _serving(servers: list[FakeServer], on_sleep: object = None) -> tuple[int, list[FakeServer], list[float]]:
    made: list[FakeServer] = []
    slept: list[float] = []

    def make() -> FakeServer:
        made.append(servers[len(made)])
        return made[-1]

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if callable(on_sleep):
            on_sleep(len(slept))

    return serve_until_stopped(make, sleep=sleep), made, slept


def _waits(slept: list[float]) -> float:
    return round(sum(slept), 6)


def test_a_crash_loop_starts_the_server_again_after_a_backoff_until_a_signal_stops_it() -> None:
    crash_loops = [FakeServer(1, [0]), FakeServer(1, [1, 0]), FakeServer(1, [0])]
    stopped = FakeServer(None, [], interrupt_signal=True)
    code, made, slept = _serving([*crash_loops, stopped])
    assert code == 0 and made == [*crash_loops, stopped] and all(s.served == 1 for s in made)
    assert _waits(slept) == sum(SERVER_RESTART_BACKOFF[:3])  # 1 + 2 + 5 s, each waited in full
    assert all(step == STOP_CHECK_SECONDS for step in slept)


def test_a_worker_that_dies_at_every_start_ends_nba_serve_after_the_last_backoff() -> None:
    servers = [FakeServer(1, [0]) for _ in range(len(SERVER_RESTART_BACKOFF) + 1)]
    code, made, slept = _serving(servers)
    assert code == 1 and made == servers
    assert _waits(slept) == sum(SERVER_RESTART_BACKOFF)


@pytest.mark.parametrize(("server", "code"), [
    (FakeServer(None, [], interrupt_signal=True), 0),  # SIGTERM or SIGINT
    (FakeServer(1, [0], interrupt_signal=True), 0),  # a signal while a worker was dying: stop, as asked
    (FakeServer(1, []), 1),  # failed before any worker died (a port it cannot bind): nothing to retry
    (FakeServer(3, []), 3),
])
def test_a_server_stopped_for_any_other_reason_ends_nba_serve(server: FakeServer, code: int) -> None:
    assert _serving([server])[:2] == (code, [server])


def test_a_signal_during_the_wait_ends_nba_serve() -> None:
    crashed = FakeServer(1, [0])
    code, made, slept = _serving([crashed, FakeServer(None, [], interrupt_signal=True)],
                                 on_sleep=lambda n: n == 3 and os.kill(os.getpid(), signal.SIGTERM))
    assert code == 0 and made == [crashed] and len(slept) == 3


def test_a_signal_while_the_next_server_starts_reaches_it() -> None:
    """Before granian has installed its own handlers, the signal is passed on to the server being started."""
    starting = FakeServer(None, [], signal_while_serving=signal.SIGINT)
    code, made, _ = _serving([FakeServer(1, [0]), starting])
    assert code == 0 and made[-1] is starting and starting.interrupt_signal


def test_the_handlers_before_are_back_afterwards() -> None:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    _serving([FakeServer(1, [0]), FakeServer(None, [], interrupt_signal=True)])
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_signal_while_the_next_server_is_made_stops_it_before_it_serves() -> None:
    """A signal that comes while the server object is being made (before it can be passed on to it) is seen once it
    is made: that server never serves, so its wait could never end."""
    crashed, never = FakeServer(1, [0]), FakeServer(None, [])
    made: list[FakeServer] = []

    def make() -> FakeServer:
        if made:
            os.kill(os.getpid(), signal.SIGTERM)  # while `never` is being made
        made.append([crashed, never][len(made)])
        return made[-1]

    assert serve_until_stopped(make, sleep=lambda seconds: None) == 0
    assert made == [crashed, never] and never.served == 0


class ExitsWithNone(FakeServer):
    def serve(self) -> None:
        self.served += 1
        raise SystemExit(None)  # sys.exit() with no code: success


def test_a_server_that_exits_with_none_ends_nba_serve_with_0() -> None:
    assert _serving([ExitsWithNone(None, [])])[0] == 0
