"""The decision log: reserving contacts and budget, writing decisions, reading them back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, Connection, and_, bindparam, func, or_, select, update
from sqlalchemy.sql import ColumnElement
from sqlalchemy.sql.selectable import ScalarSelect

from nba.catalog import Action, RewardSpec
from nba.clock import epoch_ms, from_epoch_ms, to_rfc3339
from nba.constraints import CounterState, counter_exclusion
from nba.errors import CatalogChanged, IdempotencyConflict, NBAError
from nba.store import schema as t
from nba.store.catalog_repo import catalog_version_in_transaction as current_catalog
from nba.store.codec import dumps, loads
from nba.store.prepared import Prepared
from nba.types import Contact, Decision, Exclusion, PolicyRef, SlotChoice

IDEMPOTENCY_TTL = timedelta(hours=24)
ACTIVE_CONTACT = ("counted", "reserved")


class ReservationFailed(NBAError):
    """A chosen action lost its last unit (cap, budget or cooldown) to a concurrent decision."""

    def __init__(self, exclusion: Exclusion) -> None:
        super().__init__(exclusion.detail)
        self.exclusion = exclusion


# Statements on the decide path are compiled once per dialect and run on the driver (see prepared.py).
def contacts_json(dialect: str, customer_id: ColumnElement[Any]) -> ScalarSelect[Any]:
    """A customer's active contacts after `:since_ms` as one JSON array of [action, channel, at_ms] (one row:
    the driver steps once, not once per contact; see decide_reads)."""
    aggregate, row = _JSON_AGGREGATES[dialect]
    c = t.contacts.c
    return select(aggregate(row(c.action_id, c.channel, c.at_ms))).where(
        c.customer_id == customer_id,
        c.at_ms > bindparam("since_ms", type_=BigInteger),
        or_(*(c.status == status for status in ACTIVE_CONTACT)),
    ).scalar_subquery()


def parse_contacts(raw: Any) -> list[Contact]:
    """The contacts of `contacts_json` (PostgreSQL answers a list or NULL, SQLite a JSON text)."""
    if raw is None:
        return []
    rows = loads(raw) if isinstance(raw, str | bytes) else raw
    return [Contact(action_id, channel, from_epoch_ms(at_ms)) for action_id, channel, at_ms in rows]


_JSON_AGGREGATES = {"sqlite": (func.json_group_array, func.json_array),
                    "postgresql": (func.json_agg, func.json_build_array)}
_CONTACTS = {name: Prepared(select(contacts_json(name, bindparam("customer_id")))) for name in _JSON_AGGREGATES}

_BUDGET_KEY = and_(
    t.budget_counters.c.action_id == bindparam("b_action_id"),
    t.budget_counters.c.window_s == bindparam("b_window_s"),
    t.budget_counters.c.window_start_ms == bindparam("b_window_start_ms"),
)
_BUDGET_USED = Prepared(select(t.budget_counters.c.used).where(_BUDGET_KEY))
# Take one unit only while some are left: the check and the increment are one statement.
_BUDGET_TAKE = Prepared(
    update(t.budget_counters)
    .where(_BUDGET_KEY, t.budget_counters.c.used < bindparam("b_limit"))
    .values(used=t.budget_counters.c.used + 1)
)
_BUDGET_NEW = Prepared(t.budget_counters.insert())
_CONTACT_NEW = Prepared.insert(t.contacts)
_DECISION_NEW = Prepared(t.decisions.insert())
_SLOT_NEW = Prepared(t.decision_slots.insert())
_IDEMPOTENCY = Prepared(
    select(t.idempotency.c.body_hash, t.idempotency.c.decision_id, t.idempotency.c.created_ms).where(
        t.idempotency.c.channel == bindparam("i_channel"), t.idempotency.c.request_id == bindparam("i_request_id")
    )
)
_IDEMPOTENCY_DROP = Prepared(
    t.idempotency.delete().where(
        t.idempotency.c.channel == bindparam("i_channel"), t.idempotency.c.request_id == bindparam("i_request_id")
    )
)
_IDEMPOTENCY_NEW = Prepared(t.idempotency.insert())
_budget_reads: dict[int, Prepared] = {}


def _budget_read(count: int) -> Prepared:
    """Current use of `count` budget windows in one statement (one prepared statement per count)."""
    found = _budget_reads.get(count)
    if found is None:
        c = t.budget_counters.c
        keys = [
            and_(c.action_id == bindparam(f"a{i}"), c.window_s == bindparam(f"s{i}"),
                 c.window_start_ms == bindparam(f"w{i}"))
            for i in range(count)
        ]
        found = _budget_reads[count] = Prepared(select(c.action_id, c.used).where(or_(*keys)))
    return found


def contacts_since(now_ms: int, lookback: timedelta) -> int | None:
    """Where a read of the `lookback` before now starts (None: a zero lookback reads no contacts)."""
    return now_ms - int(lookback.total_seconds() * 1000) if lookback > timedelta(0) else None


def load_contacts(conn: Connection, customer_id: str, now_ms: int, lookback: timedelta) -> list[Contact]:
    """The customer's active contacts in the `lookback` before now (none read when it is zero)."""
    since_ms = contacts_since(now_ms, lookback)
    if since_ms is None:
        return []
    (raw,) = _CONTACTS[conn.dialect.name].first(conn, {"customer_id": customer_id, "since_ms": since_ms})
    return parse_contacts(raw)


