"""Strict request bodies: JSON is decoded against the route's body type before the handler runs.

Litestar converts bodies leniently (a string "2" becomes the integer 2); the contract wants a wrong type to be
a 422 naming the field, and a body that is not JSON (bad UTF-8, NaN, too deep) to be a 400. Routes name their
body type in `opt={"body": Type}`.
"""

from __future__ import annotations

import decimal
import json
import re
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

import msgspec
from litestar import Request
from litestar.exceptions import ClientException, InternalServerException, ValidationException
from pydantic import BaseModel, ValidationError

from nba.catalog import CLIENT_INPUT
from nba.errors import InvalidInput
from nba.numbers import is_unusable_number

_PATH = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_KEY_AT = re.compile(r" - at `key` in `\$([^`]*)`$")
_NAMED = re.compile(r"(?:missing required|unknown) field `([^`]+)`")
BODY_CUT_SHORT = "client disconnected prematurely"  # Litestar's detail when the server ends a body early
UNREADABLE = "the body could not be read: its chunked encoding is malformed, or the connection ended before it did"


def error_field(message: str) -> tuple[str, str]:
    """(field, message) from a msgspec validation message such as "Expected `int`, got `str` - at `$.slots`".

    >>> error_field("Expected `int`, got `str` - at `$.slots`")
    ('slots', 'Expected `int`, got `str`')
    >>> error_field("Object missing required field `channel`")
    ('channel', 'Object missing required field `channel`')
    >>> error_field("Expected `str`, got `int` - at `$[2].type`")
    ('[2].type', 'Expected `str`, got `int`')
    """
    match = _PATH.match(message)
    assert match is not None
    text, path = match.group("message"), (match.group("path") or "").replace("[...]", "")
    named = _NAMED.search(text)
    if named:
        path = f"{path}.{named.group(1)}" if path else named.group(1)
    path = path.lstrip(".")
    return (path or "body"), text


async def _read(request: Request[Any, Any, Any]) -> bytes:
    """The whole body. A body that ends before its framing says it does (malformed chunked encoding, a connection
    closed mid-body) is the client's fault: a 400, where Litestar raises a 500 ("client disconnected")."""
    try:
        return await request.body()
    except InternalServerException as exc:
        if exc.detail != BODY_CUT_SHORT:
            raise
        raise ClientException(UNREADABLE) from exc


async def check_body(request: Request[Any, Any, Any]) -> None:
    body_type = request.route_handler.opt.get("body")
    if body_type is None:
        return
    raw = await _read(request)
    model_errors: list[tuple[str, str]] = []
    try:
        if isinstance(body_type, type) and issubclass(body_type, BaseModel):
            model_errors = _model_errors(body_type, raw)
        else:
            msgspec.json.decode(raw, type=body_type, strict=True)
    except msgspec.ValidationError as exc:
        malformed = _syntax_error(raw)
        if malformed is not None:  # msgspec validates as it parses: a field's type can fail before the syntax
            raise _not_json(raw, malformed) from exc
        message = str(exc)
        field, text = error_field(message)
        bad_key = _KEY_AT.search(message)
        in_map = _PATH.match(message)
        if bad_key:  # "... - at `key` in `$.context`": a key of that map is at fault
            text = message[:bad_key.start()]
            field = _name_keys(raw, body_type, bad_key.group(1).lstrip(".") + "[...]", bad_key=True)
        elif in_map is not None and "[...]" in (in_map.group("path") or ""):
            field = _name_keys(raw, body_type, (in_map.group("path") or "").lstrip("."))
        if message.startswith("Number out of range"):
            raise InvalidInput("a number is out of range", field=field) from exc
        if "with a timezone component" in text:
            text = "a time must be RFC 3339 with its UTC offset, such as 2026-11-24T10:14:58Z or +01:00 at the end"
        raise InvalidInput(text, field=field) from exc
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError, ValueError) as exc:
        raise _not_json(raw, exc) from exc
    if model_errors:
        raise ValidationException("; ".join(f"{field}: {message}" for field, message in model_errors),
                                  extra=[{"key": field, "message": message, "final": True}
                                         for field, message in model_errors])


# Reads every number, however large (1e999 is JSON; out of a float's range it is a 422 of the route's, not a 400).
_ANY_JSON = msgspec.json.Decoder(float_hook=decimal.Decimal)


