"""What only a real HTTP server lets a client send: broken chunked framing, and HEAD as load balancers send it."""

from __future__ import annotations

import json
import socket
from typing import Any

import httpx
import pytest

from serving.body import UNREADABLE
from tests.conftest import ADMIN, CHANNEL

pytestmark = pytest.mark.e2e
CATALOG = {
    "actions": {"a": {"channels": ["web"]}},
    "policies": {"p": {"channels": ["web"], "reward": {"window": "1h", "aggregation": "first"}}},
}


def _exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes on a new connection (which the request closes); the status, headers and body answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def _chunked(method: str, path: str, auth: dict[str, str], chunks: bytes) -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: nba\r\nAuthorization: {auth['Authorization']}\r\nConnection: close\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode() + chunks


def test_a_body_with_broken_chunked_framing_is_a_400_on_every_route(start_server: Any) -> None:
    """The server ends such a body early; Litestar took that for a client gone and answered 500."""
    server = start_server(CATALOG)
    port = int(server.url.rsplit(":", 1)[1])
    broken = [b"zz\r\nabc\r\n0\r\n\r\n", b"-5\r\nabc\r\n0\r\n\r\n", b"5\r\n{\"cus\r\nzz\r\n"]  # the 2nd chunk's
    for chunks in broken:
        for method, path, auth in [("POST", "/v1/decide", CHANNEL), ("POST", "/v1/events", CHANNEL),
                                   ("POST", "/v1/decisions/d-x/reward", CHANNEL), ("PUT", "/v1/actions/b", ADMIN)]:
            status, headers, body = _exchange(port, _chunked(method, path, auth, chunks))
            assert (status, headers["content-type"]) == (400, "application/problem+json"), (path, chunks, body)
            assert json.loads(body)["detail"] == UNREADABLE, (path, chunks)
    answered = httpx.post(f"{server.url}/v1/decide", headers=CHANNEL, json={"customer_id": "c-1", "channel": "web"})
    assert answered.status_code == 200
    assert httpx.get(f"{server.url}/v1/actions/b", headers=ADMIN).status_code == 404  # nothing was stored
    assert "Traceback" not in server.log_path.read_text()


def test_head_on_health_over_http(start_server: Any) -> None:
    server = start_server(CATALOG)
    port = int(server.url.rsplit(":", 1)[1])
    status, headers, body = _exchange(port, b"HEAD /health HTTP/1.1\r\nHost: nba\r\nConnection: close\r\n\r\n")
    got = httpx.get(f"{server.url}/health")
    assert (status, body) == (200, b"")
    assert headers["content-type"] == got.headers["content-type"]
    assert headers["content-length"] == str(len(got.content))
