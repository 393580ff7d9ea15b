"""`nba serve` starts its server again when granian gives up on a worker that keeps dying, and only then."""

from __future__ import annotations

import threading

import pytest

from training.cli import serve_until_stopped


class FakeServer:
    """What `serve_until_stopped` reads of a granian server once it has stopped."""

    def __init__(self, exit_code: int | None, interrupt_children: list[int], interrupt_signal: bool = False) -> None:
        self.exit_code = exit_code
        self.interrupt_children = interrupt_children
        self.interrupt_signal = interrupt_signal
        self.main_loop_interrupt = threading.Event()
        self.served = 0

    def serve(self) -> None:
        self.served += 1
        if self.exit_code is not None:
            raise SystemExit(self.exit_code)


class SignalDuringWait(threading.Event):
    """A SIGTERM arriving while `nba serve` waits to start the server again: the stopped server's handler, still
    installed, sets its flag and its event."""

    def __init__(self, server: FakeServer) -> None:
        super().__init__()
        self.server = server

    def wait(self, timeout: float | None = None) -> bool:
        self.server.interrupt_signal = True
        self.set()
        return super().wait(timeout)


def _serving(servers: list[FakeServer]) -> tuple[int, list[FakeServer]]:
    made: list[FakeServer] = []

    def make() -> FakeServer:
        made.append(servers[len(made)])
        return made[-1]

    return serve_until_stopped(make, backoff=(0.001,)), made


def test_a_crash_loop_starts_the_server_again_until_a_signal_stops_it() -> None:
    crash_loops = [FakeServer(1, [0]), FakeServer(1, [1, 0])]
    stopped = FakeServer(None, [], interrupt_signal=True)
    code, made = _serving([*crash_loops, stopped])
    assert code == 0 and made == [*crash_loops, stopped] and all(s.served == 1 for s in made)


@pytest.mark.parametrize("server", [
    FakeServer(None, [], interrupt_signal=True),  # SIGTERM or SIGINT
    FakeServer(1, [0], interrupt_signal=True),  # a signal while a worker was dying: stop, as asked
    FakeServer(1, []),  # failed before any worker died (a port it cannot bind): nothing to retry
    FakeServer(3, []),
])
def test_a_server_stopped_for_any_other_reason_ends_nba_serve(server: FakeServer) -> None:
    code, made = _serving([server])
    assert made == [server] and code == (server.exit_code or 0)


def test_a_signal_during_the_wait_ends_nba_serve() -> None:
    crashed = FakeServer(1, [0])
    crashed.main_loop_interrupt = SignalDuringWait(crashed)
    code, made = _serving([crashed, FakeServer(None, [], interrupt_signal=True)])
    assert code == 0 and made == [crashed]
