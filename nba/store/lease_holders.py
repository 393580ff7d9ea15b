"""Names of lease holders, and telling from another process on the same machine that a holder's process is gone.

A lease runs out by itself, but only after its time to live: a learner killed by SIGKILL left its successor (and
the sweep, which defers to it) waiting up to 10 s, and a retention pass up to 2 minutes. A holder's name now says
which process on which running kernel holds it, so that a process on the same machine can see that this
process has ended (or is a zombie, or its pid belongs to a newer process) and take the lease at once. A holder
on another machine, another kernel boot or in another pid namespace is never judged gone this way: its lease runs
out as before.
"""

from __future__ import annotations

import os
import socket
from functools import cache
from pathlib import Path

HOST_CHARS = 48  # of the host name kept in a holder's name; the column holds 128 characters
UNKNOWN = "unknown"  # the machine, where /proc does not say: its holders are never judged gone


def lease_holder(owner: object) -> str:
    """A lease holder's name: this host, this process and the object holding it (a learner, a sweeper), so that two
    holders never share a name, even within one process; after the `@`, what `holder_gone` needs."""
    pid = os.getpid()
    return f"{socket.gethostname()[:HOST_CHARS]}:{pid}:{id(owner):x}@{_machine()}.{_start_ticks(pid)}"


def holder_gone(holder: str) -> bool:
    """Whether the process that holds a lease under this name has certainly ended: it ran on this machine's
    running kernel in this pid namespace, and its pid is now free, a zombie's, or a newer process's."""
    try:
        name, _, where = holder.rpartition("@")
        pid = int(name.split(":")[-2])
        machine, _, ticks = where.rpartition(".")
        started = int(ticks)
    except (ValueError, IndexError):  # a name without the part after `@`: nothing is known of its process
        return False
    if not name or machine != _machine() or machine == UNKNOWN or started < 0 or pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # the kernel's word, whatever /proc shows of other users' processes (hidepid)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process: it exists
        pass
    fields = _stat_fields(pid)
    if fields is None:  # hidden or unreadable: a process that exists is not known to be another
        return False
    return fields[0] == "Z" or int(fields[19]) != started


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (state first, start time at index 19), None if it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2:].split()
    except (OSError, ValueError):
        return None


@cache
def _machine() -> str:
    """This kernel boot and pid namespace (`unknown` where /proc does not say: never matched)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:16]
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return UNKNOWN
    return f"{boot}.{namespace}"


def _start_ticks(pid: int) -> int:
    """When the process started, in clock ticks since boot (-1 where /proc does not say)."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None else -1
