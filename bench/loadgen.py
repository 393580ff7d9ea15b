"""An open-loop (fixed arrival rate) HTTP load generator, wrk2-style, run as its own process.

Request i is due at `t0 + i / rate` whatever happened to earlier requests; its latency is measured from that
due time, so a server stall shows up as latency for every request that should have been sent during it (no
coordinated omission). Requests go over `--connections` keep-alive HTTP/1.1 connections; when all are busy, due
requests wait in a queue and that wait counts. The time from the actual send is reported separately.
`--warmup S` first sends S seconds of requests at the same rate and leaves them out of every figure, as wrk's
warm-up run does for the closed-loop measurement: the first requests after an idle spell meet cold caches and
fresh connections, which is not the steady state the rate is meant to measure.

`--rate 0` runs closed-loop instead (each connection sends its next request when the last one is answered), with
`--capture FILE` writing the decision ids it got back, one per line.

Bounded: at most `--rate * --duration` requests (or `--requests`), and the run is abandoned `--grace` seconds
after the last due time. Only 127.0.0.1 is targeted.

    python -m bench.loadgen --port 8000 --token KEY --channel web20 --rate 2000 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections.abc import Callable
from typing import cast

HOST = "127.0.0.1"


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._complete()

    def _complete(self) -> None:
        if self.waiter is None or self.waiter.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        status = int(head[9:12])
        length = None
        for line in head.split(b"\r\n")[1:]:
            if line.startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
                break
        if length is None:  # chunked: wait for the terminating chunk
            tail = self.buffer.find(b"0\r\n\r\n", end + 4)
            if tail < 0:
                return
            total = tail + 5
            body = bytes(self.buffer[end + 4:tail])
        else:
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            body = bytes(self.buffer[end + 4:total])
        del self.buffer[:total]
        self.waiter.set_result((status, body))

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        if self.closed:
            raise ConnectionError("connection closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter


def decide_request(port: int, token: str, channel: str, customers: int, path: str,
                   id_format: str = "c-{}") -> Callable[[int], bytes]:
    rng = random.Random(7)
    devices = ["mobile", "desktop", "tablet"]
    auth = f"Authorization: Bearer {token}\r\n" if token else ""

    def build(_: int) -> bytes:
        customer = id_format.format(rng.randrange(customers))
        body = (f'{{"customer_id":"{customer}","channel":"{channel}","context":{{"device":'
                f'"{devices[rng.randrange(3)]}","page":"checkout","cart_value":{rng.uniform(0, 200):.2f},'
                f'"tags":["returning"]}}}}').encode()
        return (f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n{auth}Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    return build


def _summary(latencies: list[float], service: list[float], statuses: dict[int, int], errors: int,
             elapsed: float, sent: int, due: int) -> dict[str, object]:
    def pct(values: list[float], q: float) -> float:
        if not values:
            return float("nan")
        return round(values[min(len(values) - 1, int(q / 100 * len(values)))] * 1000, 3)

    latencies.sort()
    service.sort()
    return {
        "due": due,
        "sent": sent,
        "completed": len(latencies),
        "elapsed_s": round(elapsed, 3),
        "achieved_rps": round(len(latencies) / elapsed, 1) if elapsed > 0 else 0.0,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": errors,
        "p50_ms": pct(latencies, 50), "p90_ms": pct(latencies, 90), "p99_ms": pct(latencies, 99),
        "p999_ms": pct(latencies, 99.9), "max_ms": round(latencies[-1] * 1000, 3) if latencies else None,
        "service_p50_ms": pct(service, 50), "service_p99_ms": pct(service, 99),
    }


async def run(args: argparse.Namespace) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    build = decide_request(args.port, args.token, args.channel, args.customers, args.path, args.id_format)
    connections: list[Connection] = []
    for _ in range(args.connections):
        _, protocol = await loop.create_connection(Connection, HOST, args.port)
        connections.append(protocol)
    latencies: list[float] = []
    service: list[float] = []
    statuses: dict[int, int] = {}
    captured: list[str] = []
    timeline: list[tuple[float, float]] = []  # (due time from start, latency), for --timeline
    errors = 0
    sent = 0
    open_loop = args.rate > 0
    warm = int(args.rate * args.warmup) if open_loop else 0  # the first `warm` requests are not measured
    total = warm + int(args.rate * args.duration) if open_loop else args.requests
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    now = time.perf_counter
    start = now() + 0.05
    measured_from = start + warm / args.rate if open_loop else start
    deadline = measured_from + args.duration + args.grace

    async def worker(conn: Connection) -> None:
        nonlocal errors, sent
        while True:
            if open_loop:
                item = await queue.get()
                if item is None:
                    return
                index, due = item
            else:
                if sent >= total or now() >= start + args.duration:
                    return
                index, due = sent, now()
            sent += 1
            raw = build(index)
            counted = index >= warm
            began = now()
            try:
                status, body = await asyncio.wait_for(conn.request(raw), timeout=max(0.1, deadline - began))
            except (TimeoutError, ConnectionError, OSError):
                errors += 1
                return
            finished = now()
            if not counted:
                continue
            latencies.append(finished - due)
            if args.timeline:
                timeline.append((due - measured_from, finished - due))
            service.append(finished - began)
            statuses[status] = statuses.get(status, 0) + 1
            if args.capture and status == 200:
                marker = body.find(b'"decision_id":"')
                if marker >= 0:
                    tail = body.index(b'"', marker + 15)
                    captured.append(body[marker + 15:tail].decode())

    workers = [asyncio.create_task(worker(c)) for c in connections]
    if open_loop:
        interval = 1.0 / args.rate
        index = 0
        while index < total and now() < deadline:
            current = now()
            while index < total and start + index * interval <= current:
                queue.put_nowait((index, start + index * interval))
                index += 1
            if index < total:
                await asyncio.sleep(max(0.0, start + index * interval - now()))
        for _ in workers:
            queue.put_nowait(None)
    try:
        await asyncio.wait_for(asyncio.gather(*workers), timeout=max(0.1, deadline + 1 - now()))
    except TimeoutError:
        for task in workers:
            task.cancel()
    elapsed = max(now(), measured_from) - measured_from
    for conn in connections:
        if conn.transport is not None:
            conn.transport.close()
    if args.capture:
        with open(args.capture, "w") as handle:
            handle.write("\n".join(captured) + ("\n" if captured else ""))
    if args.timeline:
        with open(args.timeline, "w") as handle:
            handle.writelines(f"{due:.6f} {latency:.6f}\n" for due, latency in sorted(timeline))
    result = _summary(latencies, service, statuses, errors, elapsed, max(0, sent - warm), total - warm)
    result.update({"mode": "open" if open_loop else "closed", "target_rps": args.rate,
                   "connections": args.connections, "duration_s": args.duration, "captured": len(captured),
                   "warmup_s": args.warmup if open_loop else 0.0, "warmup_requests": warm})
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", default="")
    parser.add_argument("--path", default="/v1/decide")
    parser.add_argument("--channel", default="web20")
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--id-format", default="c-{}", help="customer id from a random index in [0, customers)")
    parser.add_argument("--rate", type=float, default=0.0, help="requests per second; 0 for closed loop")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=0.0,
                        help="open loop: seconds of requests at the rate sent first and not measured")
    parser.add_argument("--requests", type=int, default=100_000, help="closed loop: stop after this many")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("--capture", default=None)
    parser.add_argument("--timeline", default=None, help="write 'due-time latency' (seconds) per request to FILE")
    args = parser.parse_args(argv)
    if args.duration + args.warmup > 120 or args.warmup < 0 or args.rate > 100_000 or args.requests > 2_000_000:
        parser.error("bounded runs only: duration <= 120 s, rate <= 100,000/s, requests <= 2,000,000")
    try:
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(run(args))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
