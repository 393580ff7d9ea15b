"""Event validation against the event-type registry."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import msgspec

from nba.catalog import EventType
from nba.errors import InvalidInput
from nba.numbers import is_finite_number

BUILTIN_TYPES: dict[str, EventType] = {
    "opt_out": EventType(properties={"channel": "string"}),
    "opt_in": EventType(properties={"channel": "string"}),
    "profile_updated": EventType(),
}


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool) and is_finite_number(value)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool) and is_finite_number(value)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "list":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == "timestamp":
        if not isinstance(value, str):
            return False
        try:  # RFC 3339, as event times are read (ISO 8601's other forms, such as week dates, are not)
            parsed = msgspec.convert(value, datetime)
        except msgspec.ValidationError:
            return False
        return parsed.tzinfo is not None  # a time without its offset could be any zone's
    return False


MAX_STRING = 1024  # characters of a string property, or of each string of a list
MAX_LIST = 100  # strings in a list property


def _flat_value_problem(value: Any) -> str | None:
    """Why a property value is not one the state can hold (None if it is): the message names the limit broken."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        return None if len(value) <= MAX_STRING else f"is a string of {len(value)} characters, over {MAX_STRING}"
    if isinstance(value, int | float):
        return None if is_finite_number(value) else "must be a finite number within a float's range"
    if isinstance(value, list):
        if len(value) > MAX_LIST:
            return f"is a list of {len(value)} strings, over {MAX_LIST}"
        for index, item in enumerate(value):
            if not isinstance(item, str):
                return f"must be a list of strings only (item {index} is not a string)"
            if len(item) > MAX_STRING:
                return f"has a string of {len(item)} characters (item {index}), over {MAX_STRING}"
        return None
    return "must be a string, number, bool or list of strings"


def effective_schema(event_type: str, registry: Mapping[str, EventType]) -> EventType | None:
    """The schema events of a type are checked against. A registered schema may extend a built-in type (more
    properties, required ones) but not change the type of a property the service reads, such as `opt_out`'s
    `channel`: those keep the built-in type whatever a catalog says."""
    builtin, registered = BUILTIN_TYPES.get(event_type), registry.get(event_type)
    if builtin is None or registered is None:
        return registered or builtin
    properties = {**registered.properties, **builtin.properties}
    return EventType(properties=properties, required=[n for n in registered.required if n in properties])


def changed_builtin_properties(event_type: str, schema: EventType) -> list[str]:
    """Properties of a built-in type that `schema` would give another type (refused when it is registered)."""
    builtin = BUILTIN_TYPES.get(event_type)
    if builtin is None:
        return []
    return [name for name, kind in builtin.properties.items() if schema.properties.get(name, kind) != kind]


def validate_event(
    event_type: str, properties: Mapping[str, Any], registry: Mapping[str, EventType], field_prefix: str = ""
) -> None:
    """Check an event's type is known and its properties fit the type's schema; raise `InvalidInput` if not.

    Properties the schema does not declare are accepted (producers may add fields); declared ones must have
    the declared type, and required ones must be present.
    """
    schema = effective_schema(event_type, registry)
    if schema is None:
        raise InvalidInput(
            f"unknown event type {event_type!r}: register it with PUT /v1/event-types/{event_type}",
            field=f"{field_prefix}type",
        )
    for name in schema.required:
        if name not in properties:
            raise InvalidInput(f"required property {name!r} is missing", field=f"{field_prefix}properties.{name}")
    for name, value in properties.items():
        problem = _flat_value_problem(value)
        if problem is not None:
            raise InvalidInput(f"property {name!r} {problem}", field=f"{field_prefix}properties.{name}")
        kind = schema.properties.get(name)
        if kind is not None and not _type_ok(kind, value):
            raise InvalidInput(f"property {name!r} must be a {kind}", field=f"{field_prefix}properties.{name}")
