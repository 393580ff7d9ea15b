"""HEAD on the GET routes that change nothing (RFC 9110 9.3.2): answered as the GET would be, without the body.

Load balancers and uptime checks probe `/health` with HEAD; Litestar answers HEAD only on routes that declare it
(and refuses a HEAD handler that returns a body), so the app runs a HEAD request as a GET and drops the body. The
headers, `content-length` included, are the GET's, as the RFC asks. A GET that makes something (`/next` decides
and logs a decision) is marked `opt={"head": False}`: a HEAD there is a 405, since it would spend the customer's
caps and budgets on a decision nobody sees.
"""

from __future__ import annotations

from typing import Any

from litestar import Litestar, Request
from litestar.exceptions import MethodNotAllowedException

AS_HEAD = "nba.head"  # set in the scope of a HEAD request run as a GET


class HeadNotAllowed(MethodNotAllowedException):
    """HEAD on a GET route that has effects."""


class HeadAsGet(Litestar):
    """The Litestar app, answering HEAD on GET routes."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await super().__call__(scope, receive, send)
            return

        async def headers_only(message: Any) -> None:
            if message["type"] != "http.response.body":
                await send(message)
            elif not message.get("more_body", False):
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        as_get: Any = {**scope, "method": "GET", AS_HEAD: True}
        await super().__call__(as_get, receive, headers_only)


def refuse_head_with_effects(request: Request[Any, Any, Any]) -> None:
    """A 405 for a HEAD request on a GET route marked `opt={"head": False}`."""
    if request.scope.get(AS_HEAD) and request.route_handler.opt.get("head") is False:
        raise HeadNotAllowed("HEAD is not answered here: the GET makes and logs a decision",
                             headers={"allow": "GET, OPTIONS"})
