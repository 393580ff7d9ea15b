"""Shared pieces of the benchmark suite: servers, the bench catalog, wrk, process memory, results files.

Everything here talks to 127.0.0.1 only, and every load loop is bounded in count and in time.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import yaml

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
HOST = "127.0.0.1"

CHANNEL_KEY = "bench-channel"
ADMIN_KEY = "bench-admin"
API_KEYS = f"{CHANNEL_KEY}:channel,{ADMIN_KEY}:admin"
CHANNEL_AUTH = {"Authorization": f"Bearer {CHANNEL_KEY}"}

# One channel per candidate count: the policy serving it sees exactly that many catalog actions.
CHANNELS = {20: "web20", 200: "web200"}
# The 20 actions again, under a policy whose reward windows last 1 s: decisions close as fast as they are made,
# so the sweep, the learner and its snapshots run at the decision rate, as they do in production once windows
# of any length start to close.
STEADY_CHANNEL = "web20s"
CATEGORIES = ["discount", "shipping", "loyalty", "credit", "service"]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import granian
    import litestar

    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "granian": granian.__version__,
        "litestar": litestar.__version__ if hasattr(litestar, "__version__") else _dist_version("litestar"),
        "wrk": wrk_version(),
        "sqlite_synchronous": sqlite_synchronous(),
    }


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def sqlite_synchronous() -> str:
    return os.environ.get("NBA_SQLITE_SYNCHRONOUS", "NORMAL")


def write_result(name: str, data: Mapping[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


def read_result(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


# -- the bench catalog --------------------------------------------------------------------------------------
def bench_catalog() -> dict[str, Any]:
    """200 actions: the first 20 on both channels, the rest on `web200` only; a realistic mix of constraints.

    Every 5th action has a CEL eligibility rule, every 4th a per-customer cap, every 10th a global budget,
    every 7th a suppression. Limits are high enough that they rarely bind: the bench measures the cost of
    checking them, not of excluding. Both policies use the project's default learner.
    """
    actions: dict[str, Any] = {}
    for i in range(200):
        action: dict[str, Any] = {
            "channels": [CHANNELS[20], CHANNELS[200], STEADY_CHANNEL] if i < 20 else [CHANNELS[200]],
            "attributes": {"category": CATEGORIES[i % len(CATEGORIES)], "value": float(i % 17),
                           "cost": round(0.5 + (i % 7) * 0.75, 2)},
        }
        if i % 5 == 0:
            action["eligibility"] = ("!has(context.cart_value) || context.cart_value >= 1.0" if i % 2 == 0
                                     else "!has(customer.age) || customer.age >= 18")
        if i % 4 == 0:
            action["caps"] = [{"per": "customer", "limit": 1000, "window": "7d"}]
        if i % 10 == 0:
            action["budget"] = {"limit": 1_000_000_000, "window": "1d"}
        if i % 7 == 0:
            action["suppressed_by"] = [{"event": "complaint_filed", "for": "14d"}]
        actions[f"a-{i:03d}"] = action
    return {
        "event_types": {
            "page_view": {"properties": {"page": "string"}},
            "purchase": {"properties": {"amount": "number", "category": "string"}, "required": ["amount"]},
            "complaint_filed": {"properties": {"topic": "string"}},
        },
        "actions": actions,
        "policies": {
            "p20": {"channels": [CHANNELS[20]], "reward": {"window": "1h", "default": 0.0, "aggregation": "sum"}},
            "p200": {"channels": [CHANNELS[200]], "reward": {"window": "1h", "default": 0.0, "aggregation": "sum"}},
            "p20s": {"channels": [STEADY_CHANNEL], "reward": {"window": "1s", "default": 0.0, "aggregation": "sum"}},
        },
    }


def write_catalog(directory: Path) -> Path:
    path = directory / "catalog.yaml"
    path.write_text(yaml.safe_dump(bench_catalog()))
    return path


def decide_body(customer: int, channel: str, rng: random.Random) -> dict[str, Any]:
    """The decide request every HTTP benchmark sends (the same shape the wrk script builds)."""
    return {
        "customer_id": f"c-{customer}",
        "channel": channel,
        "context": {"device": rng.choice(["mobile", "desktop", "tablet"]), "page": "checkout",
                    "cart_value": round(rng.uniform(0, 200), 2), "tags": ["returning"]},
    }


def profile_events(prefix: str, start: int, count: int, rng: random.Random) -> list[dict[str, Any]]:
    """One `profile_updated` event per customer: what earlier events made of a customer."""
    return [
        {"customer_id": f"{prefix}{i}", "type": "profile_updated", "event_id": f"pe-{prefix}{i}",
         "properties": {"age": rng.randint(16, 80), "segment": f"s{rng.randint(0, 9)}",
                        "loyalty_member": rng.random() < 0.3}}
        for i in range(start, start + count)
    ]


# -- processes ------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _children(pid: int) -> list[int]:
    """Direct and indirect children of `pid`, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents[int(entry.name)] = ppid
    found: list[int] = []
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        for child, parent in parents.items():
            if parent == current:
                found.append(child)
                frontier.append(child)
    return sorted(found)


