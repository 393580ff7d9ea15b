"""Customer state built event by event, and the validation events pass before they are folded in."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from features.events import BUILTIN_TYPES, validate_event
from features.state import apply_event
from nba.catalog import EventType
from nba.errors import InvalidInput
from nba.types import CustomerState, Event

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def _event(type_: str, at: datetime, **properties: Any) -> Event:
    return Event(f"e-{type_}-{at.isoformat()}", "c1", type_, at, properties)


def _fold(*events: Event, state: CustomerState | None = None) -> CustomerState:
    state = state or CustomerState("c1")
    for event in events:
        state = apply_event(state, event)
    return state


# -- apply_event --------------------------------------------------------------------------------------


def test_an_event_updates_properties_counts_and_last_time() -> None:
    state = _fold(_event("profile_updated", T0, age=34, city="Oslo"),
                  _event("purchase", T0 + timedelta(hours=1), amount=20.0),
                  _event("profile_updated", T0 + timedelta(hours=2), age=35))
    assert state.customer_id == "c1"
    assert state.attributes == {"age": 35, "city": "Oslo", "amount": 20.0}
    assert state.event_counts == {"profile_updated": 2, "purchase": 1}
    assert state.last_event_at == {"profile_updated": (T0 + timedelta(hours=2)).isoformat(),
                                   "purchase": (T0 + timedelta(hours=1)).isoformat()}


def test_apply_event_does_not_change_its_input() -> None:
    before = CustomerState("c1", attributes={"age": 1}, event_counts={"x": 1}, last_event_at={"x": T0.isoformat()},
                           opt_outs=["email"])
    snapshot = (dict(before.attributes), dict(before.event_counts), dict(before.last_event_at), list(before.opt_outs))
    apply_event(before, _event("x", T0 + timedelta(1), age=2))
    apply_event(before, _event("opt_out", T0 + timedelta(1)))
    assert (before.attributes, before.event_counts, before.last_event_at, before.opt_outs) == snapshot


def test_a_late_event_is_counted_but_cannot_roll_properties_back() -> None:
    state = _fold(_event("profile_updated", T0, tier="gold"),
                  _event("profile_updated", T0 - timedelta(days=3), tier="bronze"))
    assert state.attributes == {"tier": "gold"}
    assert state.event_counts == {"profile_updated": 2}
    assert state.last_event_at == {"profile_updated": T0.isoformat()}


def test_an_event_at_the_same_time_as_the_last_one_applies() -> None:
    state = _fold(_event("profile_updated", T0, tier="gold"), _event("profile_updated", T0, tier="silver"))
    assert state.attributes == {"tier": "silver"}


def test_a_late_event_of_another_type_cannot_roll_a_property_back() -> None:
    state = _fold(_event("purchase", T0 - timedelta(hours=1), category="shoes", amount=50),
                  _event("cart_abandoned", T0 - timedelta(days=3), category="books", cart_value=10))
    assert state.attributes == {"category": "shoes", "amount": 50, "cart_value": 10}


def test_a_late_event_still_sets_what_no_newer_event_has_set() -> None:
    state = _fold(_event("profile_updated", T0 - timedelta(hours=1), age=30),
                  _event("profile_updated", T0 - timedelta(hours=2), email="a@x", age=20))
    assert state.attributes == {"age": 30, "email": "a@x"}  # as had they arrived in time order


_KEYS = ["tier", "age", "city", "category"]


@given(events=st.lists(st.tuples(st.sampled_from(["profile_updated", "purchase", "visit"]),
                                 st.integers(0, 10_000),
                                 st.dictionaries(st.sampled_from(_KEYS), st.integers(0, 9), max_size=3)),
                       min_size=1, max_size=8, unique_by=lambda e: e[1]),
       order=st.randoms(use_true_random=False))
def test_the_state_does_not_depend_on_the_arrival_order(events: list[tuple[str, int, dict[str, int]]],
                                                         order: Any) -> None:
    """Whatever order events arrive in, the state is the one they make arriving in time order."""
    made = [_event(type_, T0 + timedelta(seconds=at), **props) for type_, at, props in events]
    in_time_order = _fold(*sorted(made, key=lambda e: e.timestamp))
    shuffled = list(made)
    order.shuffle(shuffled)
    state = _fold(*shuffled)
    assert state.attributes == in_time_order.attributes
    assert state.event_counts == in_time_order.event_counts
    assert state.last_event_at == in_time_order.last_event_at


def test_a_state_stored_before_attributes_had_times_is_not_rolled_back() -> None:
    """Its attributes count as set at its newest event: a late event sets only what the state does not have."""
    legacy = CustomerState.from_json("c1", {"attributes": {"tier": "gold"},
                                            "last_event_at": {"profile_updated": T0.isoformat()}})
    state = _fold(_event("profile_updated", T0 - timedelta(hours=1), tier="bronze", city="Oslo"), state=legacy)
    assert state.attributes == {"tier": "gold", "city": "Oslo"}
    state = _fold(_event("visit", T0 + timedelta(seconds=1), tier="silver"), state=state)
    assert state.attributes == {"tier": "silver", "city": "Oslo"}


def test_opt_out_and_opt_in_maintain_the_opt_out_list() -> None:
    state = _fold(_event("opt_out", T0, channel="email"))
    assert state.opt_outs == ["email"]
    state = _fold(_event("opt_out", T0 + timedelta(minutes=1), channel="sms"), state=state)
    assert state.opt_outs == ["email", "sms"]
    state = _fold(_event("opt_in", T0 + timedelta(minutes=2), channel="email"), state=state)
    assert state.opt_outs == ["sms"]
    state = _fold(_event("opt_out", T0 + timedelta(minutes=3)), state=state)
    assert state.opt_outs == ["*", "sms"]
    state = _fold(_event("opt_in", T0 + timedelta(minutes=4)), state=state)
    assert state.opt_outs == []
    assert state.attributes == {}  # consent events do not become profile properties


def test_an_empty_channel_means_every_channel() -> None:
    assert _fold(_event("opt_out", T0, channel="")).opt_outs == ["*"]


@pytest.mark.parametrize(
    ("newer", "older", "expected"),
    [(("opt_out", T0), ("opt_in", T0 - timedelta(hours=1)), ["*"]),
     (("opt_in", T0), ("opt_out", T0 - timedelta(hours=1)), [])],
    ids=["late-opt-in-re-subscribes", "late-opt-out-unsubscribes"],
)
def test_a_late_consent_event_cannot_override_a_newer_one(
    newer: tuple[str, datetime], older: tuple[str, datetime], expected: list[str]
) -> None:
    state = _fold(_event(*newer), _event(*older))
    assert state.opt_outs == expected


def test_an_event_counts_from_its_receipt_when_dated_after_it() -> None:
    """An opt-in dated four minutes ahead (a client's clock) loses to an opt-out received a second after it."""
    ahead = Event("e-in", "c1", "opt_in", T0 + timedelta(minutes=4), {}, received=T0)
    later = Event("e-out", "c1", "opt_out", T0 + timedelta(seconds=1), {}, received=T0 + timedelta(seconds=1))
    assert _fold(ahead, later).opt_outs == ["*"] and _fold(later, ahead).opt_outs == ["*"]
    assert ahead.ordered_at == T0 and later.ordered_at == later.timestamp
    in_the_past = Event("e-old", "c1", "opt_in", T0 - timedelta(hours=1), {}, received=T0)
    assert in_the_past.ordered_at == in_the_past.timestamp


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([("opt_in", 10, "email"), ("opt_out", 5, "web")], ["web"]),
        ([("opt_out", 10, "email"), ("opt_out", 5, "web")], ["email", "web"]),
        ([("opt_in", 365 * 86400, "email"), ("opt_out", 0, None)], ["*"]),
        ([("opt_in", 10, None), ("opt_out", 5, "web")], []),
        ([("opt_out", 10, None), ("opt_in", 20, "web")], ["*"]),
        ([("opt_out", 10, "web"), ("opt_in", 10, "web")], []),
        ([("opt_in", 10, None), ("opt_out", 10, "email")], ["email"]),
        ([("opt_out", 10, "email"), ("opt_in", 10, None)], ["email"]),
    ],
    ids=["late-opt-out-behind-another-channels-opt-in", "late-opt-out-behind-another-channels-opt-out",
         "mis-dated-opt-in-elsewhere-does-not-block-an-opt-out", "opt-in-everywhere-lifts-an-older-late-opt-out",
         "a-channel-opt-in-does-not-lift-an-opt-out-from-everything", "at-equal-times-the-later-arrival-wins",
         "a-channel-opt-out-as-late-as-an-opt-in-everywhere-holds", "whichever-arrived-first"],
)
def test_each_scope_orders_its_own_consent_events(
    events: list[tuple[str, int, str | None]], expected: list[str]
) -> None:
    """A channel's consent depends on its own events and those for every channel, never on another channel's."""
    state = _fold(*(_event(kind, T0 + timedelta(seconds=at), **({"channel": ch} if ch else {}))
                    for kind, at, ch in events))
    assert state.opt_outs == expected