def budget_window(action: Action, now_ms: int) -> tuple[int, int]:
    """(window length in seconds, window start in epoch ms) of the budget window containing now."""
    assert action.budget is not None
    return action.budget.window_at(now_ms)


def load_budget_used(conn: Connection, actions: Mapping[str, Action], now_ms: int) -> dict[str, int]:
    budgeted = [(action_id, action) for action_id, action in actions.items() if action.budget is not None]
    if not budgeted:
        return {}
    params: dict[str, Any] = {}
    for index, (action_id, action) in enumerate(budgeted):
        params[f"s{index}"], params[f"w{index}"] = budget_window(action, now_ms)
        params[f"a{index}"] = action_id
    used = {action_id: 0 for action_id, _ in budgeted}
    for action_id, value in _budget_read(len(budgeted)).rows(conn, params):
        used[action_id] = int(value)
    return used


def find_idempotent(conn: Connection, channel: str, request_id: str, now_ms: int) -> tuple[str, str] | None:
    """(body hash, decision id) of a fresh decision made under this key, if any."""
    row = _IDEMPOTENCY.first(conn, {"i_channel": channel, "i_request_id": request_id})
    if row is None or now_ms - row[2] > IDEMPOTENCY_TTL.total_seconds() * 1000:
        return None
    return str(row[0]), str(row[1])


def _reserve(
    conn: Connection, decision: Decision, actions: Mapping[str, Action], lookback: timedelta, now_ms: int,
    release_ms: int,
) -> None:
    """Re-check the chosen actions' counter rules in the writing transaction, then take their units.

    A deferred decision's contacts are timed at `release_ms`, the end of its reservation: until then the action
    may reach the customer at any moment, so caps and cooldowns count it as late as it could be shown (activation
    then times it when it was; a release makes it count no more).
    """
    chosen = [(c, actions[c.action_id]) for c in decision.actions]
    now = from_epoch_ms(now_ms)
    if any(action.counter_window for _, action in chosen):  # a cap or a cooldown reads contact history
        counters = CounterState(load_contacts(conn, decision.customer_id, now_ms, lookback), {})
        for choice, action in chosen:
            exclusion = counter_exclusion(choice.action_id, action, decision.channel, counters, now)
            if exclusion is not None:
                raise ReservationFailed(exclusion)
    status = "reserved" if decision.deferred else "counted"
    for choice, action in chosen:
        window_s: int | None = None
        window_ms: int | None = None
        if action.budget is not None:
            window_s, window_ms = budget_window(action, now_ms)
            _take_budget(conn, choice.action_id, action, window_s, window_ms, now)
        _CONTACT_NEW.execute(conn, {
            "customer_id": decision.customer_id, "action_id": choice.action_id,
            "channel": decision.channel, "at_ms": release_ms if decision.deferred else now_ms,
            "decision_id": decision.decision_id, "status": status,
            "budget_window_s": window_s, "budget_window_ms": window_ms,
        })


