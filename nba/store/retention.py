"""A retention pass: delete, in short transactions, what is past its horizon (see `retention_repo`)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import Connection

from nba.clock import epoch_ms
from nba.durations import MAX_DURATION
from nba.store import retention_repo
from nba.store.decision_repo import IDEMPOTENCY_TTL
from nba.store.free_space import free_space, release_pages
from nba.store.store import Store

# What a count or a replay may still look back to, beyond its window: a decide reads contacts a moment after it
# reads its clock, and other hosts' clocks may be behind this one's.
CLOCK_MARGIN = timedelta(hours=1)


@dataclass(frozen=True)
class Horizons:
    """Epoch milliseconds before which each kind of record goes."""

    decisions_ms: int
    contacts_ms: int
    events_ms: int
    budget_windows_ms: int
    idempotency_ms: int
    budget_history_ms: int = 0

    @classmethod
    def at(cls, now: datetime, keep: timedelta | None, counter_window: timedelta) -> Horizons:
        """The horizons at `now` for a retention period of `keep` (None: keep the log for ever).

        Contacts stay as long as the longest cap or cooldown (`counter_window`) counts them, even past `keep`;
        decide request ids go once their replay period (a day) is over, whatever `keep` is, and decisions not
        before (a replay finds its decision: with `keep` at a day, one went an hour before its key and its
        replay logged a new decision); budget counters of past windows become history (`fold_old_budget_windows`),
        kept as long as a budget window may last. All an hour later than that (`CLOCK_MARGIN`).
        """
        replay = IDEMPOTENCY_TTL + CLOCK_MARGIN
        idempotency_ms = epoch_ms(now - replay)
        if keep is None:
            return cls(0, 0, 0, 0, idempotency_ms)
        log_ms = epoch_ms(now - keep)
        return cls(epoch_ms(now - max(keep, replay)), epoch_ms(now - max(keep, counter_window) - CLOCK_MARGIN),
                   log_ms, log_ms, idempotency_ms, epoch_ms(now - MAX_DURATION - CLOCK_MARGIN))


@dataclass
class Cursors:
    """Where the scans of decisions and contacts go on in the next pass: past what a pass could not delete yet
    (decisions still open, contacts timed later) rather than over it again."""

    decision: str | None = None
    contact: int | None = None
    releasing: bool = False  # free pages are being given back, down to `Release.stop` (see `Release`)


@dataclass(frozen=True)
class Release:
    """When a pass gives a SQLite file's free pages back to the file system (`nba.store.free_space`).

    It starts once more than `start` of the file is free, and at least `min_bytes`, and goes on, `chunk_pages` a
    transaction (or what 5 ms allow), until no more than `stop` is, or less than `min_bytes`. Free pages below
    that are kept: the rows to come reuse them, and releasing them would only make the file grow again. The
    steady state of retention (a day deleted, a day written) frees about one retention period's share of the
    file, far below `start`; a shortened retention period or a fall in traffic goes above it.
    """

    start: float = 0.25
    stop: float = 0.10
    min_bytes: int = 64 * 2**20
    chunk_pages: int = 256  # 1 MiB of 4 KiB pages, if 5 ms allow (`free_space.RELEASE_SECONDS`)


@dataclass
class PruneResult:
    """Rows deleted by a pass, per kind; `more` when the pass stopped at its limit with work left."""

    deleted: dict[str, int]
    more: bool
    released_bytes: int = 0  # free space given back to the file system
    # Free space past `Release.start` that cannot be given back: a SQLite file created before incremental
    # auto-vacuum (`nba compact` converts it).
    unreleasable_bytes: int = 0


def prune(store: Store, horizons: Horizons, cursors: Cursors | None = None, chunk: int = 100,
          max_chunks: int = 50, rest: Callable[[float], object] | None = None,
          release: Release | None = None) -> PruneResult:
    """Delete what is past `horizons`, `chunk` rows a transaction, in at most `max_chunks` transactions of each
    kind, going on from `cursors` (which it moves on) where a pass before stopped.

    Each transaction is short (5 ms for 100 decisions and their rows on SQLite) so that decides, which wait for
    the write lock, hardly notice; with `rest`, it is called after each with the seconds the transaction took, and
    should wait as long (a backlog, such as the first pass over a large log, then takes the write lock half the
    time at most, not back to back). A pass that stops at its limit with work left says so (`more`), and the
    caller runs another soon. On SQLite the pass then gives free pages back to the file system as `release`
    (default `Release()`) says, in at most `max_chunks` transactions too.
    """
    cursors = cursors if cursors is not None else Cursors()
    write = store.write if rest is None else _resting(store, rest)
    deleted = dict.fromkeys(("decisions", "contacts", "events", "idempotency_keys", "budget_windows",
                             "budget_history"), 0)
    more = False
    for _ in range(max_chunks if horizons.decisions_ms > 0 else 0):
        ids, cursors.decision = store.read(partial(
            retention_repo.old_decisions, before_ms=horizons.decisions_ms, limit=chunk, after=cursors.decision))
        if ids:
            deleted["decisions"] += write(
                partial(retention_repo.delete_decisions, decision_ids=ids, before_ms=horizons.decisions_ms),
                [f"decision:{d}" for d in ids],
            )
        if cursors.decision is None:
            break
    else:
        more = horizons.decisions_ms > 0
    for _ in range(max_chunks if horizons.contacts_ms > 0 else 0):
        count, cursors.contact = write(partial(
            retention_repo.delete_old_contacts, before_ms=horizons.contacts_ms, limit=chunk, after=cursors.contact))
        deleted["contacts"] += count
        if cursors.contact is None:
            break
    else:
        more = more or horizons.contacts_ms > 0
    steps: list[tuple[str, int, Callable[..., int]]] = [
        ("events", horizons.events_ms, retention_repo.delete_old_events),
        ("idempotency_keys", horizons.idempotency_ms, retention_repo.delete_old_idempotency_keys),
        ("budget_windows", horizons.budget_windows_ms, retention_repo.fold_old_budget_windows),
        ("budget_history", horizons.budget_history_ms, retention_repo.delete_old_budget_history),
    ]
    for name, before_ms, step in steps:
        for _ in range(max_chunks if before_ms > 0 else 0):
            count = write(partial(step, before_ms=before_ms, limit=chunk))
            deleted[name] += count
            if count < chunk:
                break
        else:
            more = more or before_ms > 0
    released, unreleasable, releasing = _release(store, write, release or Release(), cursors, max_chunks)
    return PruneResult(deleted, more or releasing, released, unreleasable)


def _release(store: Store, write: Callable[..., Any], release: Release, cursors: Cursors,
             max_chunks: int) -> tuple[int, int, bool]:
    """Give free pages back as `release` says: the bytes released, the free bytes past `release.start` that
    cannot be (0 if none), and whether to go on in the next pass."""
    released = 0
    for _ in range(max_chunks):
        space = store.read(free_space)
        if space is None:
            return released, 0, False
        floor = release.stop if cursors.releasing else release.start
        cursors.releasing = space.free_share > floor and space.free_bytes >= release.min_bytes
        if not cursors.releasing:
            return released, 0, False
        if not space.releasable:
            cursors.releasing = False
            return released, space.free_bytes, False
        # No further than `stop`: k pages released leave (free - k) / (pages - k) of the file free.
        excess = math.ceil((space.free_pages - release.stop * space.pages) / (1 - release.stop))
        pages = min(release.chunk_pages, max(1, excess))
        released += write(partial(release_pages, pages=pages)) * space.page_size
    return released, 0, True


def _resting(store: Store, rest: Callable[[float], object]) -> Callable[..., Any]:
    """`store.write`, followed by `rest(seconds it took)`."""
    def write(fn: Callable[[Connection], Any], keys: Sequence[str] = ()) -> Any:
        started = time.monotonic()
        result = store.write(fn, keys)
        rest(time.monotonic() - started)
        return result

    return write
