"""Hard constraints: which candidates must never be offered, and the rule that removed each one.

Static rules (inactive, channel, opt-out, suppression, eligibility) read only the request and the customer's
state. Counter rules (cooldown, caps, budget) read contact history and budget counters; the store re-checks
them inside the transaction that reserves the units, so concurrent requests cannot overshoot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from nba.catalog import Action
from nba.clock import to_rfc3339
from nba.rules import CompiledRule, RuleInputs, Selection
from nba.types import Contact, Context, CustomerState, Exclusion


def budget_window_start(now: datetime, window: timedelta) -> datetime:
    """The start of the fixed budget window that contains `now` (windows are aligned to the Unix epoch).

    >>> from datetime import UTC
    >>> budget_window_start(datetime(2026, 11, 24, 15, 30, tzinfo=UTC), timedelta(days=1)).isoformat()
    '2026-11-24T00:00:00+00:00'
    """
    seconds = int(window.total_seconds())
    start = int(now.timestamp()) // seconds * seconds
    return datetime.fromtimestamp(start, tz=now.tzinfo)


@dataclass(frozen=True)
class CounterState:
    """What counter rules read: the customer's recent contacts and each action's budget use this window."""

    contacts: Sequence[Contact]
    budget_used: Mapping[str, int]
    by_action: dict[str, list[Contact]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        grouped: dict[str, list[Contact]] = {}
        for contact in self.contacts:
            grouped.setdefault(contact.action_id, []).append(contact)
        object.__setattr__(self, "by_action", grouped)


def cel_variables(
    customer: CustomerState, context: Context, now: datetime, selection: Selection | None = None
) -> dict[str, Any]:
    """The `customer`, `context` and `now` variables that eligibility expressions see.

    With a `selection` (what the catalog's rules read, `nba.rules.selected_fields`), only those variables and
    fields: a decision converts to CEL what its rules can read, not the whole state and context.
    """
    if selection is None:
        return {"customer": _customer_fields(customer, None), "context": dict(context), "now": now}
    out: dict[str, Any] = {}
    if "customer" in selection:
        out["customer"] = _customer_fields(customer, selection["customer"])
    if "context" in selection:
        fields = selection["context"]
        out["context"] = dict(context) if fields is None else {k: context[k] for k in fields if k in context}
    if "now" in selection:
        out["now"] = now
    return out


def _customer_fields(customer: CustomerState, fields: frozenset[str] | None) -> dict[str, Any]:
    """The `customer` map: its attributes, then `id`, `event_counts` and `last_event_at` (times as datetimes)."""
    attributes = customer.attributes
    out: dict[str, Any] = (
        dict(attributes) if fields is None else {name: attributes[name] for name in fields if name in attributes}
    )
    if fields is None or "id" in fields:
        out["id"] = customer.customer_id
    if fields is None or "event_counts" in fields:
        out["event_counts"] = dict(customer.event_counts)
    if fields is None or "last_event_at" in fields:
        out["last_event_at"] = {name: datetime.fromisoformat(value) for name, value in customer.last_event_at.items()}
    return out


def static_exclusion(
    action_id: str,
    action: Action,
    rule: CompiledRule | None,
    channel: str,
    customer: CustomerState,
    variables: RuleInputs | Mapping[str, Any],
    now: datetime,
) -> Exclusion | None:
    """The first request- or state-based rule that excludes the action, or None."""
    if not action.active:
        return Exclusion(action_id, "inactive", "the action is not active")
    if channel not in action.channels:
        # API.md's rule names have none for this: the action is not eligible here, and the detail says why.
        return Exclusion(action_id, "eligibility", f"the action is not offered on channel {channel!r}")
    if "*" in customer.opt_outs or channel in customer.opt_outs:
        scope = "all channels" if "*" in customer.opt_outs else f"channel {channel!r}"
        return Exclusion(action_id, "opt_out", f"the customer opted out of {scope}")
    for suppression in action.suppressed_by:
        seen = customer.last_event_at.get(suppression.event)
        if seen is not None:
            seen_at = datetime.fromisoformat(seen)
            if now - seen_at < suppression.delta:
                return Exclusion(
                    action_id,
                    f"suppressed_by:{suppression.event}",
                    f"{suppression.event} at {to_rfc3339(seen_at)} is within {suppression.for_}",
                )
    if rule is not None:
        inputs = variables if isinstance(variables, RuleInputs) else RuleInputs(variables)
        result = rule.evaluate_for(inputs, action.attributes)
        if not result.passed:
            return Exclusion(action_id, "eligibility", result.detail)
    return None


def counter_exclusion(
    action_id: str, action: Action, channel: str, counters: CounterState, now: datetime
) -> Exclusion | None:
    """The first cooldown, cap or budget rule that excludes the action, or None."""
    mine = counters.by_action.get(action_id, ())
    cooldown = action.cooldown_delta
    if cooldown is not None and mine:
        last = max(c.at for c in mine)
        if now - last < cooldown:
            shown = (f"reserved by a deferred decision until {to_rfc3339(last)}" if last > now
                     else f"last shown at {to_rfc3339(last)}")
            return Exclusion(action_id, "cooldown", f"{shown}, cooldown {action.cooldown}")
    for cap in action.caps:
        start = now - cap.window_delta
        used = sum(
            1 for c in mine if c.at > start and (cap.per == "customer" or c.channel == channel)
        )
        if used >= cap.limit:
            scope = "customer" if cap.per == "customer" else f"customer on {channel!r}"
            return Exclusion(action_id, cap.rule, f"{used} of {cap.limit} per {scope} in {cap.window} used")
    if action.budget is not None:
        used = counters.budget_used.get(action_id, 0)
        if used >= action.budget.limit:
            return Exclusion(
                action_id, action.budget.rule, f"{used} of {action.budget.limit} per {action.budget.window} used"
            )
    return None


def longest_counter_window(actions: Sequence[Action]) -> timedelta:
    """How far back contact history must be read to judge cooldowns and caps of these actions."""
    return max((action.counter_window for action in actions), default=timedelta(0))
