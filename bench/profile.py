"""Profile the decide path with py-spy for ~20 s under wrk load; write the top functions.

py-spy samples the server's worker process (all threads, idle ones left out, so samples follow CPU and
blocking I/O, not threads waiting for the GIL or a commit). Collapsed stacks are summarised by function:
self time (the frame on top of the stack) and inclusive time (anywhere on the stack, once per sample).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import BENCH, CHANNEL_KEY, CHANNELS, RESULTS, log, nba_server, run_wrk, write_catalog
from bench.http_decide import CONNECTIONS, seed_customers, wrk_env

# Leaf frames where a thread waits rather than works (py-spy does not always see these threads as idle): a handler
# thread waiting for its group commit, idle pool threads, the event loop's poll. Counted apart, not as hot spots.
WAITING = {
    "threading.py:Condition.wait", "threading.py:Event.wait", "threading.py:Thread.join", "queue.py:Queue.get",
    "selectors.py:EpollSelector.select", "concurrent/futures/thread.py:_worker",
}
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
ROOT_PREFIXES = ("nba/", "bandits/", "features/", "serving/", "training/", "bench/")


def py_spy() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


def _function(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = match.group("file")
    for marker in ("site-packages/", "lib/python3.11/", "lib/python3.12/", "lib/python3.13/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{match.group('func')}"


def summarise(collapsed: str, top: int = 30) -> dict[str, Any]:
    """Self and inclusive sample counts per function from py-spy's raw (collapsed) output."""
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    waiting: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        functions = [_function(f) for f in frames]
        if functions[-1] in WAITING:
            waiting[f"{_thread_kind(functions)}: {functions[-1]}"] += count
            continue
        total += count
        threads[_thread_kind(functions)] += count
        self_counts[functions[-1]] += count
        for name in set(functions):
            inclusive[name] += count
    return {"samples": total, "self": self_counts.most_common(top), "inclusive": inclusive.most_common(top * 3),
            "threads": threads.most_common(), "waiting": waiting.most_common(),
            "waiting_samples": sum(waiting.values())}


def _thread_kind(functions: list[str]) -> str:
    text = ";".join(functions)
    if "WriteBatcher._run" in text:
        return "group-commit writer thread"
    if "OnlineLearner._run" in text:
        return "online learner thread"
    if "Runtime._maintain" in text:
        return "maintenance thread"
    if "serving/routes/" in text or "concurrent/futures/thread.py:_worker" in text:
        return "request threads (sync handlers in the thread pool)"
    return "event loop / other"


# Entry points and pass-through wrappers: on the stack of nearly every sample, they say nothing about where to cut.
WRAPPERS = {
    "serving/routes/decide.py:decide", "serving/routes/decide.py:_decide", "nba/decide.py:DecisionEngine.decide",
    "nba/decide.py:DecisionEngine._decide", "nba/store/store.py:Store.read", "nba/store/store.py:Store.write",
    "nba/store/batcher.py:WriteBatcher._run", "nba/store/batcher.py:WriteBatcher.submit",
    "serving/app.py:create_app", "training/cli.py:main", "training/cli.py:_serve", "training/cli.py:<module>",
    "training/online.py:OnlineLearner._run", "training/cli.py:serve_until_stopped", "training/cli.py:_serve_again",
    "serving/head.py:HeadAsGet.__call__",  # granian forks its workers inside these; every request runs inside this
}


def project_hotspots(summary: dict[str, Any], top: int = 10) -> list[tuple[str, int]]:
    """The project's own functions with the most inclusive time, leaving out entry points and wrappers."""
    own = [(name, n) for name, n in summary["inclusive"]
           if name.startswith(ROOT_PREFIXES) and name not in WRAPPERS and not name.endswith("<locals>.<lambda>")]
    return own[:top]


