"""Catalog rows: actions, policies (with their version history) and event types."""

from __future__ import annotations

from sqlalchemy import BigInteger, Connection, cast, func, select, update

from nba.catalog import Action, EventType, Policy
from nba.catalog_view import CatalogView
from nba.errors import Conflict
from nba.store import schema as t
from nba.store.codec import dumps, loads
from nba.store.prepared import Prepared, transaction_cache
from nba.store.retention_repo import DAY_MS


class _Version:
    """A version number kept in meta_kv under `key`; read once per group-commit transaction where asked."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._select = Prepared(select(t.meta_kv.c.value).where(t.meta_kv.c.key == key))

    def read(self, conn: Connection) -> int:
        row = self._select.first(conn, {})
        return int(row[0]) if row is not None and row[0] is not None else 0

    def in_transaction(self, conn: Connection) -> int:
        cache = transaction_cache(conn)
        if cache is None:
            return self.read(conn)
        version = cache.get(self.key)
        if version is None:
            version = cache[self.key] = self.read(conn)
        return int(version)

    def bump(self, conn: Connection) -> int:
        version = self.read(conn) + 1
        cache = transaction_cache(conn)
        if cache is not None:
            cache[self.key] = version
        changed = conn.execute(
            update(t.meta_kv).where(t.meta_kv.c.key == self.key).values(value=str(version))
        ).rowcount
        if not changed:
            conn.execute(t.meta_kv.insert().values(key=self.key, value=str(version)))
        return version


_CATALOG = _Version("catalog_version")
# Bumped with the catalog version by event-type changes only: what validated an event is still current while it
# holds (events need not be validated again because an action or a policy changed).
_EVENT_TYPES = _Version("event_types_version")


def catalog_version(conn: Connection) -> int:
    return _CATALOG.read(conn)


def catalog_version_in_transaction(conn: Connection) -> int:
    """The catalog version, read once per group-commit transaction (which holds the catalog stable)."""
    return _CATALOG.in_transaction(conn)


def bump_version(conn: Connection) -> int:
    return _CATALOG.bump(conn)


def event_types_version(conn: Connection) -> int:
    return _EVENT_TYPES.read(conn)


def event_types_version_in_transaction(conn: Connection) -> int:
    """The event types' version, read once per group-commit transaction."""
    return _EVENT_TYPES.in_transaction(conn)


def load_view(conn: Connection) -> CatalogView:
    """The catalog, labelled with versions read before its contents: its reads need not share one snapshot (read
    committed on PostgreSQL, autocommit reads on SQLite), and a change committed between them leaves contents
    newer than their label, which the checks at commit refuse and send round again (a stale label). Read after
    the contents, a version could label contents older than itself: an event-type change committed between the
    two reads let another host commit an event the new types refuse (about 1 in 100 tries)."""
    version = catalog_version(conn)
    types_version = event_types_version(conn)
    actions = {
        row.action_id: Action.model_validate(loads(row.spec))
        for row in conn.execute(select(t.actions.c.action_id, t.actions.c.spec))
    }
    policies = {
        row.name: (row.version, Policy.model_validate(loads(row.spec)))
        for row in conn.execute(select(t.policies.c.name, t.policies.c.version, t.policies.c.spec))
    }
    event_types = {
        row.name: EventType.model_validate(loads(row.spec))
        for row in conn.execute(select(t.event_types.c.name, t.event_types.c.spec))
    }
    return CatalogView.build(version, actions, policies, event_types, types_version)


def put_action(conn: Connection, action_id: str, action: Action, now_ms: int) -> bool:
    """Create or replace an action; return whether it was created. Counters are keyed by id and survive."""
    spec = dumps(action.model_dump(mode="json", by_alias=True))
    existing = conn.execute(select(t.actions.c.spec).where(t.actions.c.action_id == action_id)).scalar()
    if existing == spec:
        return False
    if existing is None:
        conn.execute(t.actions.insert().values(action_id=action_id, spec=spec, updated_ms=now_ms))
    else:
        conn.execute(
            update(t.actions).where(t.actions.c.action_id == action_id).values(spec=spec, updated_ms=now_ms)
        )
    if action.budget is not None:
        carry_budget_use(conn, action_id, action, now_ms)
    bump_version(conn)
    return existing is None


