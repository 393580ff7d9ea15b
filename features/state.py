"""The customer's state, built event by event: latest properties, counts, last times, opt-outs."""

from __future__ import annotations

from datetime import UTC, datetime

from nba.types import CustomerState, Event

OPT_OUT = "opt_out"
OPT_IN = "opt_in"


def apply_event(state: CustomerState, event: Event) -> CustomerState:
    """Fold one event into a customer's state and return the new state (the input is not changed).

    Properties overwrite earlier values only when the event is not older than the last one of its type, so
    late-arriving events cannot roll the state back. `opt_out`/`opt_in` with an optional `channel` property
    (absent: every channel) maintain the opt-out list that the `opt_out` constraint reads (see `_apply_consent`).

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
        consent={scope: list(entry) for scope, entry in state.consent.items()},
    )
    new.event_counts[event.type] = new.event_counts.get(event.type, 0) + 1
    previous = new.last_event_at.get(event.type)
    is_latest = previous is None or datetime.fromisoformat(previous) <= event.timestamp
    if is_latest:
        new.last_event_at[event.type] = event.timestamp.isoformat()
    if event.type in (OPT_OUT, OPT_IN):
        _apply_consent(new, event)
    elif is_latest:
        new.attributes.update(event.properties)
    return new


def _apply_consent(state: CustomerState, event: Event) -> None:
    """Record the event as its scope's consent if it is the newest there, then derive the opt-out list.

    Each scope (a channel, or `*` for every channel) keeps its own newest event, so a late event for one channel
    is never dropped because of a newer one for another. A channel is opted out when its own newest event is an
    opt-out that is not older than the newest `opt_in` for every channel; every channel is opted out while the
    newest event for every channel is an opt-out, whatever single channels say (a channel's opt-in does not
    lift an opt-out from everything).
    """
    _adopt_legacy_consent(state)
    channel = event.properties.get("channel")
    scope = channel if isinstance(channel, str) and channel else "*"
    if _newer(event, state.consent.get(scope)):
        state.consent[scope] = [event.timestamp.isoformat(), event.type]
    everywhere = state.consent.get("*")
    lifted_at = datetime.fromisoformat(everywhere[0]) if everywhere and everywhere[1] == OPT_IN else None
    opted: set[str] = set()
    for name, (at, kind) in state.consent.items():
        if kind != OPT_OUT:
            continue
        if name == "*" or lifted_at is None or datetime.fromisoformat(at) >= lifted_at:
            opted.add(name)
    state.opt_outs = sorted(opted)


def _newer(event: Event, current: list[str] | None) -> bool:
    """Whether the event replaces a scope's recorded consent: not older than it (at equal times the later
    arrival wins, as for every other event type: events stamped at receipt tie within a millisecond)."""
    return current is None or datetime.fromisoformat(current[0]) <= event.timestamp


def _adopt_legacy_consent(state: CustomerState) -> None:
    """A state stored before consent was kept per scope holds only its opt-out list: each listed scope counts
    as opted out at the time of the last opt-out, so that only a newer opt-in lifts it."""
    if state.consent or not state.opt_outs:
        return
    at = state.last_event_at.get(OPT_OUT) or datetime.min.replace(tzinfo=UTC).isoformat()
    state.consent = {scope: [at, OPT_OUT] for scope in state.opt_outs}
