"""`nba serve` runs the online learner in a process of its own: the workers serve what it snapshots, a learner
that dies is replaced and continues from its snapshot, and it stops with the server."""

from __future__ import annotations

import os
import platform
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from nba.store import schema as t
from tests.conftest import CHANNEL
from training.simulator import SegmentSimulator

pytestmark = pytest.mark.e2e


def children(server_pid: int, command: bytes) -> list[int]:
    """Live children of the server's main process whose command line holds `command` (zombies left out)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            line = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == server_pid and fields[0] != "Z" and command in line:
            found.append(int(entry.name))
    return found


def _learners(server_pid: int) -> list[int]:
    """The `nba learn` processes the server started."""
    return children(server_pid, b"training.cli\0learn")


def _until(condition: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """Wait for the server's processes to get somewhere (polling, not timing: returns as soon as they have)."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return result


def _rounds(client: httpx.Client, sim: SegmentSimulator, n: int) -> None:
    for _ in range(n):
        customer = sim.customer()
        answer = client.post("/v1/decide", headers=CHANNEL, json={
            "customer_id": customer.customer_id, "channel": "web", "context": customer.context})
        assert answer.status_code == 200, answer.text
        chosen = answer.json()["actions"][0]["action_id"]
        posted = client.post(f"/v1/decisions/{answer.json()['decision_id']}/reward", headers=CHANNEL,
                             json={"value": sim.reward(customer, chosen)})
        assert posted.status_code == 202 and posted.json()["status"] == "accepted", posted.text


def _served_examples(client: httpx.Client) -> int:
    models = client.get("/health").json()["models"]
    return int(models[0]["examples_learned"]) if models else 0


def _catalog(sim: SegmentSimulator) -> dict[str, Any]:
    return {
        "actions": {a: {"channels": ["web"], "attributes": sim.action_attributes(a)} for a in sim.action_ids},
        "policies": {"learning": {"channels": ["web"], "reward": {"window": "1h", "aggregation": "first"}}},
    }


def _gone(pid: int) -> bool:
    """Ended (a zombie its parent has not reaped yet counts: it runs nothing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True


def _snapshot(database: Path) -> tuple[int, int]:
    """(examples in the newest snapshot, learning rows in no snapshot)."""
    engine = create_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as conn:
            examples = conn.execute(select(t.model_snapshots.c.examples)
                                    .order_by(t.model_snapshots.c.id.desc()).limit(1)).scalar()
            pending = conn.execute(select(func.count()).select_from(t.learn_queue)
                                   .where(t.learn_queue.c.snapshot_id.is_(None))).scalar_one()
    finally:
        engine.dispose()
    return int(examples or 0), int(pending)


# rt_sigtimedwait, which sigwait calls, by machine (/proc/PID/task/TID/syscall names the call a thread is in).
SIGTIMEDWAIT = {"x86_64": 128, "aarch64": 137}


def _blocked_but_by_the_waiter(pid: int, signums: tuple[int, ...]) -> bool:
    """Whether every thread of the process blocks these signals (SigBlk in /proc/PID/task/TID/status) except the
    one waiting for them in sigwait (the kernel shows them unblocked for a thread while it waits for them), and one
    thread is that waiter."""
    waiters = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        call = (task / "syscall").read_text().split()[0]
        if call.isdigit() and int(call) == SIGTIMEDWAIT[platform.machine()]:
            waiters += 1
            continue
        line = next(x for x in (task / "status").read_text().splitlines() if x.startswith("SigBlk:"))
        if any(not int(line.split()[1], 16) >> (signum - 1) & 1 for signum in signums):
            return False
    return waiters == 1


def _lease_holder(database: Path, name: str) -> str:
    engine = create_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as conn:
            holder = conn.execute(select(t.leases.c.holder).where(t.leases.c.name == name)).scalar()
    finally:
        engine.dispose()
    return str(holder or "")


def test_the_learner_runs_beside_the_workers_and_is_replaced_if_it_dies(start_server: Any, tmp_path: Path) -> None:
    sim = SegmentSimulator(segments=2, actions=3, seed=8)
    server = start_server(_catalog(sim), NBA_SNAPSHOT_SECONDS="0.5")
    assert server.proc is not None
    first = _until(lambda: _learners(server.proc.pid), "the learner process")
    assert len(first) == 1
    # SIGTERM is waited for by a thread of its own: another thread that did not block it (OpenBLAS starts one at
    # numpy's import) would die of it, with the process and without a final snapshot.
    _until(lambda: len(list(Path(f"/proc/{first[0]}/task").iterdir())) > 1, "the learner's threads")
    _until(lambda: _blocked_but_by_the_waiter(first[0], (signal.SIGTERM, signal.SIGINT)),
           "every thread but the one waiting for them to block the stop signals")
    for lease in ("online-learner", "sweep"):  # it learns, and it closes reward windows instead of the workers
        _until(lambda name=lease: f":{first[0]}:" in _lease_holder(tmp_path / "nba.db", name), f"the {lease} lease")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        _rounds(client, sim, 150)
        _until(lambda: _served_examples(client) >= 150, "the workers to serve a model of all 150 examples")

        os.kill(first[0], signal.SIGKILL)  # no final snapshot: whatever it had not snapshotted is relearned
        second = _until(lambda: [p for p in _learners(server.proc.pid) if p != first[0]], "a new learner process")
        assert len(second) == 1
        _rounds(client, sim, 100)
        _until(lambda: _snapshot(tmp_path / "nba.db") == (250, 0), "a snapshot of every example, each once")
        _until(lambda: _served_examples(client) == 250, "the workers to serve it")

    os.kill(server.proc.pid, signal.SIGTERM)  # the server alone: its supervisor stops the learner
    server.proc.wait(timeout=60)
    _until(lambda: _gone(second[0]), "the learner to stop with the server", timeout=30)


def test_a_learner_whose_server_was_killed_stops(start_server: Any) -> None:
    """SIGKILL leaves the supervisor no chance to stop it: the learner sees its parent gone and stops itself."""
    server = start_server(_catalog(SegmentSimulator(segments=2, actions=3, seed=9)))
    assert server.proc is not None
    learner = _until(lambda: _learners(server.proc.pid), "the learner process")[0]
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(timeout=30)
    try:
        os.killpg(server.proc.pid, signal.SIGKILL)  # the workers, which are not under test here
    except ProcessLookupError:
        pass
    _until(lambda: _gone(learner), "the learner to notice", timeout=30)
