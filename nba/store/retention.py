"""A retention pass: delete, in short transactions, what is past its horizon (see `retention_repo`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from nba.clock import epoch_ms
from nba.store import retention_repo
from nba.store.decision_repo import IDEMPOTENCY_TTL
from nba.store.store import Store


@dataclass(frozen=True)
class Horizons:
    """Epoch milliseconds before which each kind of record goes."""

    decisions_ms: int
    contacts_ms: int
    events_ms: int
    budget_windows_ms: int
    idempotency_ms: int

    @classmethod
    def at(cls, now: datetime, keep: timedelta | None, counter_window: timedelta) -> Horizons:
        """The horizons at `now` for a retention period of `keep` (None: keep the log for ever).

        Contacts stay as long as the longest cap or cooldown (`counter_window`) counts them, even past `keep`;
        decide request ids go once their replay period (a day) is over, whatever `keep` is.
        """
        now_ms = epoch_ms(now)
        idempotency_ms = now_ms - int(IDEMPOTENCY_TTL.total_seconds() * 1000)
        if keep is None:
            return cls(0, 0, 0, 0, idempotency_ms)
        keep_ms = int(keep.total_seconds() * 1000)
        contacts_ms = now_ms - max(keep_ms, int(counter_window.total_seconds() * 1000))
        return cls(now_ms - keep_ms, contacts_ms, now_ms - keep_ms, now_ms - keep_ms, idempotency_ms)


@dataclass
class PruneResult:
    """Rows deleted by a pass, per kind; `more` when the pass stopped at its chunk budget with work left."""

    deleted: dict[str, int]
    more: bool


def prune(store: Store, horizons: Horizons, chunk: int = 100, max_chunks: int = 50) -> PruneResult:
    """Delete what is past `horizons`, `chunk` rows a transaction, in at most `max_chunks` transactions of each
    kind.

    Each transaction is short (5 ms for 100 decisions and their rows on SQLite) so that decides, which wait for
    the write lock, hardly notice; a pass that stops at its limit with work left says so (`more`), and the caller
    runs another soon.
    """
    deleted = dict.fromkeys(("decisions", "contacts", "events", "idempotency_keys", "budget_windows"), 0)
    more = False
    after: str | None = None
    for _ in range(max_chunks if horizons.decisions_ms > 0 else 0):
        ids, last = store.read(partial(retention_repo.old_decisions, before_ms=horizons.decisions_ms, limit=chunk,
                                       after=after))
        if last is None:
            break
        if ids:
            deleted["decisions"] += store.write(
                partial(retention_repo.delete_decisions, decision_ids=ids, before_ms=horizons.decisions_ms),
                [f"decision:{d}" for d in ids],
            )
        after = last
    else:
        more = horizons.decisions_ms > 0
    steps: list[tuple[str, int, Callable[..., int]]] = [
        ("contacts", horizons.contacts_ms, retention_repo.delete_old_contacts),
        ("events", horizons.events_ms, retention_repo.delete_old_events),
        ("idempotency_keys", horizons.idempotency_ms, retention_repo.delete_old_idempotency_keys),
        ("budget_windows", horizons.budget_windows_ms, retention_repo.delete_old_budget_windows),
    ]
    for name, before_ms, step in steps:
        for _ in range(max_chunks if before_ms > 0 else 0):
            count = store.write(partial(step, before_ms=before_ms, limit=chunk))
            deleted[name] += count
            if count < chunk:
                break
        else:
            more = more or before_ms > 0
    return PruneResult(deleted, more)

