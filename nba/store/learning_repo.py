"""What the online learner reads and writes: joined examples, model snapshots and the learner lease."""

from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, select, update

from nba.errors import LeaseLost
from nba.store import schema as t
from nba.store.codec import loads
from nba.store.in_lists import in_chunks
from nba.store.lease_holders import holder_gone


@dataclass(frozen=True)
class JoinedExample:
    """One decision slot with its final reward and everything logged to rebuild the features."""

    seq: int
    decision_id: str
    slot: int
    reward: float
    body: dict[str, Any]


@dataclass(frozen=True)
class Snapshot:
    """A stored model with what its writer recorded to verify it by: the checksum of `model` as serialized and
    the fingerprint of what it was trained with. Both are None on legacy snapshots (saved before schema v2)."""

    snapshot_id: int
    examples: int
    model: bytes
    checksum: str | None = None
    fingerprint: str | None = None
    policy_version: int = 0


def pending_examples(
    conn: Connection, policy: str, version: int, after_seq: int, limit: int
) -> list[JoinedExample]:
    """Joined examples not yet in any snapshot, oldest first, after `after_seq`."""
    q = t.learn_queue.c
    return _joined(conn, policy, q.policy_version == version, q.seq > after_seq, limit=limit)


def unlearned_examples(
    conn: Connection, policy: str, version: int, learned: AbstractSet[int], limit: int
) -> list[JoinedExample]:
    """Joined examples in no snapshot and not in `learned`, oldest first: what a live learner has yet to learn.

    Those of earlier versions of the policy too: a decision made just before the policy changed is rewarded
    under the new version, and its logged propensities make it as good an example for the new version's model.
    `learned` is what the learner has learned since its last snapshot, so it is exactly the part of the pending
    rows to skip. A cursor (`seq > the last seq read`) would not do: a seq is taken at INSERT and becomes visible
    at COMMIT, so on PostgreSQL a row can commit below a seq already read, and a cursor would pass it by for good.
    The pending seqs are listed from ix_learn_pending alone (no bodies), at most `limit` past those learned, and
    only the wanted rows are then read in full.
    """
    q = t.learn_queue.c
    pending = conn.execute(
        select(q.seq)
        .where(q.policy_name == policy, q.snapshot_id.is_(None), q.policy_version <= version)
        .order_by(q.seq)
        .limit(limit + len(learned))
    ).scalars()
    wanted = [seq for seq in pending if seq not in learned][:limit]
    examples: list[JoinedExample] = []
    for chunk in in_chunks(wanted):
        examples += _joined(conn, policy, q.policy_version <= version, q.seq.in_(chunk))
    return examples


def _joined(
    conn: Connection, policy: str, versions: ColumnElement[bool], condition: ColumnElement[bool],
    limit: int | None = None,
) -> list[JoinedExample]:
    """The pending rows of the policy's `versions` meeting `condition`, oldest first, with their logged decisions."""
    q = t.learn_queue.c
    rows = conn.execute(
        select(q.seq, q.decision_id, q.slot, q.reward, t.decisions.c.body)
        .join(t.decisions, t.decisions.c.decision_id == q.decision_id)
        .where(q.policy_name == policy, q.snapshot_id.is_(None), versions, condition)
        .order_by(q.seq)
        .limit(limit)
    )
    return [JoinedExample(r.seq, r.decision_id, r.slot, float(r.reward), loads(r.body)) for r in rows]