CONSENT_EVENTS = st.lists(  # distinct times: at equal times the later arrival wins, by design
    st.tuples(st.sampled_from(["opt_out", "opt_in"]), st.integers(0, 20), st.sampled_from([None, "web", "email"])),
    max_size=8, unique_by=lambda event: event[1],
)


@given(CONSENT_EVENTS, st.randoms(use_true_random=False))
def test_consent_does_not_depend_on_the_order_events_arrive_in(
    events: list[tuple[str, int, str | None]], rng: Any
) -> None:
    def fold(order: list[tuple[str, int, str | None]]) -> list[str]:
        return _fold(*(_event(kind, T0 + timedelta(minutes=at), **({"channel": ch} if ch else {}))
                       for kind, at, ch in order)).opt_outs

    shuffled = list(events)
    rng.shuffle(shuffled)
    assert fold(events) == fold(shuffled)


def test_a_state_stored_before_per_scope_consent_keeps_its_opt_outs() -> None:
    stored = CustomerState.from_json("c1", {"opt_outs": ["web"], "last_event_at": {"opt_out": T0.isoformat()}})
    assert _fold(_event("opt_in", T0 - timedelta(hours=1), channel="web"), state=stored).opt_outs == ["web"]
    assert _fold(_event("opt_out", T0 + timedelta(hours=1), channel="email"), state=stored).opt_outs == ["email", "web"]
    assert _fold(_event("opt_in", T0 + timedelta(hours=1), channel="web"), state=stored).opt_outs == []


