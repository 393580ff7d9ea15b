"""`python -m bench` (`make bench`): every benchmark in one run, results in bench/results/*.json.

Steps, in order (each writes bench/results/<name>.json):
  http     decide req/s and p50/p99 over HTTP at 20 and 200 candidates, 1 and 2 workers, against the bare-route
           ceiling; p99 at a fixed rate of half decide's own maximum (bench/http_decide.py)
  profile  py-spy on the decide path under load for ~20 s -> profile_decide.txt (bench/profile.py)
  learn    joined examples per second into Vowpal Wabbit (bench/learn.py)
  hotswap  PolicyModels.publish of a serialized model (bench/hotswap.py)
  ingest   events (single and batched) and rewards per second over HTTP (bench/ingest.py)
  ope      logged decisions/s through the off-policy estimators, normal and bootstrap intervals (bench/ope.py)
  rules    eligibility rules' estimated worst-case cost against their timed evaluation (bench/rule_cost.py)
  memory   server RSS holding up to 1,000,000 customer states (bench/memory.py), within the time left

Everything runs against 127.0.0.1 on a fresh temporary SQLite database; never part of `make test`.
Options: --only http,learn ...  --quick (short runs, for trying the bench itself)  --budget SECONDS (whole run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import BENCH, RESULTS, log, machine, read_result, require_wrk, write_result

STEPS = ["http", "profile", "learn", "hotswap", "ingest", "ope", "rules", "memory"]


def _git_commit() -> str | None:
    """The commit measured, with `+modified:<files>` when the work tree differs from it (bench/ aside)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=BENCH.parent, timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                text=True, cwd=BENCH.parent, timeout=10).stdout.splitlines()
    except OSError:
        return None
    modified = sorted(line[3:] for line in status if not line[3:].startswith("bench/"))
    return f"{head}+modified:{','.join(modified)}" if modified else (head or None)