def save_snapshot(
    conn: Connection, policy: str, version: int, model: bytes, examples: int, seqs: Sequence[int], now_ms: int,
    keep: int = 5, *, checksum: str | None = None, fingerprint: str | None = None,
    lease: tuple[str, str] | None = None,
) -> int:
    """Store a model snapshot and mark the examples it contains, in one transaction.

    `checksum` and `fingerprint` are stored as given, not computed here: only the writer knows what the bytes
    should be, and a store that hashed whatever it received would vouch for bytes damaged on the way in.
    With `lease` (name, holder), the snapshot is refused (`LeaseLost`) unless that holder still holds the lease:
    a learner whose lease ran out mid-iteration would otherwise store a model missing what the next holder
    learned meanwhile, and mark that holder's examples as in it.
    """
    if lease is not None and not holds_lease(conn, *lease, now_ms):
        raise LeaseLost(f"the {lease[0]!r} lease is no longer held by {lease[1]!r}: snapshot not stored")
    inserted = conn.execute(
        t.model_snapshots.insert().values(
            policy_name=policy, policy_version=version, created_ms=now_ms, examples=examples, model=model,
            checksum=checksum, fingerprint=fingerprint,
        )
    ).inserted_primary_key
    assert inserted is not None
    snapshot_id = inserted[0]
    for chunk in in_chunks(seqs):
        conn.execute(
            update(t.learn_queue)
            .where(t.learn_queue.c.seq.in_(chunk), t.learn_queue.c.snapshot_id.is_(None))
            .values(snapshot_id=snapshot_id)
        )
    old = [
        r[0]
        for r in conn.execute(
            select(t.model_snapshots.c.id)
            .where(t.model_snapshots.c.policy_name == policy, t.model_snapshots.c.policy_version == version)
            .order_by(t.model_snapshots.c.id.desc())
            .offset(keep)
        )
    ]
    if old:
        conn.execute(t.model_snapshots.delete().where(t.model_snapshots.c.id.in_(old)))
    return int(snapshot_id)


def latest_snapshot(
    conn: Connection, policy: str, version: int, newer_than: int = 0, older_than: int | None = None
) -> Snapshot | None:
    """The newest snapshot with `newer_than < id`, and `id < older_than` when given (to step back past one)."""
    s = t.model_snapshots.c
    query = (
        select(s.id, s.examples, s.model, s.checksum, s.fingerprint, s.policy_version)
        .where(s.policy_name == policy, s.policy_version == version, s.id > newer_than)
        .order_by(s.id.desc())
        .limit(1)
    )
    if older_than is not None:
        query = query.where(s.id < older_than)
    return _snapshot(conn.execute(query).first())


def latest_earlier_snapshot(conn: Connection, policy: str, version: int) -> Snapshot | None:
    """The newest snapshot of any earlier version of the policy: where a new version's model may continue from."""
    s = t.model_snapshots.c
    return _snapshot(conn.execute(
        select(s.id, s.examples, s.model, s.checksum, s.fingerprint, s.policy_version)
        .where(s.policy_name == policy, s.policy_version < version)
        .order_by(s.id.desc())
        .limit(1)
    ).first())


def _snapshot(row: Any) -> Snapshot | None:
    if row is None:
        return None
    return Snapshot(int(row.id), int(row.examples), bytes(row.model), row.checksum, row.fingerprint,
                    int(row.policy_version))


LEARNER_LEASE = "online-learner"  # held by the one online learner of a deployment


def try_lease(conn: Connection, name: str, holder: str, now_ms: int, ttl_ms: int) -> bool:
    """Take or renew a named lease; true when `holder` has it until `now + ttl`. Another holder's lease is taken
    once it has run out, or at once when that holder's process is known to have ended (`holder_gone`)."""
    row = conn.execute(select(t.leases.c.holder, t.leases.c.expires_ms).where(t.leases.c.name == name)).first()
    if row is None:
        conn.execute(t.leases.insert().values(name=name, holder=holder, expires_ms=now_ms + ttl_ms))
        return True
    if row.holder != holder and row.expires_ms > now_ms and not holder_gone(row.holder):
        return False
    conn.execute(update(t.leases).where(t.leases.c.name == name).values(holder=holder, expires_ms=now_ms + ttl_ms))
    return True


def lease_held(conn: Connection, name: str, now_ms: int) -> bool:
    """Whether anyone holds the named lease at `now_ms` (a holder whose process has ended does not)."""
    row = conn.execute(select(t.leases.c.holder, t.leases.c.expires_ms).where(t.leases.c.name == name)).first()
    return row is not None and int(row.expires_ms) > now_ms and not holder_gone(row.holder)


def holds_lease(conn: Connection, name: str, holder: str, now_ms: int) -> bool:
    """Whether `holder` holds the named lease at `now_ms` (granted to it and not run out)."""
    row = conn.execute(select(t.leases.c.holder, t.leases.c.expires_ms).where(t.leases.c.name == name)).first()
    return row is not None and row.holder == holder and row.expires_ms > now_ms


def release_lease(conn: Connection, name: str, holder: str) -> None:
    conn.execute(t.leases.delete().where(t.leases.c.name == name, t.leases.c.holder == holder))
