"""The HTTP ceiling: a bare Litestar route that parses a decide-shaped body into a msgspec Struct and returns a
constant, served exactly like the service (granian, ASGI, same worker count, no access log).

Run as `python -m bench.ceiling` with NBA_PORT and NBA_WORKERS set; the bench starts and stops it.
"""

from __future__ import annotations

import os
from typing import Annotated

import msgspec
from litestar import Litestar, get, post

Scalar = str | float | int | bool | list[str]


class CeilingBody(msgspec.Struct, forbid_unknown_fields=True):
    """The same fields as the decide body (serving/routes/decide.py `DecideBody`)."""

    customer_id: str
    channel: str
    context: dict[str, Scalar] = msgspec.field(default_factory=dict)
    candidates: list[str] | None = None
    slots: Annotated[int, msgspec.Meta(ge=1, le=10)] = 1
    request_id: str | None = None
    defer_activation: bool = False


ANSWER = {"decision_id": "d-constant", "actions": [{"slot": 0, "action_id": "a-000", "probability": 1.0}]}


@post("/v1/decide", status_code=200)
async def decide(data: CeilingBody) -> dict[str, object]:
    return ANSWER


@get("/ready")
async def ready() -> str:
    return "ok"


app = Litestar(route_handlers=[decide, ready], debug=False, openapi_config=None)


def main() -> None:
    from granian import Granian
    from granian.constants import Interfaces

    Granian(
        "bench.ceiling:app",
        address="127.0.0.1",
        port=int(os.environ["NBA_PORT"]),
        interface=Interfaces.ASGI,
        workers=int(os.environ.get("NBA_WORKERS", "1")),
        log_access=False,
        respawn_failed_workers=True,
    ).serve()


if __name__ == "__main__":
    main()
