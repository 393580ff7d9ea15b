"""HEAD on every GET route (RFC 9110 9.3.2): answered as the GET would be, without the body.

Load balancers and uptime checks probe `/health` with HEAD; Litestar answers HEAD only on routes that declare it
(and refuses a HEAD handler that returns a body), so the app runs a HEAD request as a GET and drops the body. The
headers, `content-length` included, are the GET's, as the RFC asks.
"""

from __future__ import annotations

from typing import Any

from litestar import Litestar
from litestar.types import Message, Receive, Scope, Send


class HeadAsGet(Litestar):
    """The Litestar app, answering HEAD on GET routes."""

    async def __call__(self, scope: Any, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await super().__call__(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] != "http.response.body":
                await send(message)
            elif not message.get("more_body", False):
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        as_get: Scope = {**scope, "method": "GET"}
        await super().__call__(as_get, receive, headers_only)
