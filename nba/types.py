"""Domain types that cross module boundaries inside the core."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

ContextValue = bool | int | float | str | list[str]
Context = dict[str, ContextValue]
PolicyMode = Literal["online", "apprentice", "fallback"]


@dataclass
class CustomerState:
    """What earlier events made of a customer: latest properties, event counts, last times, opt-outs."""

    customer_id: str
    attributes: dict[str, Any] = field(default_factory=dict)
    event_counts: dict[str, int] = field(default_factory=dict)
    last_event_at: dict[str, str] = field(default_factory=dict)
    opt_outs: list[str] = field(default_factory=list)
    # The newest consent event per scope (a channel, or `*` for every channel): [time, "opt_out" | "opt_in"], and
    # the event's own date third when it was dated after its receipt (`features.state`).
    consent: dict[str, list[str]] = field(default_factory=dict)
    # When each attribute was set: the time of the event it came from, in microseconds since the epoch (for an
    # event dated after its receipt, [receipt, how far ahead]: `features.state`). Stored beside the state
    # (`customers.attribute_us`), not in it: only folding events needs it, not decisions.
    attribute_us: dict[str, int | list[int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """What events made of the customer, as a decision logs it and the customer route shows it."""
        return {
            "attributes": self.attributes,
            "event_counts": self.event_counts,
            "last_event_at": self.last_event_at,
            "opt_outs": self.opt_outs,
            "consent": self.consent,
        }

    @classmethod
    def from_json(cls, customer_id: str, data: dict[str, Any] | None) -> CustomerState:
        data = data or {}
        return cls(
            customer_id=customer_id,
            attributes=dict(data.get("attributes", {})),
            event_counts=dict(data.get("event_counts", {})),
            last_event_at=dict(data.get("last_event_at", {})),
            opt_outs=list(data.get("opt_outs", [])),
            consent={scope: list(entry) for scope, entry in data.get("consent", {}).items()},
            attribute_us=dict(data.get("attribute_us", {})),
        )


@dataclass(frozen=True)
class Exclusion:
    """A candidate a hard constraint removed: the rule that did it and what it read."""

    action_id: str
    rule: str
    detail: str


@dataclass(frozen=True)
class Contact:
    """One time an action reached (or is reserved to reach) a customer."""

    action_id: str
    channel: str
    at: datetime


@dataclass(frozen=True)
class SlotChoice:
    """The action drawn for one slot and its conditional propensity."""

    slot: int
    action_id: str
    probability: float


@dataclass(frozen=True)
class PolicyRef:
    """The policy and version that made a decision, and in which mode."""

    name: str
    version: int
    mode: PolicyMode


@dataclass
class Decision:
    """A logged decision: what was known, what was excluded and why, and the probabilities."""

    decision_id: str
    customer_id: str
    channel: str
    policy: PolicyRef
    created_at: datetime
    actions: list[SlotChoice]
    ranking: list[tuple[str, float]]
    excluded: list[Exclusion]
    context: Context
    customer: dict[str, Any]
    action_attributes: dict[str, dict[str, Any]]
    deferred: bool = False
    request_id: str | None = None
    activated_at: datetime | None = None
    state: str = "open"
    rewards: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class LearnItem:
    """A joined example waiting to be learned: which decision slot, with which final reward."""

    seq: int
    decision_id: str
    slot: int
    reward: float


@dataclass(frozen=True)
class Event:
    """Something that happened to a customer, as accepted from a channel."""

    event_id: str
    customer_id: str
    type: str
    timestamp: datetime
    properties: dict[str, Any]
    # When the service accepted it (None: not known). An event cannot be newer than its receipt: a client whose
    # clock runs ahead may date one a few minutes late, and it must not outrank what arrives after it.
    received: datetime | None = None

    @property
    def ordered_at(self) -> datetime:
        """The time that decides which of two events is newer: its timestamp, or its receipt if earlier."""
        received = self.received
        return self.timestamp if received is None or self.timestamp <= received else received


@dataclass(frozen=True)
class EventOutcome:
    """What ingesting one event did."""

    event_id: str
    customer_id: str
    duplicate: bool
