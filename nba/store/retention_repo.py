"""Forgetting what is older than the retention period: the decision log, contacts, events and idempotency keys;
budget counters of past windows are folded into a day's history, kept as long as a budget window may last.

Without it the store grows by about 4 KiB a decision (with its indexes) until the disk is full, and then every
write fails. Each function deletes one chunk in the caller's transaction and returns how many rows went, so a
retention pass runs many short transactions and never holds the write lock long: decides wait for it.

What is kept, whatever its age: a decision that is still open (its reward window or reservation; the sweep closes
it first), the contacts that caps and cooldowns still count (the caller's horizon for them is never shorter than
the longest counter window), customers' states (events fold into them; only the events' log goes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import BigInteger, Connection, Table, bindparam, cast, select, update

from nba.ids import id_floor
from nba.store import schema as t

DECIDED = ("final", "released")  # a decision in either state never changes again


def old_decisions(
    conn: Connection, before_ms: int, limit: int, after: str | None = None
) -> tuple[list[str], str | None]:
    """Of the next `limit` decisions made before `before_ms` (after the id `after`), oldest first: the ids of those
    decided, and where the next chunk starts (None once this one reached the end of the old ones).

    Decision ids begin with their time, so the primary key's range below `id_floor` holds exactly the old ones;
    the state is checked row by row, because an index on it would take over the query and sort the whole log.
    A decision still open is passed over (with `after`), not waited for.
    """
    c = t.decisions.c
    query = select(c.decision_id, c.created_ms, c.state).where(c.decision_id < id_floor("d-", before_ms))
    if after is not None:
        query = query.where(c.decision_id > after)
    rows = conn.execute(query.order_by(c.decision_id).limit(limit)).all()
    decided = [str(r.decision_id) for r in rows if r.created_ms < before_ms and r.state in DECIDED]
    return decided, str(rows[-1].decision_id) if len(rows) == limit else None


def delete_decisions(conn: Connection, decision_ids: Sequence[str], before_ms: int) -> int:
    """Delete these decisions, if still old and decided, with every row that hangs off them: slots, rewards and
    learning rows (a learning row without its decision could never be joined, and would hold the learner up).

    A decision whose example the learner has not learned is kept until the example too is older than the horizon
    (a reward window as long as the retention period closes a decision already past it); a learner down for longer
    than the retention period loses what it did not learn in time.
    """
    c = t.decisions.c
    # Checked here, not in SQL: with the state in the query, the planner reads it from its index (every decided
    # decision) instead of looking up these ids.
    gone = [str(r.decision_id) for r in conn.execute(
        select(c.decision_id, c.created_ms, c.state).where(c.decision_id.in_(decision_ids))
    ) if r.created_ms < before_ms and r.state in DECIDED]
    q = t.learn_queue.c
    unlearned = set(conn.execute(  # an example is kept at least the retention period after it was made
        select(q.decision_id).where(q.decision_id.in_(gone), q.snapshot_id.is_(None), q.created_ms >= before_ms)
    ).scalars())
    gone = [d for d in gone if d not in unlearned]
    if not gone:
        return 0
    conn.execute(t.learn_queue.delete().where(q.decision_id.in_(gone)))
    conn.execute(t.rewards.delete().where(t.rewards.c.decision_id.in_(gone)))
    conn.execute(t.decision_slots.delete().where(t.decision_slots.c.decision_id.in_(gone)))
    conn.execute(t.decisions.delete().where(c.decision_id.in_(gone)))
    return len(gone)


def delete_old_contacts(
    conn: Connection, before_ms: int, limit: int, after: int | None = None
) -> tuple[int, int | None]:
    """Delete the contacts timed before `before_ms` among the next `limit` after contact `after`, oldest first.

    Returns how many went, and where the next chunk starts: None once this one reached a contact still counted
    and younger than the horizon (contacts are numbered as they are made, so the rest are younger too) or the
    end. A deferred decision's contact is timed at its release and a late activation re-times it: such a contact
    is passed over, not waited for. No index on time is kept for this: every decide writes contacts, and each
    index is a page more in each commit.
    """
    c = t.contacts.c
    query = select(c.id, c.at_ms, c.status)
    if after is not None:
        query = query.where(c.id > after)
    page = conn.execute(query.order_by(c.id).limit(limit)).all()
    old = [row.id for row in page if row.at_ms < before_ms]
    frontier = any(row.status == "counted" and row.at_ms >= before_ms for row in page)
    deleted = 0
    if old:
        # On PostgreSQL a lower number can commit after a higher one: the time is checked again, row by row.
        deleted = int(conn.execute(t.contacts.delete().where(c.id.in_(old), c.at_ms < before_ms)).rowcount)
    return deleted, None if frontier or len(page) < limit else int(page[-1].id)


def _delete_oldest(conn: Connection, table: Table, time: Any, before_ms: int, limit: int) -> int:
    """Delete about `limit` of the rows of `table` timed (`time`) before `before_ms`, oldest first: through the
    time of the `limit`-th, all of those of its millisecond too (a range of the time's index, no list of keys)."""
    times = conn.execute(select(time).where(time < before_ms).order_by(time).limit(limit)).scalars().all()
    if not times:
        return 0
    return int(conn.execute(table.delete().where(time <= times[-1], time < before_ms)).rowcount)


def delete_old_events(conn: Connection, before_ms: int, limit: int) -> int:
    """Delete about `limit` of the oldest events received before `before_ms`. A repeated `event_id` is known as a
    duplicate only while its first copy is kept."""
    return _delete_oldest(conn, t.events, t.events.c.received_ms, before_ms, limit)


def delete_old_idempotency_keys(conn: Connection, before_ms: int, limit: int) -> int:
    """Delete about `limit` of the decide request ids stored before `before_ms` (past their replay period they
    are ignored anyway)."""
    return _delete_oldest(conn, t.idempotency, t.idempotency.c.created_ms, before_ms, limit)


def fold_old_budget_windows(conn: Connection, before_ms: int, limit: int) -> int:
    """Move up to `limit` budget counters of windows that ended before `before_ms` into `budget_history`: the
    units each window took (not those carried into it) are added to its action's row for the UTC day the window
    ended in and the window's length. Only the current window's counter is ever read to take units, but an action
    saved later with a longer window counts what the windows it spans took (`catalog_repo.carry_budget_use`):
    deleted, those were offered again (18 offers against a limit of 10, in a review). The counters are found by
    their start (v7 index); those of windows still running are passed over, and they are few: one per action with
    a budget window longer than the retention period."""
    c = t.budget_counters.c
    ended = conn.execute(
        select(c.action_id, c.window_s, c.window_start_ms, c.used, c.carried)
        .where(c.window_start_ms < before_ms, c.window_start_ms + cast(c.window_s, BigInteger) * 1000 < before_ms)
        .order_by(c.window_start_ms)
        .limit(limit)
    ).all()
    if not ended:
        return 0
    taken: dict[tuple[str, int, int], int] = {}
    for row in ended:
        where = (row.action_id, history_day(int(row.window_start_ms) + int(row.window_s) * 1000 - 1),
                 int(row.window_s))
        taken[where] = taken.get(where, 0) + max(int(row.used) - int(row.carried or 0), 0)
    h = t.budget_history.c
    for (action_id, day, window_s), units in taken.items():
        if units <= 0:
            continue
        day_key = (h.action_id == action_id, h.day_start_ms == day, h.window_s == window_s)
        if not conn.execute(update(t.budget_history).where(*day_key).values(taken=h.taken + units)).rowcount:
            conn.execute(t.budget_history.insert().values(action_id=action_id, day_start_ms=day, window_s=window_s,
                                                          taken=units))
    key = (c.action_id == bindparam("k_action"), c.window_s == bindparam("k_window"),
           c.window_start_ms == bindparam("k_start"))
    conn.execute(t.budget_counters.delete().where(*key),
                 [{"k_action": row.action_id, "k_window": row.window_s, "k_start": row.window_start_ms}
                  for row in ended])
    return len(ended)


DAY_MS = 86_400_000


def history_day(at_ms: int) -> int:
    """The start of the UTC day `at_ms` falls in (epoch ms): the key of budget history."""
    return at_ms - at_ms % DAY_MS


def delete_old_budget_history(conn: Connection, before_ms: int, limit: int) -> int:
    """Delete up to `limit` days of budget history that ended before `before_ms` (no budget window reaches back
    to them)."""
    h = t.budget_history.c
    old = conn.execute(
        select(h.action_id, h.day_start_ms, h.window_s).where(h.day_start_ms < before_ms - DAY_MS)
        .order_by(h.day_start_ms).limit(limit)
    ).all()
    if old:
        conn.execute(t.budget_history.delete().where(h.action_id == bindparam("k_action"),
                                                     h.day_start_ms == bindparam("k_day"),
                                                     h.window_s == bindparam("k_window")),
                     [{"k_action": action_id, "k_day": day, "k_window": window_s} for action_id, day, window_s in old])
    return len(old)
