"""Strict request bodies: JSON is decoded against the route's body type before the handler runs.

Litestar converts bodies leniently (a string "2" becomes the integer 2); the contract wants a wrong type to be
a 422 naming the field, and a body that is not JSON (bad UTF-8, NaN, too deep) to be a 400. Routes name their
body type in `opt={"body": Type}`.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar import Request
from litestar.exceptions import ClientException, ValidationException

_PATH = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_NAMED = re.compile(r"(?:missing required|unknown) field `([^`]+)`")


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


async def check_body(request: Request[Any, Any, Any]) -> None:
    body_type = request.route_handler.opt.get("body")
    if body_type is None:
        return
    raw = await request.body()
    try:
        msgspec.json.decode(raw, type=body_type, strict=True)
    except msgspec.ValidationError as exc:
        message = str(exc)
        if message.startswith("Number out of range"):
            field, _ = error_field(message)
            raise ValidationException("a number is out of range",
                                      extra=[{"key": field, "message": "number out of range"}]) from exc
        field, text = error_field(message)
        raise ValidationException(text, extra=[{"key": field, "message": text}]) from exc
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError, ValueError) as exc:
        detail = str(exc) or exc.__class__.__name__
        if not raw.strip():
            detail = "the body is empty"
        if not detail.startswith("JSON is malformed"):
            detail = f"JSON is malformed: {detail}"
        raise ClientException(detail) from exc
