"""RFC 9457 problem+json: every error the API returns is shaped here, in one place."""

from __future__ import annotations

import logging
import re
import sqlite3
from http import HTTPStatus
from typing import Any

from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    ValidationException,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from nba.catalog import DURATION_MEANS, DURATION_PATTERN
from nba.errors import (
    ActionNotFound,
    CatalogChanged,
    Conflict,
    CustomerNotFound,
    DecisionNotFound,
    InvalidInput,
    NBAError,
    PolicyNotFound,
    StoreUnavailable,
)
from nba.ids import ID_MEANS, ID_PATTERN, ID_REGEX, NAME_MEANS, NAME_PATTERN, NAME_REGEX
from serving.body import UNREADABLE
from serving.head import HeadNotAllowed

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"

_STATUS: list[tuple[type[NBAError], int, str]] = [
    (DecisionNotFound, 404, "not-found"),
    (CustomerNotFound, 404, "not-found"),
    (PolicyNotFound, 404, "not-found"),
    (Conflict, 409, "conflict"),
    (ActionNotFound, 422, "validation"),
    (InvalidInput, 422, "validation"),
    (StoreUnavailable, 503, "unavailable"),
    # The catalog kept changing under a decision, each attempt made again on the new one: try again shortly.
    (CatalogChanged, 503, "unavailable"),
]


# What the id, name and duration patterns allow, in words: validators quote the regex itself, which a client saw
# escaped twice over (by msgspec's repr, then by JSON).
_MEANINGS = {ID_REGEX: ID_MEANS, ID_PATTERN: ID_MEANS, NAME_REGEX: NAME_MEANS, NAME_PATTERN: NAME_MEANS,
             DURATION_PATTERN: DURATION_MEANS}
_QUOTED_PATTERN = re.compile(r"(?:Expected `str` matching regex|String should match pattern) '(?P<pattern>[^']*)'")


def _in_words(match: re.Match[str]) -> str:
    pattern = match.group("pattern")
    meaning = _MEANINGS.get(pattern) or _MEANINGS.get(pattern.replace("\\\\", "\\"))  # msgspec gives its repr
    return f"must be {meaning}" if meaning is not None else match.group(0)


def readable(message: str) -> str:
    """A validation message with each known pattern said in words: "must be 1 to 128 characters, each ..."."""
    return _QUOTED_PATTERN.sub(_in_words, message)


def problem(status: int, detail: str, kind: str | None = None, errors: list[dict[str, str]] | None = None,
            headers: dict[str, str] | None = None) -> Response[Any]:
    if errors is not None:
        errors = [{**error, "message": readable(error["message"])} for error in errors]
    body: dict[str, Any] = {
        "type": f"urn:nba:problem:{kind}" if kind else "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": readable(detail),
    }
    if errors is not None:
        body["errors"] = errors
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _names_itself(message: str, field: str) -> bool:
    """Whether a message already says what it is about ("property 'k' ...", "... field `channel`")."""
    return message.startswith(("property ", "context value ")) or f"`{field.rsplit('.', 1)[-1]}`" in message


def domain_error(_: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    assert isinstance(exc, NBAError)
    for kind, status, slug in _STATUS:
        if isinstance(exc, kind):
            if kind is ActionNotFound and exc.field is None:
                status, slug = 404, "not-found"
            errors = [{"field": exc.field, "message": exc.message}] if exc.field and status == 422 else None
            headers = {"Retry-After": "1"} if status == 503 else None
            detail = exc.message
            if errors and exc.field and not _names_itself(detail, exc.field):
                detail = f"{exc.field}: {detail}"  # the detail alone says which field, as Litestar's 422s do
            return problem(status, detail, slug, errors, headers)
    return problem(400, exc.message, "bad-request")


_MISSING = re.compile(r"missing required field `([^`]+)`")
_MISSING_PARAM = re.compile(r"Missing required \w+ parameter '([^']+)'")
_UNKNOWN = re.compile(r"unknown field `([^`]+)`")
_PATH = re.compile(r"at `\$([^`]*)`")


def _field(key: str, message: str) -> str:
    for pattern in (_MISSING, _UNKNOWN):
        match = pattern.search(message)
        if match:
            return match.group(1) if key in ("data", "") else f"{key}.{match.group(1)}"
    key = key.replace("[...]", "")
    return "body" if key in ("data", "") else key


def validation_error(_: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    assert isinstance(exc, ValidationException)
    errors = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict):
            message = str(item.get("message", "invalid"))
            param = _MISSING_PARAM.search(message) or _MISSING_PARAM.search(str(exc.detail))
            if param:
                errors.append({"field": param.group(1), "message": message})
                continue
            key = str(item.get("key", ""))
            errors.append({"field": key if item.get("final") else _field(key, message), "message": message})
    if not errors:
        param = _MISSING_PARAM.search(str(exc.detail))
        errors = [{"field": param.group(1) if param else "body", "message": str(exc.detail)}]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return problem(422, detail, "validation", errors)


def http_error(_: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    detail = str(exc.detail)
    if status == 400 and "malformed" not in detail.lower() and "Number out of range" in detail:
        match = _PATH.search(detail)
        path = match.group(1).replace("[...]", "").lstrip(".") if match else ""
        return problem(422, "a number is out of range", "validation",
                       [{"field": path or "body", "message": "number out of range"}])
    if status == 400:
        return problem(400, detail if detail == UNREADABLE else f"the body is not valid JSON: {detail}", "malformed")
    if status >= 500:  # Litestar's own (a client's input should never come to this): logged like any other
        log.error("%d from the web framework: %s", status, detail, exc_info=exc)
    kinds = {401: "unauthorized", 403: "forbidden", 404: "not-found", 405: "method-not-allowed",
             413: "too-large", 415: "unsupported-media-type"}
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, NotAuthorizedException) else None
    if isinstance(exc, NotFoundException | PermissionDeniedException):
        headers = None
    if isinstance(exc, MethodNotAllowedException) and exc.headers:  # RFC 9110: a 405 lists the allowed methods
        allowed = [method.strip() for method in exc.headers.get("allow", "").split(",") if method.strip()]
        head = "GET" in allowed and "HEAD" not in allowed and not isinstance(exc, HeadNotAllowed)
        headers = {"Allow": ", ".join(allowed + (["HEAD"] if head else []))}
    return problem(status, detail, kinds.get(status), headers=headers)


def too_deep(_: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    return problem(400, "the body is not valid JSON: nested too deeply", "malformed")


def store_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """A database error that reached the route without the store turning it into `StoreUnavailable`: still the
    store failing, not the client, so a 503 (logged with its traceback: the store should have caught it)."""
    log.error("store error outside the store's handling", exc_info=exc)
    return domain_error(request, StoreUnavailable(f"the store failed: {exc.__class__.__name__}"))


def _driver_errors() -> tuple[type[Exception], ...]:
    try:
        import psycopg
    except ImportError:
        return (sqlite3.Error,)
    return (sqlite3.Error, psycopg.Error)


def internal_error(_: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unhandled error", exc_info=exc)
    return problem(500, "an internal error occurred; it has been logged", "internal")


HANDLERS: dict[type[Exception], Any] = {
    NBAError: domain_error,
    ValidationException: validation_error,
    HTTPException: http_error,
    RecursionError: too_deep,
    # The database failing (its driver's errors, wrapped or not; no pooled connection in time). Other errors of
    # SQLAlchemy's are bugs of ours, answered 500 like any other.
    DBAPIError: store_error,
    PoolTimeout: store_error,
    **{error: store_error for error in _driver_errors()},
    Exception: internal_error,
}