def process_memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) in KiB of one process."""
    out = {"rss_kb": 0, "peak_rss_kb": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss_kb"] = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                out["peak_rss_kb"] = int(line.split()[1])
    except OSError:
        pass
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


@dataclass
class Server:
    """A granian server subprocess in its own session, so a stop takes every worker with it."""

    argv: list[str]
    env: dict[str, str]
    log_path: Path
    workers: int
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, ready_path: str, timeout: float = 90.0) -> Server:
        env = {**os.environ, **self.env, "NBA_PORT": str(self.port), "NBA_WORKERS": str(self.workers),
               "PYTHONPATH": str(ROOT)}
        with open(self.log_path, "ab") as handle:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + ready_path, timeout=1.0).status_code == 200:
                    if len(self.worker_pids()) >= self.workers:
                        return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)  # readiness polling; returns as soon as the server answers
        self.stop()
        raise RuntimeError(f"server did not become ready: {self.log_path.read_text()[-3000:]}")

    def worker_pids(self) -> list[int]:
        """Granian's worker processes (the children that run the app)."""
        if self.proc is None:
            return []
        return [pid for pid in _children(self.proc.pid)
                if ("python" in cmdline(pid) and "training.cli learn" not in cmdline(pid)) or cmdline(pid) == ""]

    def memory(self) -> dict[str, Any]:
        assert self.proc is not None
        main = process_memory(self.proc.pid)
        workers = {str(pid): process_memory(pid) for pid in self.worker_pids()}
        return {
            "main": main,
            "workers": workers,
            "total_rss_kb": main["rss_kb"] + sum(w["rss_kb"] for w in workers.values()),
        }

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=20)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def nba_server(directory: Path, database: Path, catalog: Path, workers: int, name: str,
               extra_env: Mapping[str, str] | None = None) -> Server:
    """The production server (`python -m training.cli serve`: granian, ASGI) on a bench database."""
    env = {
        "NBA_DATABASE_URL": f"sqlite:///{database}",
        "NBA_CATALOG": str(catalog),
        "NBA_API_KEYS": API_KEYS,
        "NBA_LOG_LEVEL": "WARNING",
        "NBA_SQLITE_SYNCHRONOUS": sqlite_synchronous(),
        "NBA_MLFLOW_TRACKING_URI": f"sqlite:///{directory / 'mlflow.db'}",
        **(extra_env or {}),
    }
    server = Server([sys.executable, "-m", "training.cli", "serve"], env, directory / f"{name}.log", workers)
    return server.start("/health")


def ceiling_server(directory: Path, workers: int) -> Server:
    """The bare Litestar route under the same granian setup (see `bench/ceiling.py`)."""
    server = Server([sys.executable, "-m", "bench.ceiling"], {}, directory / f"ceiling-w{workers}.log", workers)
    return server.start("/ready")


# -- loading a server with data -------------------------------------------------------------------------------
def post_events(url: str, events: Sequence[dict[str, Any]], batch: int = 1000, timeout: float = 120.0) -> int:
    """Send events in batches; returns how many the server accepted."""
    accepted = 0
    encoder = msgspec.json.Encoder()
    with httpx.Client(base_url=url, headers={**CHANNEL_AUTH, "Content-Type": "application/json"},
                      timeout=timeout) as client:
        for start in range(0, len(events), batch):
            response = client.post("/v1/events", content=encoder.encode(list(events[start:start + batch])))
            if response.status_code != 202:
                raise RuntimeError(f"events rejected: {response.status_code} {response.text[:500]}")
            accepted += len(response.json())
    return accepted


# -- who used the CPU during a measurement ------------------------------------------------------------------------
def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) clock ticks over all CPUs since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def _stat_ticks(stat_path: str) -> tuple[int, int]:
    """(user, system) clock ticks from a /proc stat file (0, 0 once the process or thread has gone)."""
    try:
        fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
        return int(fields[11]), int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0, 0


def _loop_thread_ticks(pid: int) -> tuple[int, int]:
    """(user, system) clock ticks of a worker's main thread, the one that runs its event loop."""
    return _stat_ticks(f"/proc/{pid}/task/{pid}/stat")


def _process_ticks(pid: int) -> int:
    return sum(_stat_ticks(f"/proc/{pid}/stat"))