def rerender() -> dict[str, Any]:
    """Rewrite profile_decide.txt and the top lists in profile.json from the saved stacks (after a change here)."""
    result = json.loads((RESULTS / "profile.json").read_text())
    summary = summarise((RESULTS / "profile_decide.collapsed.txt").read_text())
    gil_path = RESULTS / "profile_decide_gil.collapsed.txt"
    gil = summarise(gil_path.read_text()) if gil_path.exists() else None
    if gil is not None:
        gil["held_share"] = result.get("gil", {}).get("held_share", 0.0)
    (RESULTS / "profile_decide.txt").write_text(render(summary, result, gil))
    total = max(1, summary["samples"])
    result["top_project_inclusive"] = [{"function": name, "share": round(n / total, 4)}
                                       for name, n in project_hotspots(summary, 15)]
    if gil is not None:
        gil_total = max(1, gil["samples"])
        result["gil"]["top_project_inclusive"] = [{"function": name, "share": round(n / gil_total, 4)}
                                                  for name, n in project_hotspots(gil, 15)]
    (RESULTS / "profile.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def render(summary: dict[str, Any], meta: dict[str, Any], gil: dict[str, Any] | None = None) -> str:
    total = max(1, summary["samples"])
    lines = [
        "Decide path profile (py-spy record of the server's worker process)",
        f"load: {meta['load']}",
        f"sampling: {meta['rate']} Hz for {meta['seconds']} s; "
        f"wrk during profiling: {meta.get('wrk_rps', 'n/a')} req/s",
        f"{summary['samples']} working samples (several threads can be sampled at once); percentages are of these.",
        f"{summary['waiting_samples']} more samples were threads waiting (py-spy did not class them idle), left out:",
    ]
    lines += [f"  {n:6d}  {name}" for name, n in summary["waiting"]]
    lines += ["", "Working samples by thread:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in summary["threads"]]
    lines += ["", "Top functions by self time (frame on top of the stack):"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in summary["self"]]
    lines += ["", "Top project functions by inclusive time (on the stack anywhere):"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in project_hotspots(summary, 25)]
    lines += ["", "Top functions by inclusive time (all code):"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in summary["inclusive"][:60]]
    if meta.get("thread_cpu"):
        lines += ["", f"CPU by thread during the {meta['seconds']} s profile (cores; py-spy's own pauses included):"]
        lines += [f"  {r['cores']:6.3f}  {r['thread']} ({r['tid']})" for r in meta["thread_cpu"] if r["cores"] >= 0.005]
    if gil is not None:
        gtotal = max(1, gil["samples"])
        lines += ["", f"GIL view (py-spy --gil, {meta.get('gil_seconds')} s): only the thread holding the GIL is "
                  f"sampled; it was held in {gil['held_share']:.0%} of sampling instants.", "Samples by thread:"]
        lines += [f"  {n / gtotal:6.1%}  {name}" for name, n in gil["threads"]]
        lines += ["Top functions by self time:"]
        lines += [f"  {n / gtotal:6.1%}  {name}" for name, n in gil["self"][:20]]
        lines += ["Top project functions by inclusive time:"]
        lines += [f"  {n / gtotal:6.1%}  {name}" for name, n in project_hotspots(gil, 20)]
    if meta.get("stages"):
        lines += ["", "Serial decide, in process (no HTTP, one at a time, learner off): mean ms per decide by stage"]
        for n, stages in meta["stages"].items():
            parts = ", ".join(f"{k} {v:.3f}" for k, v in stages.items())
            lines.append(f"  {n} candidates: {parts}")
    if meta.get("statements"):
        lines += ["SQL statements per decide through SQLAlchemy (same serial run; BEGIN and SAVEPOINT counted, "
                  "COMMIT/ROLLBACK not):"]
        for n, counts in meta["statements"].items():
            lines.append(f"  {n} candidates: " + ", ".join(f"{k} {v:.1f}" for k, v in counts.items()))
    return "\n".join(lines) + "\n"


def stage_breakdown(database: Path, catalog: Path, decides: int = 300
                    ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Mean ms per decide spent in each step of `DecisionEngine._decide`, one decide at a time, in process.

    Wraps the store calls and the scorer of a runtime built like the server's (bench code only; the service is not
    changed). With no concurrency every commit is a group of one, so the write stage is an upper bound.
    """
    import functools
    import random

    from bench.common import decide_body
    from nba.decide import DecideRequest
    from serving.settings import Settings
    from training.service import build_runtime

    runtime = build_runtime(Settings(database_url=f"sqlite:///{database}", catalog=str(catalog), learner=False,
                                     api_keys=""))
    spent: dict[str, float] = {}

    def wrap(owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - started

        setattr(owner, name, timed)

    store = runtime.store
    # The store calls the engine makes (whichever of these exist in the tree being measured).
    for name in ("decision_inputs", "resolve_customer", "find_idempotent", "load_customer", "load_contacts"):
        if hasattr(store, name):
            wrap(store, name, f"{name} (read)")
    wrap(runtime.engine, "_score", "featurize + VW score")
    # The decision's write: `Store.run` of the engine's write step (`commit_decision` in older trees).
    wrap(store, "run" if hasattr(store, "run") else "commit_decision", "write (group commit of one)")
    out: dict[str, dict[str, float]] = {}
    statements: dict[str, dict[str, float]] = {}
    executed = {"read": 0, "write": 0}

    def counter(kind: str) -> Any:
        def count(*_: Any) -> None:
            executed[kind] += 1
        return count

    from sqlalchemy import event

    seen: set[int] = set()
    for kind, attribute in (("read", "_reader"), ("read", "_local_reader"), ("write", "_writer_engine"),
                            ("write", "_inline_engine")):
        engine = getattr(store, attribute, None)
        if engine is not None and id(engine) not in seen:
            seen.add(id(engine))
            event.listen(engine, "before_cursor_execute", counter(kind))
    rng = random.Random(5)
    try:
        for n in (20, 200):
            channel = CHANNELS[n]
            count = decides if n == 20 else decides // 2
            for _ in range(20):  # warm the model and caches
                body = decide_body(rng.randrange(10_000), channel, rng)
                runtime.engine.decide(DecideRequest(body["customer_id"], channel, body["context"]))
            spent.clear()
            executed.update(read=0, write=0)
            started = time.perf_counter()
            for _ in range(count):
                body = decide_body(rng.randrange(10_000), channel, rng)
                runtime.engine.decide(DecideRequest(body["customer_id"], channel, body["context"]))
            total = time.perf_counter() - started
            stages = {label: round(value / count * 1000, 3) for label, value in spent.items()}
            stages["other (rules, sampling, drafting)"] = round(
                (total - sum(spent.values())) / count * 1000, 3)
            stages["total"] = round(total / count * 1000, 3)
            out[str(n)] = stages
            statements[str(n)] = {"reads": executed["read"] / count, "writes": executed["write"] / count}
    finally:
        runtime.store.close()
    return out, statements


def _thread_ticks(pid: int) -> dict[int, tuple[str, int]]:
    """CPU clock ticks of each thread of a process."""
    out: dict[int, tuple[str, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            out[int(task.name)] = ((task / "comm").read_text().strip(), int(fields[11]) + int(fields[12]))
        except (OSError, ValueError, IndexError):
            continue
    return out


def _thread_names(spy: str, pid: int) -> dict[int, str]:
    """Python thread names by native thread id, from `py-spy dump`."""
    out = subprocess.run([spy, "dump", "-p", str(pid)], capture_output=True, text=True, timeout=60).stdout
    return {int(m.group(1)): m.group(2) for m in re.finditer(r'Thread (\d+) \([^)]*\): "([^"]+)"', out)}


def thread_cpu(before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]], names: dict[int, str],
               seconds: float) -> list[dict[str, Any]]:
    tick = os.sysconf("SC_CLK_TCK")
    rows = []
    for tid, (comm, ticks) in after.items():
        used = (ticks - before.get(tid, (comm, 0))[1]) / tick / seconds
        rows.append({"thread": names.get(tid, comm), "tid": tid, "cores": round(used, 3)})
    return sorted(rows, key=lambda r: -r["cores"])


def _record(spy: str, pid: int, seconds: float, rate: int, out: Path, gil: bool) -> None:
    argv = [spy, "record", "-d", str(int(seconds)), "-r", str(rate), "-f", "raw", "-o", str(out), "-p", str(pid)]
    if gil:
        argv.insert(2, "--gil")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed: {done.stderr[-2000:]}")


def run(workdir: Path, database: Path | None = None, seconds: float = 20.0, gil_seconds: float = 8.0,
        rate: int = 100, candidates: int = 20) -> dict[str, Any]:
    spy = py_spy()
    if spy is None:
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    database = database or workdir / "profile.db"
    catalog = write_catalog(workdir)
    channel = CHANNELS[candidates]
    raw, raw_gil = workdir / "profile.collapsed", workdir / "profile-gil.collapsed"
    fresh = not database.exists()
    with nba_server(workdir, database, catalog, 1, "profile") as server:
        if fresh:
            seed_customers(server.url)
        worker = server.worker_pids()[0]
        run_wrk(server.url, BENCH / "decide.lua", wrk_env(channel, CHANNEL_KEY), 3, CONNECTIONS)
        log(f"profile: py-spy on worker {worker} for {seconds:.0f} s (+{gil_seconds:.0f} s GIL-only), "
            f"decide at {candidates} candidates under wrk")
        env = {**os.environ, **wrk_env(channel, CHANNEL_KEY)}
        wrk = subprocess.Popen(["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{int(seconds + gil_seconds + 6)}s", "--timeout",
                                "5s", "-s", str(BENCH / "decide.lua"), server.url], env=env, stdout=subprocess.PIPE,
                               text=True)
        try:
            time.sleep(1.0)  # let wrk reach steady load before sampling starts
            names = _thread_names(spy, worker)
            before, started = _thread_ticks(worker), time.monotonic()
            _record(spy, worker, seconds, rate, raw, gil=False)
            threads = thread_cpu(before, _thread_ticks(worker), names, time.monotonic() - started)
            _record(spy, worker, gil_seconds, rate, raw_gil, gil=True)
            stdout, _ = wrk.communicate(timeout=seconds + gil_seconds + 60)
        finally:
            if wrk.poll() is None:
                wrk.kill()
    wrk_rps = None
    for line in stdout.splitlines():
        if line.startswith("BENCHJSON "):
            wrk_rps = round(json.loads(line[len("BENCHJSON "):])["rps"], 1)
    summary = summarise(raw.read_text())
    gil_summary = summarise(raw_gil.read_text())
    gil_summary["held_share"] = round(gil_summary["samples"] / max(1.0, gil_seconds * rate), 3)
    stages, statements = stage_breakdown(database, catalog)
    meta = {"load": f"wrk 1 thread {CONNECTIONS} connections, POST /v1/decide, {candidates} candidates, 1 worker",
            "rate": rate, "seconds": seconds, "gil_seconds": gil_seconds, "wrk_rps": wrk_rps, "stages": stages,
            "statements": statements, "thread_cpu": threads}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "profile_decide.txt").write_text(render(summary, meta, gil_summary))
    shutil.copy(raw, RESULTS / "profile_decide.collapsed.txt")
    shutil.copy(raw_gil, RESULTS / "profile_decide_gil.collapsed.txt")
    total = max(1, summary["samples"])
    gil_total = max(1, gil_summary["samples"])
    return {
        **meta,
        "samples": summary["samples"],
        "threads": [{"thread": name, "share": round(n / total, 4)} for name, n in summary["threads"]],
        "top_self": [{"function": name, "share": round(n / total, 4)} for name, n in summary["self"][:15]],
        "top_project_inclusive": [{"function": name, "share": round(n / total, 4)}
                                  for name, n in project_hotspots(summary, 15)],
        "waiting_samples": summary["waiting_samples"],
        "gil": {
            "held_share": gil_summary["held_share"],
            "threads": [{"thread": name, "share": round(n / gil_total, 4)} for name, n in gil_summary["threads"]],
            "top_self": [{"function": name, "share": round(n / gil_total, 4)} for name, n in gil_summary["self"][:15]],
            "top_project_inclusive": [{"function": name, "share": round(n / gil_total, 4)}
                                      for name, n in project_hotspots(gil_summary, 15)],
        },
    }


if __name__ == "__main__":
    print(render(summarise(Path(sys.argv[1]).read_text()), {"load": sys.argv[1], "rate": "?", "seconds": "?"}))
