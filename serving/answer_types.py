"""The shapes of the answers that routes build as plain dicts, for the OpenAPI document (API.md: it "must describe
all of it"). Nothing is built from them: the routes' JSON is unchanged, and `tests/serving/test_openapi.py`
checks that every answer fits its documented shape."""

from __future__ import annotations

from typing import Annotated, Any, TypedDict

from litestar.params import KwargDefinition
from pydantic import BaseModel, Field

from nba.catalog import Action, EventType, Policy


class StoredAction(Action):
    """An action as the catalog holds it, with its id."""

    action_id: str


class ActionList(BaseModel):
    items: list[StoredAction]


class StoredPolicy(Policy):
    """A policy as the catalog holds it, with its name and current version."""

    name: str
    version: str = Field(description="The policy's version, as decisions name it: a changed policy gets the next")


class PolicyList(BaseModel):
    items: list[StoredPolicy]


class StoredEventType(EventType):
    """An event type's schema as the registry holds it, with its name."""

    type: str


class EventTypeList(BaseModel):
    items: list[StoredEventType]


class CustomerStateOut(TypedDict):
    attributes: Annotated[dict[str, Any], KwargDefinition(description="Profile attributes events set")]
    event_counts: dict[str, int]
    last_event_at: Annotated[dict[str, str], KwargDefinition(description="Event type -> RFC 3339 time, UTC")]
    opt_outs: Annotated[list[str], KwargDefinition(description="Channels opted out of; `*` for all")]
    consent: dict[str, list[Any]]


class SlotTaken(TypedDict):
    slot: int
    action_id: str
    probability: float


class RecentDecision(TypedDict):
    decision_id: str
    channel: str
    actions: list[SlotTaken]
    created_at: str


class CustomerOut(TypedDict):
    customer_id: Annotated[str, KwargDefinition(description="The canonical id (the path may name an alias)")]
    aliases: list[str]
    state: CustomerStateOut
    recent_decisions: Annotated[list[RecentDecision], KwargDefinition(description="Up to 50, newest first")]


class ModelHealth(TypedDict):
    policy: str
    version: str
    healthy: bool
    snapshot_id: int
    examples_learned: int
    message: str


class Health(TypedDict):
    status: Annotated[str, KwargDefinition(description="`ok`, `degraded` (a model or a decision's record is "
                                                       "unusable) or `down` (the store is: a 503)")]
    store: str
    catalog_version: int
    models: list[ModelHealth]
    unclosable_decisions: int
