"""API keys and roles: `channel` decides and reports outcomes, `analyst` reads, `admin` does everything."""

from __future__ import annotations

import hmac
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

ROLE_GRANTS = {
    "admin": {"admin", "analyst", "channel"},
    "analyst": {"analyst"},
    "channel": {"channel"},
}


def _role_for(keys: dict[str, str], presented: str) -> str | None:
    role = None
    for key, key_role in keys.items():
        if hmac.compare_digest(key.encode(), presented.encode()):
            role = key_role
    return role


def require(role: str) -> Any:
    """A guard that lets through keys whose role grants `role`."""

    # Async, so Litestar calls it in the event loop: a sync guard would be sent to the thread pool per request.
    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        header = connection.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise NotAuthorizedException("missing API key: send Authorization: Bearer <key>")
        keys: dict[str, str] = connection.app.state.runtime.api_keys
        key_role = _role_for(keys, token.strip())
        if key_role is None:
            raise NotAuthorizedException("unknown API key")
        if role not in ROLE_GRANTS.get(key_role, set()):
            raise PermissionDeniedException(f"this key has the {key_role} role; the call needs the {role} role")

    guard.__name__ = f"require_{role}"
    return guard
