"""A worker that dies again right after granian respawned it makes granian give up and stop every worker:
`nba serve` starts it again, and the service answers again, with its learner still running."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import CHANNEL
from tests.e2e.test_learner_process import _learners, _until, children

pytestmark = pytest.mark.e2e
CATALOG = {
    "actions": {"a": {"channels": ["web"]}, "b": {"channels": ["web"]}},
    "policies": {"p": {"channels": ["web"], "reward": {"window": "1h", "aggregation": "first"}}},
}


def _workers(server_pid: int) -> list[int]:
    """The granian workers (forked children of the server's main process running `training.cli serve`)."""
    return children(server_pid, b"training.cli\0serve")


def _answers(url: str) -> bool:
    try:
        return httpx.post(f"{url}/v1/decide", headers=CHANNEL, timeout=5,
                          json={"customer_id": "c-1", "channel": "web"}).status_code == 200
    except httpx.TransportError:
        return False


def test_the_server_starts_again_when_a_worker_keeps_dying(start_server: Any, tmp_path: Path) -> None:
    server = start_server(CATALOG)
    assert server.proc is not None
    [learner] = _until(lambda: _learners(server.proc.pid), "the learner process")
    [first] = _until(lambda: _workers(server.proc.pid), "the worker")
    os.kill(first, signal.SIGKILL)
    [respawned] = _until(lambda: [p for p in _workers(server.proc.pid) if p != first], "the respawned worker")
    os.kill(respawned, signal.SIGKILL)  # within granian's 5.5 s of the respawn: it gives up
    _until(lambda: "starting it again" in server.log_path.read_text(), "nba serve to start the server again")
    _until(lambda: [p for p in _workers(server.proc.pid) if p not in (first, respawned)], "a new worker")
    _until(lambda: _answers(server.url), "the service to answer again")
    assert server.proc.poll() is None
    assert _learners(server.proc.pid) == [learner]  # the learner went on throughout


def test_a_worker_that_never_finishes_stopping_is_killed_and_the_server_stops(start_server: Any) -> None:
    """Now and then (about 1 stop in 25 with Ctrl-C) a granian worker never finished stopping, and `nba serve`
    waited for it for ever. A worker stopped with SIGSTOP cannot finish either: it is killed after
    NBA_WORKER_STOP_SECONDS and the server exits."""
    server = start_server(CATALOG, NBA_WORKER_STOP_SECONDS="2")
    assert server.proc is not None
    [worker] = _until(lambda: _workers(server.proc.pid), "the worker")
    [learner] = _until(lambda: _learners(server.proc.pid), "the learner process")
    os.kill(worker, signal.SIGSTOP)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=60) == 0
    assert "Killing worker-1 after it refused to gracefully stop" in server.log_path.read_text()
    _until(lambda: not os.path.exists(f"/proc/{worker}") and not os.path.exists(f"/proc/{learner}"),
           "the worker and the learner to be gone")