# -- validate_event -----------------------------------------------------------------------------------

REGISTRY = {
    "payment_failed": EventType(
        properties={"amount": "number", "method": "string", "attempt": "integer", "retry": "bool",
                    "items": "list", "at": "timestamp"},
        required=["amount"],
    )
}


def test_a_valid_event_passes_and_undeclared_properties_are_allowed() -> None:
    validate_event("payment_failed", {"amount": 84.5, "method": "card", "attempt": 2, "retry": False,
                                      "items": ["a", "b"], "at": "2026-11-24T10:14:58Z", "extra": "x"},
                   REGISTRY)
    for at in ("2026-11-24T10:14:58.123+01:00", "2026-11-24t10:14:58z", "2026-11-24 10:14:58-05:30"):
        validate_event("payment_failed", {"amount": 1.0, "at": at}, REGISTRY)  # RFC 3339 forms
    validate_event("payment_failed", {"amount": 3}, REGISTRY)


def test_a_nested_property_is_refused_naming_it() -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_event("payment_failed", {"amount": 1.0, "extra": {"x": 1}}, REGISTRY)
    assert caught.value.field == "properties.extra"


@pytest.mark.parametrize("type_", sorted(BUILTIN_TYPES))
def test_builtin_types_need_no_registration(type_: str) -> None:
    validate_event(type_, {}, {})


def test_an_unknown_type_is_refused_naming_the_field() -> None:
    with pytest.raises(InvalidInput, match="unknown event type 'cart_abandoned'") as info:
        validate_event("cart_abandoned", {}, REGISTRY, field_prefix="events[3].")
    assert info.value.field == "events[3].type"


def test_a_missing_required_property_is_refused() -> None:
    with pytest.raises(InvalidInput) as info:
        validate_event("payment_failed", {"method": "card"}, REGISTRY)
    assert info.value.field == "properties.amount"


@pytest.mark.parametrize(
    ("name", "value"),
    [("amount", "84.5"), ("amount", True), ("amount", math.nan), ("amount", math.inf), ("attempt", 2.0),
     ("attempt", False), ("retry", 1), ("method", 5), ("items", ["a", 1]), ("items", "a"),
     ("at", "yesterday"), ("at", 1732443298), ("at", "2026-11-24T10:14:58"), ("at", "2026-11-24"),
     # ISO 8601 but not RFC 3339: basic format, a week date, an hour without minutes
     ("at", "20261124T101458Z"), ("at", "2026-W48-1T10:00+00:00"), ("at", "2026-11-24T10+01")],
)
def test_a_property_of_the_wrong_type_is_refused(name: str, value: Any) -> None:
    properties = {"amount": 1.0, name: value}
    with pytest.raises(InvalidInput, match=f"property '{name}' must be") as info:
        validate_event("payment_failed", properties, REGISTRY)
    assert info.value.field == f"properties.{name}"


def test_a_registered_type_overrides_a_builtin_one() -> None:
    registry = {"opt_out": EventType(properties={"channel": "string", "reason": "string"}, required=["reason"])}
    with pytest.raises(InvalidInput):
        validate_event("opt_out", {"channel": "web"}, registry)
    with pytest.raises(InvalidInput):
        validate_event("opt_out", {"channel": 3}, {})