class CpuWatch:
    """CPU used during a measurement, in cores: the whole machine, the server, the load generators, the rest.

    `other_cores` is what processes outside the bench used (another test run on the same machine, say); runs
    with much of it are not comparable and the summary says so.
    """

    def __init__(self, server: Server | None) -> None:
        self.server = server

    def _server_ticks(self) -> int:
        if self.server is None or self.server.proc is None:
            return 0
        # Every process of the server: its workers and its learner process too.
        return sum(_process_ticks(p) for p in [self.server.proc.pid, *_children(self.server.proc.pid)])

    def _loop_ticks(self) -> dict[int, tuple[int, int]]:
        if self.server is None or self.server.proc is None:
            return {}
        return {pid: _loop_thread_ticks(pid) for pid in self.server.worker_pids()}

    def __enter__(self) -> CpuWatch:
        import resource

        self._t0 = time.monotonic()
        self._machine0 = _machine_jiffies()
        self._server0 = self._server_ticks()
        self._loops0 = self._loop_ticks()
        self._children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._self0 = resource.getrusage(resource.RUSAGE_SELF)
        return self

    def __exit__(self, *exc: object) -> None:
        import resource

        elapsed = max(1e-6, time.monotonic() - self._t0)
        tick = os.sysconf("SC_CLK_TCK")
        busy1, _ = _machine_jiffies()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        me = resource.getrusage(resource.RUSAGE_SELF)
        machine_s = (busy1 - self._machine0[0]) / tick
        server_s = (self._server_ticks() - self._server0) / tick
        loadgen_s = (children.ru_utime + children.ru_stime - self._children0.ru_utime - self._children0.ru_stime
                     + me.ru_utime + me.ru_stime - self._self0.ru_utime - self._self0.ru_stime)
        # The event loop runs every request's Python work: how busy the busiest worker's loop thread was (a
        # share of one core; queueing delay grows steeply as it nears 1) and how much of that was system time.
        loops1 = self._loop_ticks()
        spent = {pid: (user - self._loops0[pid][0], system - self._loops0[pid][1])
                 for pid, (user, system) in loops1.items() if pid in self._loops0}
        busiest = max(spent.values(), key=sum, default=(0, 0))
        self.result = {
            "busiest_event_loop_busy": round(sum(busiest) / tick / elapsed, 3),
            "busiest_event_loop_system_share": round(busiest[1] / max(1, sum(busiest)), 3),
            "machine_busy_cores": round(machine_s / elapsed, 2),
            "server_cores": round(server_s / elapsed, 2),
            "load_generator_cores": round(loadgen_s / elapsed, 2),
            "other_cores": round(max(0.0, machine_s - server_s - loadgen_s) / elapsed, 2),
            "cpus": os.cpu_count(),
        }


def wait_for_quiet(max_wait: float = 30.0, busy_limit: float = 0.3) -> dict[str, float]:
    """Before a measurement: wait (at most `max_wait` s) until the machine's busy CPU over 1 s, with the bench's
    servers idle, is below `busy_limit` cores. Another test run on the same machine would skew every figure."""
    started = time.monotonic()
    while True:
        busy0, _ = _machine_jiffies()
        time.sleep(1.0)  # a one-second CPU sample, not a wait on any result
        busy = (_machine_jiffies()[0] - busy0) / os.sysconf("SC_CLK_TCK")
        waited = time.monotonic() - started
        if busy < busy_limit or waited >= max_wait:
            if busy >= busy_limit:
                log(f"  WARNING: the machine stayed busy ({busy:.2f} cores used by others) for {waited:.0f} s")
            return {"idle_busy_cores": round(busy, 2), "waited_s": round(waited, 1)}


# -- wrk --------------------------------------------------------------------------------------------------------
def wrk_path() -> str | None:
    return shutil.which("wrk")


def wrk_version() -> str | None:
    path = wrk_path()
    if path is None:
        return None
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    return (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else None


def require_wrk() -> str:
    path = wrk_path()
    if path is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk (the HTTP benchmarks need it)")
    return path


def run_wrk(url: str, script: Path, env: Mapping[str, str], seconds: float, connections: int = 32,
            threads: int = 1, timeout: float = 5.0, server: Server | None = None) -> dict[str, Any]:
    """Run wrk with a Lua script whose `done` prints one `BENCHJSON {...}` line; return that summary."""
    wrk = require_wrk()
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, int(round(seconds)))}s", "--timeout",
            f"{int(timeout)}s", "-s", str(script), url]
    with CpuWatch(server) as watch:
        out = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **env},
                             timeout=seconds + timeout + 60)
    for line in out.stdout.splitlines():
        if line.startswith("BENCHJSON "):
            summary: dict[str, Any] = json.loads(line[len("BENCHJSON "):])
            summary["connections"] = connections
            summary["threads"] = threads
            summary["cpu"] = watch.result
            return summary
    raise RuntimeError(f"wrk gave no summary (rc {out.returncode}): {out.stdout[-2000:]} {out.stderr[-2000:]}")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, int(round(q / 100 * (len(sorted_values) - 1)))))
    return float(sorted_values[index])