def carry_budget_use(conn: Connection, action_id: str, action: Action, now_ms: int) -> None:
    """Count, in the budget window now current, the units the action took under windows of another length.

    Budget use is counted per window (length and start), so an action saved with a new budget window would
    otherwise start it at zero and offer again what the budget had already spent. The units taken in every window
    of another length that overlaps the current one are carried over, and those of every day of budget history
    that does (windows past the retention period, folded into the day each ended in): possibly more than were used
    in the current window itself (a `1d` day is carried whole into a `12h` half), never fewer, so a budget errs on
    the side of offering less. Only units taken are carried, never units a window holds because they were carried
    into it: carried on at every save, those counted the same offers again and again (5 offers read as 15 after
    four saves; cycling three lengths grew a count past 2^63, where the sum overflowed and every save of the action
    failed).
    Saved again, the current window holds what it took itself plus what is carried now. Runs in the catalog write
    that changes the action, which decisions wait for (the catalog key).
    """
    assert action.budget is not None
    window_s, start_ms = action.budget.window_at(now_ms)
    end_ms = start_ms + window_s * 1000
    c, h = t.budget_counters.c, t.budget_history.c
    counters = select(func.coalesce(func.sum(c.used - func.coalesce(c.carried, 0)), 0)).where(
        c.action_id == action_id, c.window_s != window_s, c.window_start_ms < end_ms,
        c.window_start_ms + cast(c.window_s, BigInteger) * 1000 > start_ms,  # window_s * 1000 overflows int4
    ).scalar_subquery()
    history = select(func.coalesce(func.sum(h.taken), 0)).where(  # windows retention folded into days
        h.action_id == action_id, h.window_s != window_s, h.day_start_ms < end_ms, h.day_start_ms + DAY_MS > start_ms,
    ).scalar_subquery()
    carried = max(int(conn.execute(select(counters + history)).scalar_one()), 0)  # one statement: one snapshot
    key = (c.action_id == action_id, c.window_s == window_s, c.window_start_ms == start_ms)
    if conn.execute(update(t.budget_counters).where(*key)
                    .values(used=c.used - func.coalesce(c.carried, 0) + carried, carried=carried)).rowcount:
        return
    if carried > 0:
        conn.execute(t.budget_counters.insert().values(action_id=action_id, window_s=window_s,
                                                       window_start_ms=start_ms, used=carried, carried=carried))


def delete_action(conn: Connection, action_id: str) -> bool:
    deleted = conn.execute(t.actions.delete().where(t.actions.c.action_id == action_id)).rowcount > 0
    if deleted:
        bump_version(conn)
    return deleted


def put_policy(
    conn: Connection, name: str, policy: Policy, now_ms: int, check_channels: bool = True
) -> tuple[int, bool]:
    """Create or replace a policy; a changed spec gets the next version. Returns (version, created).

    `check_channels=False` leaves the one-policy-per-channel check to the caller (`check_channel_owners` once a
    whole catalog file is in: a file may move a channel from one policy to another, in either order)."""
    if check_channels:
        for row in conn.execute(select(t.policies.c.name, t.policies.c.spec).where(t.policies.c.name != name)):
            taken = set(Policy.model_validate(loads(row.spec)).channels) & set(policy.channels)
            if taken:
                raise Conflict(f"channel(s) {sorted(taken)} already served by policy {row.name!r}", field="channels")
    spec = dumps(policy.model_dump(mode="json", by_alias=True))
    current = conn.execute(select(t.policies.c.version, t.policies.c.spec).where(t.policies.c.name == name)).first()
    if current is not None and current.spec == spec:
        return int(current.version), False
    version = 1 if current is None else int(current.version) + 1
    if current is None:
        conn.execute(t.policies.insert().values(name=name, version=version, spec=spec, updated_ms=now_ms))
    else:
        conn.execute(
            update(t.policies).where(t.policies.c.name == name).values(version=version, spec=spec, updated_ms=now_ms)
        )
    conn.execute(t.policy_versions.insert().values(name=name, version=version, spec=spec, created_ms=now_ms))
    bump_version(conn)
    return version, current is None


def put_event_type(conn: Connection, name: str, spec_model: EventType, now_ms: int) -> bool:
    spec = dumps(spec_model.model_dump(mode="json"))
    existing = conn.execute(select(t.event_types.c.spec).where(t.event_types.c.name == name)).scalar()
    if existing == spec:
        return False
    if existing is None:
        conn.execute(t.event_types.insert().values(name=name, spec=spec, updated_ms=now_ms))
    else:
        conn.execute(update(t.event_types).where(t.event_types.c.name == name).values(spec=spec, updated_ms=now_ms))
    bump_version(conn)
    _EVENT_TYPES.bump(conn)
    return existing is None


_FILE_DIGEST = "catalog_file_digest"


def applied_file_digest(conn: Connection) -> str | None:
    """The digest of the catalog file last applied (see `Store.seed_catalog`)."""
    value = conn.execute(select(t.meta_kv.c.value).where(t.meta_kv.c.key == _FILE_DIGEST)).scalar()
    return None if value is None else str(value)


def record_file_digest(conn: Connection, digest: str) -> None:
    conn.execute(t.meta_kv.delete().where(t.meta_kv.c.key == _FILE_DIGEST))
    conn.execute(t.meta_kv.insert().values(key=_FILE_DIGEST, value=digest))


def check_channel_owners(conn: Connection) -> None:
    """Raise Conflict if a channel is served by more than one stored policy."""
    owners: dict[str, list[str]] = {}
    for row in conn.execute(select(t.policies.c.name, t.policies.c.spec).order_by(t.policies.c.name)):
        for channel in Policy.model_validate(loads(row.spec)).channels:
            owners.setdefault(channel, []).append(str(row.name))
    shared = {channel: names for channel, names in sorted(owners.items()) if len(names) > 1}
    if shared:
        raise Conflict(f"channel(s) served by more than one policy: {shared}", field="channels")
