"""Forgetting what is older than the retention period: the decision log, contacts, events, idempotency keys and
budget counters of past windows.

Without it the store grows by about 4 KiB a decision (with its indexes) until the disk is full, and then every
write fails. Each function deletes one chunk in the caller's transaction and returns how many rows went, so a
retention pass runs many short transactions and never holds the write lock long: decides wait for it.

What is kept, whatever its age: a decision that is still open (its reward window or reservation; the sweep closes
it first), the contacts that caps and cooldowns still count (the caller's horizon for them is never shorter than
the longest counter window), customers' states (events fold into them; only the events' log goes).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, select, tuple_

from nba.ids import id_floor
from nba.store import schema as t

DECIDED = ("final", "released")  # a decision in either state never changes again


def old_decisions(
    conn: Connection, before_ms: int, limit: int, after: str | None = None
) -> tuple[list[str], str | None]:
    """Of the next `limit` decisions made before `before_ms` (after the id `after`), oldest first: the ids of those
    decided, and the last id looked at (None once there are none left).

    Decision ids begin with their time, so the primary key's range below `id_floor` holds exactly the old ones;
    the state is checked row by row, because an index on it would take over the query and sort the whole log.
    A decision still open is passed over (with `after`), not waited for.
    """
    c = t.decisions.c
    query = select(c.decision_id, c.created_ms, c.state).where(c.decision_id < id_floor("d-", before_ms))
    if after is not None:
        query = query.where(c.decision_id > after)
    rows = conn.execute(query.order_by(c.decision_id).limit(limit)).all()
    if not rows:
        return [], None
    decided = [str(r.decision_id) for r in rows if r.created_ms < before_ms and r.state in DECIDED]
    return decided, str(rows[-1].decision_id)


def delete_decisions(conn: Connection, decision_ids: Sequence[str], before_ms: int) -> int:
    """Delete these decisions, if still old and decided, with every row that hangs off them: slots, rewards and
    learning rows (a learning row without its decision could never be joined, and would hold the learner up)."""
    c = t.decisions.c
    # Checked here, not in SQL: with the state in the query, the planner reads it from its index (every decided
    # decision) instead of looking up these ids.
    gone = [str(r.decision_id) for r in conn.execute(
        select(c.decision_id, c.created_ms, c.state).where(c.decision_id.in_(decision_ids))
    ) if r.created_ms < before_ms and r.state in DECIDED]
    if not gone:
        return 0
    conn.execute(t.learn_queue.delete().where(t.learn_queue.c.decision_id.in_(gone)))
    conn.execute(t.rewards.delete().where(t.rewards.c.decision_id.in_(gone)))
    conn.execute(t.decision_slots.delete().where(t.decision_slots.c.decision_id.in_(gone)))
    conn.execute(t.decisions.delete().where(c.decision_id.in_(gone)))
    return len(gone)


def delete_old_contacts(conn: Connection, before_ms: int, limit: int) -> int:
    """Delete the oldest contacts timed before `before_ms`, up to `limit`.

    Contacts are numbered as they are made, so the old ones are the lowest numbers; the chunk is the run of them
    at the start (a contact re-timed by a late activation stops the run until it is old too). No index on time
    is kept for this: every decide writes contacts, and each index is a page more in each commit.
    """
    c = t.contacts.c
    head = conn.execute(select(c.id, c.at_ms).order_by(c.id).limit(limit)).all()
    last = None
    for contact_id, at_ms in head:
        if at_ms >= before_ms:
            break
        last = contact_id
    if last is None:
        return 0
    # On PostgreSQL a lower number can commit after a higher one: the time is checked again, row by row.
    return int(conn.execute(t.contacts.delete().where(c.id <= last, c.at_ms < before_ms)).rowcount)


def delete_old_events(conn: Connection, before_ms: int, limit: int) -> int:
    """Delete up to `limit` events received before `before_ms`, oldest first. A repeated `event_id` is known as a
    duplicate only while its first copy is kept."""
    c = t.events.c
    oldest = select(c.event_id).where(c.received_ms < before_ms).order_by(c.received_ms).limit(limit)
    return int(conn.execute(t.events.delete().where(c.event_id.in_(oldest.scalar_subquery()))).rowcount)


def delete_old_idempotency_keys(conn: Connection, before_ms: int, limit: int) -> int:
    """Delete up to `limit` decide request ids stored before `before_ms` (past their replay period they are
    ignored anyway)."""
    c = t.idempotency.c
    oldest = select(c.channel, c.request_id).where(c.created_ms < before_ms).order_by(c.created_ms).limit(limit)
    keys = [tuple(row) for row in conn.execute(oldest).all()]
    if not keys:
        return 0
    return int(conn.execute(t.idempotency.delete().where(
        tuple_(c.channel, c.request_id).in_(keys), c.created_ms < before_ms)).rowcount)


def delete_old_budget_windows(conn: Connection, before_ms: int, limit: int) -> int:
    """Delete up to `limit` budget counters of windows that ended before `before_ms` (only the current window's
    counter is ever read)."""
    c = t.budget_counters.c
    ended = conn.execute(
        select(c.action_id, c.window_s, c.window_start_ms)
        .where(c.window_start_ms + c.window_s * 1000 < before_ms)
        .limit(limit)
    ).all()
    if not ended:
        return 0
    return int(conn.execute(t.budget_counters.delete().where(
        tuple_(c.action_id, c.window_s, c.window_start_ms).in_([tuple(row) for row in ended]))).rowcount)
