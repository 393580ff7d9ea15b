"""The decision log: reserving contacts and budget, writing decisions, reading them back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, and_, bindparam, select, update

from nba.catalog import Action, RewardSpec
from nba.clock import epoch_ms, from_epoch_ms, to_rfc3339
from nba.constraints import CounterState, budget_window_start, counter_exclusion
from nba.errors import CatalogChanged, IdempotencyConflict, NBAError
from nba.store import schema as t
from nba.store.catalog_repo import catalog_version as current_catalog
from nba.store.codec import dumps, loads
from nba.types import Contact, Decision, Exclusion, PolicyRef, SlotChoice

IDEMPOTENCY_TTL = timedelta(hours=24)
ACTIVE_CONTACT = ("counted", "reserved")


class ReservationFailed(NBAError):
    """A chosen action lost its last unit (cap, budget or cooldown) to a concurrent decision."""

    def __init__(self, exclusion: Exclusion) -> None:
        super().__init__(exclusion.detail)
        self.exclusion = exclusion


# Statements on the decide path are built once; per call only parameters change (no per-call compile work).
_CONTACTS = select(t.contacts.c.action_id, t.contacts.c.channel, t.contacts.c.at_ms).where(
    t.contacts.c.customer_id == bindparam("customer_id"),
    t.contacts.c.at_ms > bindparam("since_ms"),
    t.contacts.c.status.in_(ACTIVE_CONTACT),
)
_BUDGET_KEY = and_(
    t.budget_counters.c.action_id == bindparam("b_action_id"),
    t.budget_counters.c.window_s == bindparam("b_window_s"),
    t.budget_counters.c.window_start_ms == bindparam("b_window_start_ms"),
)
_BUDGET_USED = select(t.budget_counters.c.used).where(_BUDGET_KEY)
_BUDGET_BUMP = update(t.budget_counters).where(_BUDGET_KEY).values(used=t.budget_counters.c.used + 1)
_BUDGET_NEW = t.budget_counters.insert()
_CONTACT_NEW = t.contacts.insert()
_DECISION_NEW = t.decisions.insert()
_SLOTS_NEW = t.decision_slots.insert()
_IDEMPOTENCY = select(t.idempotency.c.body_hash, t.idempotency.c.decision_id, t.idempotency.c.created_ms).where(
    t.idempotency.c.channel == bindparam("i_channel"), t.idempotency.c.request_id == bindparam("i_request_id")
)


def load_contacts(conn: Connection, customer_id: str, since_ms: int) -> list[Contact]:
    rows = conn.execute(_CONTACTS, {"customer_id": customer_id, "since_ms": since_ms})
    return [Contact(r.action_id, r.channel, from_epoch_ms(r.at_ms)) for r in rows]


def load_budget_used(conn: Connection, actions: Mapping[str, Action], now_ms: int) -> dict[str, int]:
    used: dict[str, int] = {}
    now = from_epoch_ms(now_ms)
    for action_id, action in actions.items():
        if action.budget is None:
            continue
        window = action.budget.window_delta
        start_ms = epoch_ms(budget_window_start(now, window))
        value = conn.execute(
            _BUDGET_USED,
            {"b_action_id": action_id, "b_window_s": int(window.total_seconds()), "b_window_start_ms": start_ms},
        ).scalar()
        used[action_id] = int(value or 0)
    return used


def load_counters(
    conn: Connection, customer_id: str, actions: Mapping[str, Action], now_ms: int, lookback: timedelta
) -> CounterState:
    since_ms = now_ms - int(lookback.total_seconds() * 1000)
    contacts = load_contacts(conn, customer_id, since_ms) if lookback > timedelta(0) else []
    return CounterState(contacts, load_budget_used(conn, actions, now_ms))


def find_idempotent(conn: Connection, channel: str, request_id: str, now_ms: int) -> tuple[str, str] | None:
    """(body hash, decision id) of a fresh decision made under this key, if any."""
    row = conn.execute(_IDEMPOTENCY, {"i_channel": channel, "i_request_id": request_id}).first()
    if row is None or now_ms - row.created_ms > IDEMPOTENCY_TTL.total_seconds() * 1000:
        return None
    return str(row.body_hash), str(row.decision_id)


def _reserve(
    conn: Connection, decision: Decision, actions: Mapping[str, Action], lookback: timedelta, now_ms: int
) -> None:
    chosen = {c.action_id: actions[c.action_id] for c in decision.actions}
    counters = load_counters(conn, decision.customer_id, chosen, now_ms, lookback)
    now = from_epoch_ms(now_ms)
    status = "reserved" if decision.deferred else "counted"
    for choice in decision.actions:
        action = chosen[choice.action_id]
        exclusion = counter_exclusion(choice.action_id, action, decision.channel, counters, now)
        if exclusion is not None:
            raise ReservationFailed(exclusion)
        window_s: int | None = None
        window_ms: int | None = None
        if action.budget is not None:
            window = action.budget.window_delta
            window_s = int(window.total_seconds())
            window_ms = epoch_ms(budget_window_start(now, window))
            key = {"b_action_id": choice.action_id, "b_window_s": window_s, "b_window_start_ms": window_ms}
            if not conn.execute(_BUDGET_BUMP, key).rowcount:
                conn.execute(
                    _BUDGET_NEW,
                    {"action_id": choice.action_id, "window_s": window_s, "window_start_ms": window_ms, "used": 1},
                )
        conn.execute(
            _CONTACT_NEW,
            dict(
                customer_id=decision.customer_id,
                action_id=choice.action_id,
                channel=decision.channel,
                at_ms=now_ms,
                decision_id=decision.decision_id,
                status=status,
                budget_window_s=window_s,
                budget_window_ms=window_ms,
            )
        )


def _body(decision: Decision, reward: RewardSpec) -> dict[str, Any]:
    return {
        "actions": [{"slot": c.slot, "action_id": c.action_id, "probability": c.probability} for c in decision.actions],
        "ranking": [{"action_id": a, "probability": p} for a, p in decision.ranking],
        "excluded": [{"action_id": e.action_id, "rule": e.rule, "detail": e.detail} for e in decision.excluded],
        "context": decision.context,
        "customer": decision.customer,
        "action_attributes": decision.action_attributes,
        "reward": reward.model_dump(mode="json"),
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
        existing = find_idempotent(conn, decision.channel, decision.request_id, now_ms)
        if existing is not None:
            if existing[0] != body_hash:
                raise IdempotencyConflict(
                    f"request_id {decision.request_id!r} was used with a different request", field="request_id"
                )
            found = get_decision(conn, existing[1])
            if found is not None:
                return found
        conn.execute(
            t.idempotency.delete().where(
                t.idempotency.c.channel == decision.channel, t.idempotency.c.request_id == decision.request_id
            )
        )
        conn.execute(
            t.idempotency.insert().values(
                channel=decision.channel,
                request_id=decision.request_id,
                body_hash=body_hash,
                decision_id=decision.decision_id,
                created_ms=now_ms,
            )
        )
    _reserve(conn, decision, actions, lookback, now_ms)
    window_ms = int(reward.window_delta.total_seconds() * 1000)
    conn.execute(
        _DECISION_NEW,
        dict(
            decision_id=decision.decision_id,
            customer_id=decision.customer_id,
            channel=decision.channel,
            policy_name=decision.policy.name,
            policy_version=decision.policy.version,
            mode=decision.policy.mode,
            created_ms=now_ms,
            request_id=decision.request_id,
            deferred=decision.deferred,
            activated_ms=None,
            window_end_ms=None if decision.deferred or not decision.actions else now_ms + window_ms,
            release_ms=now_ms + window_ms if decision.deferred and decision.actions else None,
            state="open" if decision.actions else "final",
            body=dumps(_body(decision, reward)),
        )
    )
    if not decision.actions:
        decision.state = "final"
    if decision.actions:
        conn.execute(
            _SLOTS_NEW,
            [
                {
                    "decision_id": decision.decision_id,
                    "slot": c.slot,
                    "action_id": c.action_id,
                    "probability": c.probability,
                    "reward_sum": 0.0,
                    "reward_count": 0,
                    "final": False,
                }
                for c in decision.actions
            ],
        )
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