def _ensure_decisions(workdir: Path, database: Path) -> None:
    """Learn and hot-swap read logged decisions; make some when the http step did not run."""
    if database.exists():
        return
    from bench.common import CHANNEL_KEY, CHANNELS, nba_server, write_catalog
    from bench.http_decide import CUSTOMERS, seed_customers

    log("no decide database yet: logging decisions for the learn and hot-swap steps")
    with nba_server(workdir, database, write_catalog(workdir), 1, "decisions") as server:
        seed_customers(server.url)
        for channel, seconds in ((CHANNELS[20], 6), (CHANNELS[200], 6)):
            subprocess.run([sys.executable, "-m", "bench.loadgen", "--port", str(server.port), "--token", CHANNEL_KEY,
                            "--channel", channel, "--customers", str(CUSTOMERS), "--duration", str(seconds),
                            "--connections", "32"], check=True, capture_output=True, timeout=120, cwd=BENCH.parent)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(STEPS), help=f"comma-separated steps from {STEPS}")
    parser.add_argument("--quick", action="store_true", help="short runs and 100,000 customers, to try the bench")
    parser.add_argument("--budget", type=float, default=870.0,
                        help="seconds for the whole run; the memory step uses what is left (default 870)")
    parser.add_argument("--customers", type=int, default=1_000_000, help="memory step target")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (databases, logs)")
    parser.add_argument("--report", action="store_true",
                        help="measure nothing: rebuild profile_decide.txt and summary.md from bench/results")
    args = parser.parse_args(argv)
    if args.report:
        return report()
    steps = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        parser.error(f"unknown steps {unknown}; choose from {STEPS}")
    if any(s in steps for s in ("http", "profile", "ingest")):
        require_wrk()
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="nba-bench-"))
    os.environ.setdefault("NBA_SQLITE_SYNCHRONOUS", "NORMAL")
    RESULTS.mkdir(parents=True, exist_ok=True)
    seconds = 4.0 if args.quick else 10.0
    log(f"bench: steps {steps}, work directory {workdir}")
    summary: dict[str, Any] = {"machine": machine(), "commit": _git_commit(), "quick": args.quick,
                               "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "steps": {}}
    http_db = workdir / "http.db"
    try:
        for step in steps:
            step_started = time.monotonic()
            if step == "http":
                from bench import http_decide

                result = http_decide.run(workdir, seconds=seconds, warmup=2.0 if args.quick else 3.0,
                                         fixed_seconds=seconds)
            elif step == "profile":
                from bench import profile

                if profile.py_spy() is None:
                    log("profile SKIPPED: py-spy is not installed (.venv/bin/pip install py-spy)")
                    summary["steps"][step] = {"skipped": "py-spy is not installed"}
                    continue
                result = profile.run(workdir, database=http_db, seconds=8.0 if args.quick else 20.0,
                                     gil_seconds=4.0 if args.quick else 8.0)
            elif step == "learn":
                from bench import learn

                _ensure_decisions(workdir, http_db)
                result = learn.run(http_db)
            elif step == "hotswap":
                from bench import hotswap

                _ensure_decisions(workdir, http_db)
                result = hotswap.run(workdir, http_db)
            elif step == "ingest":
                from bench import ingest

                result = ingest.run(workdir, seconds=seconds)
            elif step == "ope":
                from bench import ope

                result = ope.run(rows=100_000 if args.quick else ope.ROWS, repeats=1 if args.quick else ope.REPEATS)
            elif step == "rules":
                from bench import rule_cost

                result = rule_cost.run()
            else:
                from bench import memory

                left = args.budget - (time.monotonic() - started) - 60.0
                budget = max(30.0, min(left, 900.0))
                target = min(args.customers, 100_000) if args.quick else args.customers
                result = memory.run(workdir, budget_s=budget, target=target)
            result = {"machine": summary["machine"], "commit": summary["commit"], **result,
                      "step_seconds": round(time.monotonic() - step_started, 1)}
            path = write_result(step if step != "http" else "http_decide", result)
            summary["steps"][step] = {"seconds": result["step_seconds"], "file": str(path.relative_to(BENCH.parent))}
            log(f"{step} done in {result['step_seconds']:.0f} s -> {path.relative_to(BENCH.parent)}")
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    summary["total_seconds"] = round(time.monotonic() - started, 1)
    previous = read_result("summary")
    if set(steps) != set(STEPS) and previous and not previous.get("quick") and not args.quick:
        # A partial rerun: keep the last full run's record and note what was measured again.
        reruns = previous.get("reruns", [])
        reruns.append({"steps": steps, "started_at": summary["started_at"], "commit": summary["commit"],
                       "seconds": summary["total_seconds"], "cpu_model": summary["machine"]["cpu_model"]})
        previous["steps"].update(summary["steps"])
        previous["reruns"] = reruns
        summary = previous
    summary["figures"] = collect()
    write_result("summary", summary)
    (RESULTS / "summary.md").write_text(render_markdown(summary))
    log(f"all done in {summary['total_seconds']:.0f} s; summary in bench/results/summary.md")
    print((RESULTS / "summary.md").read_text())
    return 0


def report() -> int:
    from bench import profile

    if (RESULTS / "profile.json").exists() and (RESULTS / "profile_decide.collapsed.txt").exists():
        profile.rerender()  # the saved stacks stay with the machine that recorded them
    summary = read_result("summary") or {"machine": machine(), "commit": _git_commit(), "quick": False,
                                         "total_seconds": 0.0, "steps": {}}
    summary["figures"] = collect()
    write_result("summary", summary)
    (RESULTS / "summary.md").write_text(render_markdown(summary))
    print((RESULTS / "summary.md").read_text())
    return 0


def collect() -> dict[str, Any]:
    """The headline figures from whatever result files exist (this run's or an earlier one's)."""
    out: dict[str, Any] = {}
    http = read_result("http_decide")
    if http:
        out["decide"] = [
            {"workers": r["workers"], "candidates": r["candidates"], "rps": r["max_rate"]["rps"],
             "p50_ms": r["max_rate"]["p50_ms"], "p99_ms": r["max_rate"]["p99_ms"],
             "ceiling_rps": r["ceiling"]["rps"], "ratio_to_ceiling": r["ratio_to_ceiling"],
             "fixed_rate_rps": r["fixed_rate"]["target_rps"], "fixed_p50_ms": r["fixed_rate"]["p50_ms"],
             "fixed_p99_ms": r["fixed_rate"]["p99_ms"],
             "fixed_p99_runs_ms": r["fixed_rate"].get("repeats_p99_ms", [r["fixed_rate"]["p99_ms"]]),
             "steady_rps": r.get("steady_state", {}).get("max_rate", {}).get("rps"),
             "steady_fixed_rps": r.get("steady_state", {}).get("fixed_rate", {}).get("target_rps"),
             "steady_p50_ms": r.get("steady_state", {}).get("fixed_rate", {}).get("p50_ms"),
             "steady_p99_ms": r.get("steady_state", {}).get("fixed_rate", {}).get("p99_ms"),
             "steady_p99_runs_ms": r.get("steady_state", {}).get("fixed_rate", {}).get("repeats_p99_ms", []),
             "other_load_cores": max(r["ceiling"].get("cpu", {}).get("other_cores", 0.0),
                                     r["max_rate"].get("cpu", {}).get("other_cores", 0.0),
                                     r["fixed_rate"].get("cpu", {}).get("other_cores", 0.0))}
            for r in http["runs"]
        ]
        out["targets"] = http["targets"]
    ingest = read_result("ingest")
    if ingest:
        out["ingest"] = [{"workers": r["workers"], "events_single_per_s": r["events_single"]["items_per_s"],
                          "events_batched_per_s": r["events_batched"]["items_per_s"],
                          "rewards_per_s": r["rewards"]["items_per_s"],
                          "other_load_cores": max(r[k].get("other_load_cores", 0.0)
                                                  for k in ("events_single", "events_batched", "rewards"))}
                         for r in ingest["runs"]]
    learn = read_result("learn")
    if learn:
        out["learn"] = {n: {k: v[k]["per_s"] for k in ("rebuild_only", "learn_only", "decode_rebuild_learn")}
                        for n, v in learn["by_candidates"].items()}
    hotswap = read_result("hotswap")
    if hotswap:
        out["hotswap"] = {n: {"publish_median_ms": v["publish"]["median_ms"], "publish_max_ms": v["publish"]["max_ms"],
                              "serialize_median_ms": v["serialize"]["median_ms"], "model_bytes": v["model_bytes"]}
                          for n, v in hotswap["by_candidates"].items()}
    ope = read_result("ope")
    if ope:
        out["ope"] = {"rows": ope["setup"]["rows"], "actions": ope["setup"]["actions"],
                      "resamples": ope["setup"]["bootstrap_resamples"],
                      "normal_rows_per_s": {k: v["rows_per_s"] for k, v in ope["normal"].items()},
                      "bootstrap_rows_per_s": {k: v["rows_per_s"] for k, v in ope["bootstrap"].items()},
                      "bootstrap_peak_mib": max(v["peak_alloc_mib"] for v in ope["bootstrap"].values()),
                      "crossfit_seconds": ope["crossfit_ridge_5_folds"]["seconds"]}
    memory = read_result("memory")
    if memory:
        out["memory"] = {k: memory.get(k) for k in ("customers_ingested", "reached_target", "server_rss_mib",
                                                    "worker_rss_mib", "worker_peak_rss_mib", "main_peak_rss_mib",
                                                    "database_mib", "ingest_events_per_s", "extrapolated_to_target")}
    profile = read_result("profile")
    if profile:
        out["profile_top"] = profile["top_project_inclusive"][:10]
    return out


def render_markdown(summary: dict[str, Any]) -> str:
    f = summary["figures"]
    m = summary["machine"]
    note = ("`other load` is CPU that processes outside the bench used during a measurement (in cores of "
            f"{m['cpus']}); rows with more than 0.15 were disturbed and are not comparable.")
    lines = [f"Measured on {m['cpus']} CPUs ({m['cpu_model']}), Python {m['python']}, granian {m['granian']}, "
             f"SQLite synchronous={m['sqlite_synchronous']}, commit {summary['commit']}; whole run "
             f"{summary['total_seconds']:.0f} s{' (quick mode: short runs)' if summary['quick'] else ''}. {note}"]
    for rerun in summary.get("reruns", []):
        on = f", on {rerun['cpu_model']}" if rerun.get("cpu_model", m["cpu_model"]) != m["cpu_model"] else ""
        lines.append(f"Measured again later: {', '.join(rerun['steps'])} ({rerun['started_at']}, "
                     f"commit {rerun['commit']}{on}).")
    lines.append("")
    if "decide" in f:
        lines += ["| workers | candidates | decide req/s | p50 ms | p99 ms | ceiling req/s | share of ceiling | "
                  "fixed rate req/s | p50 ms at fixed rate | p99 ms at fixed rate (median run; all runs) | "
                  "other load (cores) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in f["decide"]:
            lines.append(f"| {r['workers']} | {r['candidates']} | {r['rps']:,.0f} | {r['p50_ms']:.1f} | "
                         f"{r['p99_ms']:.1f} | {r['ceiling_rps']:,.0f} | {r['ratio_to_ceiling']:.1%} | "
                         f"{r['fixed_rate_rps']:,.0f} | {r['fixed_p50_ms']:.1f} | {r['fixed_p99_ms']:.1f} "
                         f"({', '.join(f'{v:.1f}' for v in r.get('fixed_p99_runs_ms', []))}) | "
                         f"{r['other_load_cores']:.2f} |")
        lines.append("")
        for t in f.get("targets", []):
            lines.append(f"- Targets, 20 candidates, {t['workers']} worker(s): share of ceiling "
                         f"{t['share_of_ceiling']:.1%} (target >= {t['share_target']:.0%}: "
                         f"{'met' if t['share_met'] else 'NOT met'}); p99 at half rate "
                         f"{t['p99_at_half_rate_ms']:.2f} ms "
                         f"(target < {t['p99_target_ms']:.0f} ms: {'met' if t['p99_met'] else 'NOT met'})")
        for r in f["decide"]:
            if r.get("steady_p99_ms") is not None:
                lines.append(f"- Steady state, {r['workers']} worker(s), {r['candidates']} candidates, with 1-s reward "
                             f"windows (the sweep closes, the learner learns and snapshots as fast as decisions "
                             f"come): decide {r['steady_rps']:,.0f} req/s; at {r['steady_fixed_rps']:,.0f} req/s "
                             f"fixed, p50 {r['steady_p50_ms']:.1f} ms, p99 {r['steady_p99_ms']:.1f} ms "
                             f"({', '.join(f'{v:.1f}' for v in r['steady_p99_runs_ms'])})")
        lines.append("")
    if "ingest" in f:
        lines += ["| workers | events/s, one per request | events/s, 1,000 per request | rewards/s "
                  "| other load (cores) |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['workers']} | {r['events_single_per_s']:,.0f} | {r['events_batched_per_s']:,.0f} | "
                  f"{r['rewards_per_s']:,.0f} | {r['other_load_cores']:.2f} |" for r in f["ingest"]]
        lines.append("")
    if "learn" in f:
        lines += ["| candidates | rebuild examples/s | VW learn examples/s | decode + rebuild + learn examples/s |",
                  "|---|---|---|---|"]
        lines += [f"| {n} | {v['rebuild_only']:,.0f} | {v['learn_only']:,.0f} | {v['decode_rebuild_learn']:,.0f} |"
                  for n, v in f["learn"].items()]
        lines.append("")
    if "hotswap" in f:
        lines += [f"- Hot-swap at {n} candidates: publish median {v['publish_median_ms']:.1f} ms (max "
                  f"{v['publish_max_ms']:.1f} ms), serialize {v['serialize_median_ms']:.1f} ms, model "
                  f"{v['model_bytes'] / 1024:.0f} KiB" for n, v in f["hotswap"].items()]
        lines.append("")
    if "ope" in f:
        o = f["ope"]
        lines += [f"Off-policy estimators, {o['rows']:,} logged decisions x {o['actions']} actions, in process:", "",
                  f"| estimator | rows/s with normal interval | rows/s with bootstrap ({o['resamples']} resamples) |",
                  "|---|---|---|"]
        lines += [f"| {name} | {rate:,.0f} | {o['bootstrap_rows_per_s'][name]:,.0f} |"
                  for name, rate in o["normal_rows_per_s"].items()]
        lines += ["", f"- Cross-fitted Ridge reward model (5 folds): {o['crossfit_seconds']:.1f} s; bootstrap peak "
                  f"allocation {o['bootstrap_peak_mib']:.0f} MiB.", ""]
    if "memory" in f:
        mem = f["memory"]
        lines.append(f"- Memory: {mem['customers_ingested']:,} customer states in the store; server RSS "
                     f"{mem['server_rss_mib']} MiB (worker {mem['worker_rss_mib']} MiB, worker peak "
                     f"{mem['worker_peak_rss_mib']} MiB, main process peak {mem['main_peak_rss_mib']} MiB); "
                     f"database {mem['database_mib']} MiB; ingest {mem['ingest_events_per_s']:,.0f} events/s.")
        if mem.get("extrapolated_to_target"):
            x = mem["extrapolated_to_target"]
            lines.append(f"  - {x['label']}: {x['total_rss_mib_at_target']} MiB at 1,000,000 customers "
                         f"({x['kib_per_1000_customers']} KiB per 1,000 customers).")
        lines.append("")
    if "profile_top" in f:
        lines += ["Decide path hot spots (py-spy, share of samples, inclusive):"]
        lines += [f"- {p['share']:.1%} {p['function']}" for p in f["profile_top"]]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
