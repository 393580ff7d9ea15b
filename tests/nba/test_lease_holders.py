"""A lease whose holder's process has ended is taken at once by a process on the same machine; any other waits."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from nba.clock import ManualClock
from nba.store import Store, lease_holder, lease_holders
from nba.store.lease_holders import holder_gone

TTL = timedelta(minutes=10)
# A holder's name as another process would have made it: `lease_holder` of this process, with its pid (and the
# start time that goes with it) in place of ours.
CHILD_HOLDER = """
import os, sys
from nba.store import lease_holder
sys.stdout.write(lease_holder(object()) + "\\n")
sys.stdout.flush()
sys.stdin.read()  # until the test closes stdin
"""


@pytest.fixture
def child() -> Iterator[subprocess.Popen[str]]:
    """A live process that has told its lease holder name (first line of its stdout); ends when stdin closes."""
    process = subprocess.Popen([sys.executable, "-c", CHILD_HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def _holder(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    return process.stdout.readline().strip()


def test_a_live_process_holds_its_lease_and_an_ended_one_does_not(child: subprocess.Popen[str]) -> None:
    holder = _holder(child)
    assert holder and str(child.pid) in holder
    assert not holder_gone(holder)
    assert not holder_gone(lease_holder(object()))  # this process
    assert child.stdin is not None
    child.stdin.close()
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # ended, not yet reaped: a zombie
    assert holder_gone(holder)
    child.wait()  # reaped: its pid is free (or another process's, with another start time)
    assert holder_gone(holder)


def test_a_pid_given_to_a_newer_process_is_not_the_holders() -> None:
    """The holder's pid alone could belong to a process started after it: the start time tells them apart."""
    name, _, where = lease_holder(object()).rpartition("@")
    machine, _, ticks = where.rpartition(".")
    assert not holder_gone(f"{name}@{machine}.{ticks}")
    assert holder_gone(f"{name}@{machine}.{int(ticks) - 1}")


@pytest.mark.parametrize("holder", [
    "worker-7",  # a name without the part after @ (as leases were named before)
    "host:1:ab@0123456789abcdef.4026531836.5",  # another kernel boot (or another machine)
    "host:notapid:ab@{machine}.5",
    "",
])
def test_a_holder_the_machine_cannot_vouch_for_is_never_judged_gone(holder: str) -> None:
    machine = lease_holder(object()).rpartition("@")[2].rpartition(".")[0]
    assert not holder_gone(holder.format(machine=machine))


def test_a_lease_whose_holder_ended_is_taken_at_once(
    store: Store, clock: ManualClock, child: subprocess.Popen[str]
) -> None:
    """Before its time to live is up, both for those taking the lease and for those asking whether it is held (the
    workers, which sweep only while no learner holds its lease)."""
    holder = _holder(child)
    assert store.try_lease("learner", holder, clock.now(), TTL)
    assert store.lease_held("learner", clock.now())
    assert not store.try_lease("learner", "elsewhere:1:1", clock.now(), TTL)
    assert child.stdin is not None
    child.stdin.close()
    child.wait()
    assert not store.lease_held("learner", clock.now())
    mine = lease_holder(object())
    assert store.try_lease("learner", mine, clock.now(), TTL)
    assert store.lease_held("learner", clock.now())
    assert not store.try_lease("learner", holder, clock.now(), TTL)  # the same name, were it to ask again


def test_a_live_process_that_proc_hides_still_holds_its_lease(
    child: subprocess.Popen[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With /proc mounted hidepid (another user's processes absent from it), the kernel still knows the pid: a
    holder whose process exists is not judged gone, and one whose pid is free is."""
    holder = _holder(child)
    monkeypatch.setattr(lease_holders, "_stat_fields", lambda pid: None)
    assert not holder_gone(holder)
    assert child.stdin is not None
    child.stdin.close()
    child.wait()
    assert holder_gone(holder)
