"""Outcomes: rewards joining decisions, activation of deferred decisions, and closing reward windows.

A decision slot becomes *final* once its reward is known for good (the first reward under `first`, the sum or
the default when the window closes under `sum`); becoming final enqueues one example for the learner.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import msgspec
from sqlalchemy import Connection, Float, bindparam, select, update

from nba.catalog import RewardSpec
from nba.errors import Conflict, DecisionNotFound, InvalidInput
from nba.store import schema as t
from nba.store.in_lists import in_chunks
from nba.store.prepared import Prepared


class DecisionRow(NamedTuple):
    """The columns of a decision that rewards, activation and closing read."""

    decision_id: str
    policy_name: str
    policy_version: int
    deferred: bool
    activated_ms: int | None
    window_end_ms: int | None
    release_ms: int | None
    state: str
    body: str


# Statements on the reward path are prepared like the decide path's (see prepared.py): a reward runs four or
# five of them in the group-commit writer, which holds the GIL for SQLAlchemy's per-statement work.
_SLOT_KEY = (t.decision_slots.c.decision_id == bindparam("decision_id"), t.decision_slots.c.slot == bindparam("slot"))
_DECISION = Prepared(
    select(*(t.decisions.c[name] for name in DecisionRow._fields))
    .where(t.decisions.c.decision_id == bindparam("decision_id"))
)
_SLOT = Prepared(select(t.decision_slots.c.final, t.decision_slots.c.reward_count).where(*_SLOT_KEY))
_SLOT_ADD = Prepared(
    update(t.decision_slots).where(*_SLOT_KEY).values(
        reward_sum=t.decision_slots.c.reward_sum + bindparam("value", type_=Float),
        reward_count=t.decision_slots.c.reward_count + 1,
    )
)
_SLOT_FINAL = Prepared(update(t.decision_slots).where(*_SLOT_KEY).values(final=True))
_REWARD_NEW = Prepared.insert(t.rewards)
_ENQUEUE = Prepared.insert(t.learn_queue)


class _RewardOnly(msgspec.Struct):
    reward: dict[str, Any]


_REWARD_OF_BODY = msgspec.json.Decoder(_RewardOnly)  # skips the rest of the body without building it
_SPECS: dict[tuple[tuple[str, Any], ...], RewardSpec] = {}


def _decision_row(conn: Connection, decision_id: str) -> DecisionRow:
    raw = _DECISION.first(conn, {"decision_id": decision_id})
    if raw is None:
        raise DecisionNotFound(f"decision {decision_id!r} not found", field="decision_id")
    row = DecisionRow(*raw)
    return row._replace(deferred=bool(row.deferred), policy_version=int(row.policy_version))


def _reward_spec(row: DecisionRow) -> RewardSpec:
    """The reward spec logged with the decision (validated once per distinct spec, then shared: specs are frozen)."""
    logged = _REWARD_OF_BODY.decode(row.body).reward
    try:
        key = tuple(logged.items())
        hash(key)
    except TypeError:  # a spec with unhashable values: validate it every time
        return RewardSpec.model_validate(logged)
    found = _SPECS.get(key)
    if found is None:
        if len(_SPECS) > 1000:
            _SPECS.clear()
        found = _SPECS[key] = RewardSpec.model_validate(logged)
    return found


def _example(row: DecisionRow, slot: int, reward: float, now_ms: int) -> dict[str, Any]:
    """A learning row: the slot's final reward, to be joined with the logged decision."""
    return {"policy_name": row.policy_name, "policy_version": row.policy_version, "decision_id": row.decision_id,
            "slot": slot, "reward": reward, "created_ms": now_ms, "snapshot_id": None}


def _finalise_slot(conn: Connection, row: DecisionRow, slot: int, reward: float, now_ms: int) -> None:
    _SLOT_FINAL.execute(conn, {"decision_id": row.decision_id, "slot": slot})
    _ENQUEUE.execute(conn, _example(row, slot, reward, now_ms))


HELD = "held"  # what `add_reward` answers for a reward stored as `accepted` that waits for its decision's activation