def _take_budget(conn: Connection, action_id: str, action: Action, window_s: int, window_ms: int,
                 now: datetime) -> None:
    """Take one unit of the action's budget window, or raise `ReservationFailed` when none is left."""
    assert action.budget is not None
    key = {"b_action_id": action_id, "b_window_s": window_s, "b_window_start_ms": window_ms}
    used = 0
    for _ in range(3):  # a unit released between the two statements (PostgreSQL) sends us round again
        if _BUDGET_TAKE.execute(conn, {**key, "b_limit": action.budget.limit}).rowcount:
            return
        row = _BUDGET_USED.first(conn, key)
        if row is None:
            if action.budget.limit <= 0:
                break
            _BUDGET_NEW.execute(conn, {"action_id": action_id, "window_s": window_s, "window_start_ms": window_ms,
                                       "used": 1, "carried": None})
            return
        used = int(row[0])
        if used >= action.budget.limit:
            break
    budget = action.budget
    raise ReservationFailed(Exclusion(action_id, budget.rule, f"{used} of {budget.limit} per {budget.window} used"))


_REWARD_JSON: dict[int, tuple[RewardSpec, dict[str, Any]]] = {}


def _reward_json(reward: RewardSpec) -> dict[str, Any]:
    """The reward spec as logged with each decision, dumped once per spec object (specs are immutable)."""
    found = _REWARD_JSON.get(id(reward))
    if found is None or found[0] is not reward:
        if len(_REWARD_JSON) > 1000:
            _REWARD_JSON.clear()
        found = _REWARD_JSON[id(reward)] = (reward, reward.model_dump(mode="json"))
    return found[1]


def _body(decision: Decision, reward: RewardSpec) -> dict[str, Any]:
    return {
        "actions": [{"slot": c.slot, "action_id": c.action_id, "probability": c.probability} for c in decision.actions],
        "ranking": [{"action_id": a, "probability": p} for a, p in decision.ranking],
        "excluded": [{"action_id": e.action_id, "rule": e.rule, "detail": e.detail} for e in decision.excluded],
        "context": decision.context,
        "customer": decision.customer,
        "action_attributes": decision.action_attributes,
        "reward": _reward_json(reward),
    }


