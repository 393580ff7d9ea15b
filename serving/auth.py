"""API keys and roles: `channel` decides and reports outcomes, `analyst` reads, `admin` does everything."""

from __future__ import annotations

import hmac
from typing import Any

from litestar import Request
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException

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


async def authorize(request: Request[Any, Any, Any]) -> None:
    """Let through keys whose role grants the route's `opt={"role": ...}`; routes without one are public.

    Run by the app's `before_request`, ahead of the body check. (A Litestar guard would do the same, but
    Litestar copies the route handler for every guard call, which cost about 5% of the decide path.)
    """
    role = request.route_handler.opt.get("role")
    if role is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAuthorizedException("missing API key: send Authorization: Bearer <key>")
    keys: dict[str, str] = request.app.state.runtime.api_keys
    key_role = _role_for(keys, token.strip())
    if key_role is None:
        raise NotAuthorizedException("unknown API key")
    if role not in ROLE_GRANTS.get(key_role, set()):
        raise PermissionDeniedException(f"this key has the {key_role} role; the call needs the {role} role")