def add_reward(conn: Connection, decision_id: str, slot: int, value: float, now_ms: int) -> str:
    """Record a reward and return its status: `accepted` (in the window), `late` (stored, never learned), or
    `held`: stored as accepted for a deferred decision not yet activated. A channel's reward and activation may
    arrive in either order, so such a reward counts once the decision is activated (under `sum`, with those of
    its window; under `first`, the first is learned at activation), and becomes `late` if its reservation is
    released instead."""
    row = _decision_row(conn, decision_id)
    slot_row = _SLOT.first(conn, {"decision_id": decision_id, "slot": slot})
    if slot_row is None:
        raise InvalidInput(f"decision {decision_id!r} has no action in slot {slot}", field="slot")
    final, reward_count = bool(slot_row[0]), int(slot_row[1])
    spec = _reward_spec(row)
    # A window is [start, end): at its end the sweep closes it. A deferred decision not activated by its release
    # time is as good as released (as `activate` says), whether or not the sweep has released it yet.
    expired = row.activated_ms is None and row.release_ms is not None and row.release_ms <= now_ms
    in_window = row.state == "open" and not expired and (row.window_end_ms is None or now_ms < row.window_end_ms)
    if not in_window:
        status = "late"
    elif final or (spec.aggregation == "first" and reward_count > 0):
        status = "accepted"  # stored; under `first` only the first reward is learned from
    else:
        status = "accepted"
        _SLOT_ADD.execute(conn, {"decision_id": decision_id, "slot": slot, "value": value})
        learnable = not row.deferred or row.activated_ms is not None
        if spec.aggregation == "first" and learnable:
            _finalise_slot(conn, row, slot, value, now_ms)
    _REWARD_NEW.execute(conn, {"decision_id": decision_id, "slot": slot, "value": value, "received_ms": now_ms,
                               "status": status})
    if status == "accepted" and row.deferred and row.activated_ms is None:
        return HELD
    return status


def activate(conn: Connection, decision_id: str, now_ms: int) -> str:
    """Mark a deferred decision as shown: its reservations count and its reward window starts now."""
    row = _decision_row(conn, decision_id)
    if not row.deferred:
        raise Conflict(f"decision {decision_id!r} was not deferred", field="decision_id")
    if row.state == "released":
        raise Conflict(f"decision {decision_id!r} was not activated in time; its reservation was released",
                       field="decision_id")
    if row.activated_ms is not None:
        return "activated"
    if row.release_ms is not None and row.release_ms <= now_ms:
        # Expired but not yet swept: the reservation is as good as released (the sweeper will release it).
        raise Conflict(f"decision {decision_id!r} was not activated in time; its reservation was released",
                       field="decision_id")
    spec = _reward_spec(row)
    window_end = now_ms + int(spec.window_delta.total_seconds() * 1000)
    conn.execute(
        update(t.decisions)
        .where(t.decisions.c.decision_id == decision_id)
        .values(activated_ms=now_ms, window_end_ms=window_end, release_ms=None)
    )
    conn.execute(  # shown by now: counted from now on, as if shown now (caps and cooldowns run from delivery)
        update(t.contacts)
        .where(t.contacts.c.decision_id == decision_id, t.contacts.c.status == "reserved")
        .values(status="counted", at_ms=now_ms)
    )
    if spec.aggregation == "first":
        for slot_row in conn.execute(
            select(t.decision_slots).where(
                t.decision_slots.c.decision_id == decision_id, t.decision_slots.c.reward_count > 0
            )
        ).all():
            first = conn.execute(
                select(t.rewards.c.value)
                .where(t.rewards.c.decision_id == decision_id, t.rewards.c.slot == slot_row.slot,
                       t.rewards.c.status == "accepted")
                .order_by(t.rewards.c.id)
                .limit(1)
            ).scalar()
            _finalise_slot(conn, row, slot_row.slot, float(first if first is not None else slot_row.reward_sum),
                           now_ms)
    return "activated"


def due_decisions(conn: Connection, now_ms: int, limit: int) -> list[str]:
    """Ids of decisions whose reward window has closed, or whose deferred reservation has expired."""
    closed = conn.execute(
        select(t.decisions.c.decision_id)
        .where(t.decisions.c.state == "open", t.decisions.c.window_end_ms <= now_ms)
        .limit(limit)
    )
    expired = conn.execute(
        select(t.decisions.c.decision_id)
        .where(t.decisions.c.state == "open", t.decisions.c.release_ms <= now_ms,
               t.decisions.c.activated_ms.is_(None))
        .limit(limit)
    )
    return [str(r[0]) for r in closed] + [str(r[0]) for r in expired]


