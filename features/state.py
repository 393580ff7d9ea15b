"""The customer's state, built event by event: latest properties, counts, last times, opt-outs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from nba.errors import InvalidInput
from nba.types import CustomerState, Event

OPT_OUT = "opt_out"
OPT_IN = "opt_in"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_ATTRIBUTES = 1024  # distinct properties one customer's state may hold
_MICROSECOND = timedelta(microseconds=1)


def apply_event(state: CustomerState, event: Event) -> CustomerState:
    """Fold one event into a customer's state and return the new state (the input is not changed).

    Each property keeps the value of the newest event that set it (at equal times, the later arrival's), so the
    state does not depend on the order events arrive in: a late event cannot roll a property back, and still
    sets the properties no newer event has set. Newer means by `Event.ordered_at`: an event dated after its
    receipt (a client's clock ahead) counts from its receipt, so it cannot outrank one that arrives after it.
    `opt_out`/`opt_in` with an optional `channel` property (absent: every channel) maintain the opt-out list that
    the `opt_out` constraint reads (see `_apply_consent`).

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
        attribute_us=dict(state.attribute_us),
    )
    new.event_counts[event.type] = new.event_counts.get(event.type, 0) + 1
    previous = new.last_event_at.get(event.type)
    if previous is None or datetime.fromisoformat(previous) <= event.timestamp:
        new.last_event_at[event.type] = event.timestamp.isoformat()
    if event.type in (OPT_OUT, OPT_IN):
        _apply_consent(new, event)
    elif event.properties:
        _apply_properties(new, event)
    return new


def _apply_properties(state: CustomerState, event: Event) -> None:
    """Set each of the event's properties unless a newer event has set it; refuse (InvalidInput) to grow the
    customer's properties past MAX_ATTRIBUTES."""
    _adopt_legacy_times(state)
    before = len(state.attributes)
    rank = _rank_us(event)
    stored: int | list[int] = rank[0] if rank[1] == 0 else list(rank)
    times = state.attribute_us
    for key, value in event.properties.items():
        current = times.get(key)
        if current is None or _as_rank(current) <= rank:
            state.attributes[key] = value
            times[key] = stored
    if len(state.attributes) > max(before, MAX_ATTRIBUTES):
        raise InvalidInput(f"customer {state.customer_id!r} would have {len(state.attributes):,} properties, more "
                           f"than {MAX_ATTRIBUTES:,}: its state keeps every property it was ever sent",
                           field="properties")


def _adopt_legacy_times(state: CustomerState) -> None:
    """A state stored before attributes had times: each counts as set by its newest event so far, so that no
    late event rolls it back (as before, when only an event newer than the last of its type could)."""
    if state.attribute_us or not state.attributes:
        return
    newest = max((datetime.fromisoformat(at) for at in state.last_event_at.values()), default=_EPOCH)
    at = (newest - _EPOCH) // _MICROSECOND
    state.attribute_us = dict.fromkeys(state.attributes, at)


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
        entry = [event.ordered_at.isoformat(), event.type]
        state.consent[scope] = entry if event.timestamp == event.ordered_at else [*entry, event.timestamp.isoformat()]
    everywhere = state.consent.get("*")
    lifted = _consent_rank(everywhere) if everywhere and everywhere[1] == OPT_IN else None
    opted: set[str] = set()
    for name, entry in state.consent.items():
        if entry[1] != OPT_OUT:
            continue
        if name == "*" or lifted is None or _consent_rank(entry) >= lifted:
            opted.add(name)
    state.opt_outs = sorted(opted)


def _newer(event: Event, current: list[str] | None) -> bool:
    """Whether the event replaces a scope's recorded consent: not older than it (at equal times the later
    arrival wins, as for every other event type: events stamped at receipt tie within a millisecond)."""
    return current is None or _consent_rank(current) <= (event.ordered_at, event.timestamp)


# Which of two events is newer: `Event.ordered_at` first (an event dated after its receipt counts from it), then
# the timestamp (events of one request dated ahead share their receipt, and their dates still order them: a
# batch's opt-out dated 3 minutes ahead stays newer than its opt-in dated 1 minute ahead).
def _rank_us(event: Event) -> tuple[int, int]:
    """An event's rank for properties, in microseconds: when it counts from, and how far ahead of that it is dated."""
    ordered = (event.ordered_at - _EPOCH) // _MICROSECOND
    return ordered, (event.timestamp - _EPOCH) // _MICROSECOND - ordered


def _as_rank(stored: int | list[int]) -> tuple[int, int]:
    """A property's stored time as a rank: a plain number, or [time, ahead] for one set by an event dated ahead."""
    return (stored, 0) if isinstance(stored, int) else (stored[0], stored[1])


def _consent_rank(entry: list[str]) -> tuple[datetime, datetime]:
    """A scope's recorded consent as a rank: [time, kind], and the event's own date third when it was ahead."""
    at = datetime.fromisoformat(entry[0])
    return at, datetime.fromisoformat(entry[2]) if len(entry) > 2 else at


def _adopt_legacy_consent(state: CustomerState) -> None:
    """A state stored before consent was kept per scope holds only its opt-out list: each listed scope counts
    as opted out at the time of the last opt-out, so that only a newer opt-in lifts it."""
    if state.consent or not state.opt_outs:
        return
    at = state.last_event_at.get(OPT_OUT) or datetime.min.replace(tzinfo=UTC).isoformat()
    state.consent = {scope: [at, OPT_OUT] for scope in state.opt_outs}
