"""The customer's state, built event by event: latest properties, counts, last times, opt-outs."""

from __future__ import annotations

from datetime import datetime

from nba.types import CustomerState, Event

OPT_OUT = "opt_out"
OPT_IN = "opt_in"


def apply_event(state: CustomerState, event: Event) -> CustomerState:
    """Fold one event into a customer's state and return the new state (the input is not changed).

    Properties overwrite earlier values only when the event is not older than the last one of its type, so
    late-arriving events cannot roll the state back. `opt_out`/`opt_in` with an optional `channel` property
    (absent: every channel) maintain the opt-out list that the `opt_out` constraint reads.

    >>> from datetime import UTC
    >>> e = Event("e1", "c1", "profile_updated", datetime(2026, 1, 1, tzinfo=UTC), {"age": 34})
    >>> s = apply_event(CustomerState("c1"), e)
    >>> s.attributes, s.event_counts, s.last_event_at
    ({'age': 34}, {'profile_updated': 1}, {'profile_updated': '2026-01-01T00:00:00+00:00'})
    """
    new = CustomerState(
        customer_id=state.customer_id,
        attributes=dict(state.attributes),
        event_counts=dict(state.event_counts),
        last_event_at=dict(state.last_event_at),
        opt_outs=list(state.opt_outs),
    )
    new.event_counts[event.type] = new.event_counts.get(event.type, 0) + 1
    # Consent events are ordered against each other: a late opt_in older than the last opt_out changes nothing.
    related = (OPT_OUT, OPT_IN) if event.type in (OPT_OUT, OPT_IN) else (event.type,)
    previous = [datetime.fromisoformat(new.last_event_at[t]) for t in related if t in new.last_event_at]
    is_latest = not previous or max(previous) <= event.timestamp
    if is_latest:
        new.last_event_at[event.type] = event.timestamp.isoformat()
        if event.type in (OPT_OUT, OPT_IN):
            _apply_consent(new, event)
        else:
            new.attributes.update(event.properties)
    return new


def _apply_consent(state: CustomerState, event: Event) -> None:
    channel = event.properties.get("channel")
    scope = channel if isinstance(channel, str) and channel else "*"
    opted = set(state.opt_outs)
    if event.type == OPT_OUT:
        opted.add(scope)
    elif scope == "*":
        opted.clear()
    else:
        opted.discard(scope)
    state.opt_outs = sorted(opted)