def close_decisions(conn: Connection, decision_ids: Sequence[str], now_ms: int) -> dict[str, str]:
    """Finalise the decisions whose window closed and release the expired deferred ones among `decision_ids`;
    returns what became of each that changed (`final` or `released`). Those not due, or gone, are left as they are.

    Set-wise: a sweep closes as many decisions a second as are made, and one at a time (seven statements each) a
    round of 500 held the write lock for 170 ms, in which no decision could commit. Each kind of change is one
    statement, or one driver call for its rows, whatever the number of decisions. Learning rows are written in
    the order of `decision_ids`, each decision's slots in slot order.
    """
    rows = _decision_rows(conn, decision_ids)
    finalise: list[DecisionRow] = []
    outcome: dict[str, str] = {}
    for decision_id in decision_ids:
        row = rows.get(decision_id)
        if row is None or row.state != "open" or decision_id in outcome:
            continue
        if row.activated_ms is None and row.deferred:
            if row.release_ms is not None and row.release_ms <= now_ms:
                _release(conn, decision_id)
                outcome[decision_id] = "released"
        elif row.window_end_ms is not None and row.window_end_ms <= now_ms:
            finalise.append(row)
            outcome[decision_id] = "final"
    if finalise:
        _finalise_all(conn, finalise, now_ms)
    return outcome


def _decision_rows(conn: Connection, decision_ids: Sequence[str]) -> dict[str, DecisionRow]:
    found: dict[str, DecisionRow] = {}
    columns = [t.decisions.c[name] for name in DecisionRow._fields]
    for chunk in in_chunks(list(dict.fromkeys(decision_ids))):
        for raw in conn.execute(select(*columns).where(t.decisions.c.decision_id.in_(chunk))):
            row = DecisionRow(*raw)
            found[row.decision_id] = row._replace(deferred=bool(row.deferred), policy_version=int(row.policy_version))
    return found


def _finalise_all(conn: Connection, decisions: Sequence[DecisionRow], now_ms: int) -> None:
    """Every slot not yet final takes its reward for good: the sum of its rewards, or the default (stored as a
    reward) if none came; each becomes one learning row, and the decisions become final."""
    ids = [row.decision_id for row in decisions]
    s = t.decision_slots.c
    open_slots: dict[str, list[tuple[int, float, int]]] = {}
    for chunk in in_chunks(ids):
        for decision_id, slot, reward_sum, reward_count in conn.execute(
            select(s.decision_id, s.slot, s.reward_sum, s.reward_count)
            .where(s.decision_id.in_(chunk), s.final.is_(False)).order_by(s.decision_id, s.slot)
        ):
            open_slots.setdefault(decision_id, []).append((int(slot), float(reward_sum), int(reward_count)))
    defaults: list[dict[str, Any]] = []
    examples: list[dict[str, Any]] = []
    for row in decisions:
        slots = open_slots.get(row.decision_id, [])
        spec = _reward_spec(row)  # read even if unneeded: a record this version cannot read fails its close
        for slot, reward_sum, count in slots:
            reward = reward_sum if count > 0 else spec.default
            if count == 0:
                defaults.append({"decision_id": row.decision_id, "slot": slot, "value": reward, "received_ms": now_ms,
                                 "status": "default"})
            examples.append(_example(row, slot, reward, now_ms))
    _REWARD_NEW.execute_many(conn, defaults)
    for chunk in in_chunks(ids):
        conn.execute(update(t.decision_slots).where(s.decision_id.in_(chunk), s.final.is_(False)).values(final=True))
        conn.execute(update(t.decisions).where(t.decisions.c.decision_id.in_(chunk)).values(state="final"))
    _ENQUEUE.execute_many(conn, examples)


def _release(conn: Connection, decision_id: str) -> None:
    for contact in conn.execute(
        select(t.contacts).where(t.contacts.c.decision_id == decision_id, t.contacts.c.status == "reserved")
    ).all():
        if contact.budget_window_s is not None:
            conn.execute(
                update(t.budget_counters)
                .where(
                    t.budget_counters.c.action_id == contact.action_id,
                    t.budget_counters.c.window_s == contact.budget_window_s,
                    t.budget_counters.c.window_start_ms == contact.budget_window_ms,
                )
                .values(used=t.budget_counters.c.used - 1)
            )
    conn.execute(
        update(t.contacts)
        .where(t.contacts.c.decision_id == decision_id, t.contacts.c.status == "reserved")
        .values(status="released")
    )
    conn.execute(update(t.decisions).where(t.decisions.c.decision_id == decision_id).values(state="released"))
    conn.execute(  # rewards sent before an activation that never came: stored, never learned from
        update(t.rewards).where(t.rewards.c.decision_id == decision_id, t.rewards.c.status == "accepted")
        .values(status="late")
    )
