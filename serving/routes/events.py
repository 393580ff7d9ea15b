"""`POST /v1/events`: what just happened to customers; updates their state for later decisions."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
from anyio import to_thread
from litestar import Request, post

from features.events import validate_event
from features.state import apply_event
from nba.catalog import EventType
from nba.errors import CatalogChanged, InvalidInput
from nba.ids import new_id
from nba.types import Event
from serving.metrics import EVENTS, child
from serving.openapi import answers
from serving.routes.types import Id, Key, Name
from serving.runtime import Runtime

# Values are checked by `validate_event`, which names the property at fault.
Properties = Annotated[dict[Key, Any], msgspec.Meta(max_length=256, description=(
    "Values are strings, numbers, booleans or lists of those (no objects), as the event type registers them "
    "(`PUT /v1/event-types/{type}`): a timestamp is an RFC 3339 string"))]


# RFC 3339 times carry their offset: a time without one could be any zone's, and windows run from it.
Timestamp = Annotated[datetime, msgspec.Meta(tz=True)]


class EventIn(msgspec.Struct, forbid_unknown_fields=True):
    customer_id: Id
    type: Name
    timestamp: Timestamp | None = None
    properties: Properties = msgspec.field(default_factory=dict)
    event_id: Id | None = None


class EventResult(msgspec.Struct):
    event_id: str
    duplicate: bool
    triggered: list[str]
    cancelled: list[str]


EventsBody = EventIn | Annotated[list[EventIn], msgspec.Meta(min_length=1, max_length=1000)]


# How far ahead of the server's clock an event may be dated (clients' clocks drift). A later time is refused;
# one within it is stored as dated, but orders state and consent from its receipt (`Event.ordered_at`), so that
# it never outranks what arrives after it.
MAX_CLOCK_AHEAD = timedelta(minutes=5)


def _utc(when: datetime, field: str, now: datetime) -> datetime:
    """The event's time in UTC; one whose offset takes it past year 1 or 9999, or that lies in the future
    (beyond `MAX_CLOCK_AHEAD`), is refused."""
    try:
        utc = when.astimezone(UTC)
    except OverflowError:
        raise InvalidInput("the timestamp is out of range: in UTC it falls outside years 1 to 9999",
                           field=field) from None
    if utc > now + MAX_CLOCK_AHEAD:
        raise InvalidInput(f"the timestamp is in the future: more than {MAX_CLOCK_AHEAD.seconds // 60} minutes "
                           f"after the server's time ({now.isoformat()})", field=field)
    return utc


CATALOG_ATTEMPTS = 4  # validations of one request against a catalog that keeps changing, before a 503


def _validated(data: EventsBody, items: list[EventIn], ids: list[str], registry: Mapping[str, EventType],
               now: datetime) -> list[Event]:
    batch: list[Event] = []
    for index, item in enumerate(items):
        prefix = f"[{index}]." if isinstance(data, list) else ""
        validate_event(item.type, item.properties, registry, field_prefix=prefix)
        batch.append(Event(ids[index], item.customer_id, item.type,
                           _utc(item.timestamp or now, f"{prefix}timestamp", now), dict(item.properties), now))
    return batch


@post("/v1/events", status_code=202, opt={"role": "channel", "body": EventsBody}, tags=["events"],
      summary="Ingest one event or a list of up to 1,000", responses=answers(400, 401, 403, 413, 422, 503))
async def ingest(request: Request[Any, Any, Any], data: EventsBody) -> list[EventResult]:
    runtime: Runtime = request.app.state.runtime
    items = data if isinstance(data, list) else [data]
    now = runtime.clock.now()
    ids = [item.event_id or new_id("e-") for item in items]
    for attempt in range(CATALOG_ATTEMPTS):
        catalog = runtime.catalog()
        try:
            batch = _validated(data, items, ids, catalog.event_types, now)
        except InvalidInput:
            # An event type registered (or changed) a moment ago through another process: checked again on the
            # catalog as the store has it, before the refusal stands.
            if attempt == 0 and await to_thread.run_sync(runtime.store.event_types_version) \
                    != catalog.event_types_version:
                await to_thread.run_sync(runtime.refresh_catalog)
                continue
            raise
        try:
            outcomes = await runtime.store.run_async(runtime.store.events_write(
                batch, apply_event, now, event_types_version=catalog.event_types_version))
            break
        except CatalogChanged:  # validated on event types that changed before the commit: validate them again
            await to_thread.run_sync(runtime.refresh_catalog)
        except InvalidInput as exc:  # what the customer's state cannot take, named `[index].properties`
            if isinstance(data, list) or not (exc.field or "").startswith("[0]."):
                raise
            raise InvalidInput(exc.message, field=(exc.field or "")[len("[0]."):]) from exc
    else:
        raise CatalogChanged("the catalog kept changing while these events were validated")
    for outcome in outcomes:
        child(EVENTS, "true" if outcome.duplicate else "false").inc()
    return [EventResult(o.event_id, o.duplicate, [], []) for o in outcomes]