def _syntax_error(raw: bytes) -> Exception | None:
    """Why `raw` is not JSON at all, or None if it is (a body of the wrong shape is a 422, one that is not JSON a
    400, whichever error comes first in it)."""
    try:
        _ANY_JSON.decode(raw)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError, ValueError) as exc:
        return exc
    return None


def _not_json(raw: bytes, exc: Exception) -> ClientException:
    detail = str(exc) or exc.__class__.__name__
    if not raw.strip():
        detail = "the body is empty"
    if not detail.startswith("JSON is malformed"):
        detail = f"JSON is malformed: {detail}"
    return ClientException(detail)


def _model_errors(model: type[BaseModel], raw: bytes) -> list[tuple[str, str]]:
    """What is wrong with a pydantic body, checked strictly: Litestar would turn `"5"` into 5 and `"yes"` into
    True. Parsed as JSON first, so that bad JSON is a 400 as on every route."""
    try:
        data = msgspec.json.decode(raw)
    except msgspec.ValidationError:  # a number out of a float's range: read as infinity, which the model refuses
        data = json.loads(raw)  # by name (its text is valid JSON: msgspec has already refused NaN and the like)
    try:
        model.model_validate(data, strict=True, context={CLIENT_INPUT: True})
    except ValidationError as exc:
        return [(_dotted(tuple(error["loc"])), str(error["msg"])) for error in exc.errors(include_url=False)]
    return []


def _dotted(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as a field path; a map key at fault is named by itself (pydantic appends
    `[key]` to its location, which names no field of the body)."""
    return ".".join(str(part) for part in loc if part != "[key]") or "body"


def _name_keys(raw: bytes, body_type: Any, field: str, bad_key: bool = False) -> str:
    """Put the map key in place of msgspec's `[...]` (which it reports for a bad value inside a map): the first
    key of that map whose value (or, with `bad_key`, the key itself) does not fit the map's types. Without one
    found (a body too deep for Python's parser), the path up to that map: what follows it names no real field."""
    if "[...]" not in field:
        return field
    fallback = field.split("[...]", 1)[0] or "body"
    try:
        # Python's parser reads a number out of a float's range (1e999) as infinity, where msgspec refuses the body.
        data = json.loads(raw)
    except (RecursionError, ValueError):
        return fallback
    tokens = re.findall(r"\.?[^.\[]+|\[[^\]]*\]", field)
    out: list[str] = []
    value, kind = data, body_type
    for index, token in enumerate(tokens):
        value, kind, named = _step(value, kind, token, key_only=bad_key and index == len(tokens) - 1)
        if named is None:
            return fallback
        out.append(named)
    return "".join(out).lstrip(".") or "body"


def _step(value: Any, kind: Any, token: str, key_only: bool) -> tuple[Any, Any, str | None]:
    """One step of a path through the decoded body and its declared type: (value, type, how the step is named)."""
    kind = _concrete(kind, value)
    if token == "[...]":
        if not isinstance(value, dict) or get_origin(kind) is not dict:
            return value, kind, None
        key_type, value_type = get_args(kind)
        for key, item in value.items():
            if not _fits(key, key_type) or (not key_only and not _fits(item, value_type)):
                return item, value_type, f".{key}" if key else ".(empty key)"
        return value, kind, None
    if token.startswith("["):
        if not isinstance(value, list) or get_origin(kind) is not list:
            return value, kind, None
        index = int(token[1:-1])
        return (value[index] if index < len(value) else None), get_args(kind)[0], token
    name = token.lstrip(".")
    if isinstance(value, dict) and isinstance(kind, type) and issubclass(kind, msgspec.Struct):
        return value.get(name), get_type_hints(kind, include_extras=True).get(name, Any), f".{name}"
    return value, kind, None


def _concrete(kind: Any, value: Any) -> Any:
    """The declared type without `Annotated`, and of a union the member that has the value's shape."""
    while get_origin(kind) is Annotated:
        kind = get_args(kind)[0]
    if get_origin(kind) in (Union, UnionType):
        for member in get_args(kind):
            member = _concrete(member, value)
            if isinstance(value, list) and get_origin(member) is list:
                return member
            if isinstance(value, dict) and (get_origin(member) is dict or
                                            (isinstance(member, type) and issubclass(member, msgspec.Struct))):
                return member
    return kind


def _fits(value: Any, kind: Any) -> bool:
    if is_unusable_number(value):
        return False  # what JSON's text held was out of range, whatever the declared type
    try:
        msgspec.convert(value, kind, strict=True)
    except (msgspec.ValidationError, TypeError):
        return False
    return True