def insert_decision(
    conn: Connection,
    decision: Decision,
    actions: Mapping[str, Action],
    reward: RewardSpec,
    lookback: timedelta,
    body_hash: str | None,
    catalog_version: int | None = None,
) -> Decision:
    """Reserve the chosen actions' units and log the decision, all or nothing.

    Returns the stored decision: the new one, or the earlier one made under the same idempotency key.
    Raises `CatalogChanged` if the catalog is no longer the version the decision was made on, so a rule
    changed by another process is never bypassed.
    """
    now_ms = epoch_ms(decision.created_at)
    if catalog_version is not None:
        if current_catalog(conn) != catalog_version:
            raise CatalogChanged("the catalog changed during the decision")
    if decision.request_id is not None and body_hash is not None:
        key = {"i_channel": decision.channel, "i_request_id": decision.request_id}
        existing = find_idempotent(conn, decision.channel, decision.request_id, now_ms)
        if existing is not None:
            if existing[0] != body_hash:
                raise IdempotencyConflict(
                    f"request_id {decision.request_id!r} was used with a different request", field="request_id"
                )
            found = get_decision(conn, existing[1])
            if found is not None:
                return found
        _IDEMPOTENCY_DROP.execute(conn, key)
        _IDEMPOTENCY_NEW.execute(conn, {
            "channel": decision.channel, "request_id": decision.request_id, "body_hash": body_hash,
            "decision_id": decision.decision_id, "created_ms": now_ms,
        })
    window_ms = int(reward.window_delta.total_seconds() * 1000)
    _reserve(conn, decision, actions, lookback, now_ms, now_ms + window_ms)
    _DECISION_NEW.execute(conn, {
        "decision_id": decision.decision_id,
        "customer_id": decision.customer_id,
        "channel": decision.channel,
        "policy_name": decision.policy.name,
        "policy_version": decision.policy.version,
        "mode": decision.policy.mode,
        "created_ms": now_ms,
        "request_id": decision.request_id,
        "deferred": decision.deferred,
        "activated_ms": None,
        "window_end_ms": None if decision.deferred or not decision.actions else now_ms + window_ms,
        "release_ms": now_ms + window_ms if decision.deferred and decision.actions else None,
        "state": "open" if decision.actions else "final",
        "body": dumps(_body(decision, reward)),
    })
    if not decision.actions:
        decision.state = "final"
    for c in decision.actions:
        _SLOT_NEW.execute(conn, {
            "decision_id": decision.decision_id, "slot": c.slot, "action_id": c.action_id,
            "probability": c.probability, "reward_sum": 0.0, "reward_count": 0, "final": False,
        })
    return decision


def _decision_from_row(row: Any, rewards: list[dict[str, Any]]) -> Decision:
    body = loads(row.body)
    return Decision(
        decision_id=row.decision_id,
        customer_id=row.customer_id,
        channel=row.channel,
        policy=PolicyRef(row.policy_name, int(row.policy_version), row.mode),
        created_at=from_epoch_ms(row.created_ms),
        actions=[SlotChoice(a["slot"], a["action_id"], a["probability"]) for a in body["actions"]],
        ranking=[(r["action_id"], r["probability"]) for r in body["ranking"]],
        excluded=[Exclusion(e["action_id"], e["rule"], e["detail"]) for e in body["excluded"]],
        context=body["context"],
        customer=body["customer"],
        action_attributes=body["action_attributes"],
        deferred=bool(row.deferred),
        request_id=row.request_id,
        activated_at=from_epoch_ms(row.activated_ms) if row.activated_ms is not None else None,
        state=row.state,
        rewards=rewards,
    )


def get_decision(conn: Connection, decision_id: str, with_rewards: bool = False) -> Decision | None:
    row = conn.execute(select(t.decisions).where(t.decisions.c.decision_id == decision_id)).first()
    if row is None:
        return None
    rewards: list[dict[str, Any]] = []
    if with_rewards:
        for r in conn.execute(
            select(t.rewards).where(t.rewards.c.decision_id == decision_id).order_by(t.rewards.c.id)
        ):
            rewards.append(
                {"value": r.value, "slot": r.slot, "received_at": to_rfc3339(from_epoch_ms(r.received_ms)),
                 "status": r.status}
            )
    return _decision_from_row(row, rewards)


def recent_decisions(conn: Connection, customer_id: str, limit: int) -> list[Decision]:
    rows = conn.execute(
        select(t.decisions)
        .where(t.decisions.c.customer_id == customer_id)
        .order_by(t.decisions.c.created_ms.desc(), t.decisions.c.decision_id.desc())
        .limit(limit)
    )
    return [_decision_from_row(r, []) for r in rows]


def count_decisions(conn: Connection) -> int:
    from sqlalchemy import func

    return int(conn.execute(select(func.count()).select_from(t.decisions)).scalar() or 0)


def decision_ids(conn: Connection) -> Sequence[str]:
    return [str(r[0]) for r in conn.execute(select(t.decisions.c.decision_id))]
