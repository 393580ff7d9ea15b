"""Rule cost: each rule's estimated worst case (`nba.rule_cost.estimate`) against its evaluation timed on the
largest inputs the service accepts, built so that every comprehension runs to its end.

The estimate refuses rules at save (over `MAX_RULE_NS`); it must stay an upper bound of what the CEL runtime
takes, on this machine and the ones the service runs on. Rules are evaluated as a decision evaluates them: on a
converted context shared by every rule, with the action's attributes added. A row whose time exceeds its
estimate is an under-estimate to fix. Nothing here touches the service or the network.

`python -m bench.rule_cost` writes bench/results/rule_cost.json.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import cel

from bench.common import log, machine, write_result
from nba.rule_cost import MAX_RULE_NS, estimate, selected_shape, shape_of
from nba.rules import CompiledRule, RuleInputs

REPEATS = 5


def _strings(count: int, length: int, tag: str) -> list[str]:
    return [f"{tag}{i:04d}".ljust(length, "x") for i in range(count)]


def worst_inputs() -> dict[str, Any]:
    """`context` of 256 keys of 100 strings of 1,024 characters; a customer of 1,024 properties filling its
    256 KiB (a list of 100 strings of 1,000 characters, the rest 150 characters each) and 1,024 event types."""
    tags = _strings(100, 1024, "t")
    context: dict[str, Any] = {f"c{i:03d}": _strings(100, 1024, f"c{i}") for i in range(253)}
    context.update(tags=tags, q="q" * 1024, k="k0001", e="\N{GRINNING FACE}" * 1024)
    customer: dict[str, Any] = {f"k{i:04d}": "v" * 150 for i in range(1023)}
    customer["tags"] = _strings(100, 1000, "u")
    events = [f"event_{i:04d}".ljust(128, "e") for i in range(1024)]
    customer["event_counts"] = {name: i for i, name in enumerate(events)}
    customer["last_event_at"] = {name: datetime(2026, 1, 1, tzinfo=UTC) for name in events}
    customer["id"] = "c" * 128
    return {"context": context, "customer": customer, "now": datetime(2026, 12, 1, tzinfo=UTC)}


BIG_ACTION = {f"a{i:03d}": _strings(100, 1024, f"a{i}") for i in range(256)}
SMALL_ACTION = {"codes": ["a", "b", "c"], "tier": "gold", "x": "y"}

# (rule, the action's attributes): each runs every comprehension to its end on the inputs above
RULES: list[tuple[str, dict[str, Any]]] = [
    ("customer.k0001 != 'vvv'", SMALL_ACTION),
    ("context.tags.all(a, customer.tags.all(b, b != 'q'))", SMALL_ACTION),
    (" && ".join(["context.tags.all(a, customer.tags.all(b, b != 'q'))"] * 2)
     + " && context.tags.all(t, t != 'x') && customer.all(k, k != 'vip')", SMALL_ACTION),
    ("context.tags.all(a, context.tags.all(b, a != b + 'q'))", SMALL_ACTION),
    ("context.all(k, type(context[k]) != list || context[k].all(v, v != 'z'))", SMALL_ACTION),
    ("customer.all(k, customer[k] != 'q')", SMALL_ACTION),
    ("customer.all(k, k != action.x)", SMALL_ACTION),
    ("customer.all(k, action.codes.all(c, c != k))", SMALL_ACTION),
    ("action.a001.all(x, x != 'y')", BIG_ACTION),
    ("context.tags.all(t, !t.matches('^x+1$'))", SMALL_ACTION),
    ("context.tags.all(a, !(a + 'q' in customer.tags))", SMALL_ACTION),
    ("context.tags.all(a, context.c001 != context.c002)", SMALL_ACTION),
    ("context.tags.all(a, [customer.k0001, context.c001] != [a])", SMALL_ACTION),
    ("context.tags.all(a, customer.tags.size() > 0)", SMALL_ACTION),
    ("context.tags.all(a, dyn(context.c001).size() > 0)", SMALL_ACTION),
    ("context.tags.map(a, a + a).size() > 0", SMALL_ACTION),
    ("context.tags.filter(a, true).size() > 0", SMALL_ACTION),
    ("context.c001.map(a, context.c002).size() > 0", SMALL_ACTION),
    ("customer.event_counts.all(e, e != 'x')", SMALL_ACTION),
    ("customer.all(k, customer.event_counts.size() > 0)", SMALL_ACTION),
    ("customer == customer", SMALL_ACTION),
    ("[customer, context.c001].size() > 0", SMALL_ACTION),
    ("(" + " + ".join(["context.tags"] * 10) + ").size() > 0", SMALL_ACTION),
    ("context.q.matches('[a-z0-9_]{20}')", SMALL_ACTION),
    ("context.q.matches('\\\\w{5}')", SMALL_ACTION),
    ("context.tags.all(a, context.q.matches('(?i)^[a-z]+-[0-9]{1,4}$|q'))", SMALL_ACTION),
    ("!context.e.matches('.{100}x')", SMALL_ACTION),
    ("context.e.matches('\\\\B.{50}$')", SMALL_ACTION),
    ("context.tags.all(t, !t.matches('^.{3,20}$'))", SMALL_ACTION),
    ("customer.all(k, !k.matches('^consent_'))", SMALL_ACTION),
]


def run(repeats: int = REPEATS) -> dict[str, Any]:
    inputs = RuleInputs(worst_inputs())
    cel.compile("true").execute(inputs.shared())  # the decision's inputs, converted once for every rule
    rows = []
    for source, attributes in RULES:
        rule = CompiledRule(source, attributes=attributes)  # as the catalog compiles it: the action written in
        fields = rule.action_fields
        action = dict(attributes) if fields is None else {k: attributes[k] for k in fields if k in attributes}
        converted = []
        if "action" in rule.names:  # not written in: converts what it reads at each evaluation
            converted = [shape_of(action)] + [selected_shape(n, rule.selection.get(n)) for n in rule.names - {"action"}]
        guess = estimate(source, shape_of(attributes), converted)
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            outcome = rule.evaluate_for(inputs, attributes)
            best = min(best, time.perf_counter() - started)
            if not outcome.passed:
                raise AssertionError(f"{source} is not true on the worst inputs: it may stop early ({outcome.detail})")
        rows.append({"rule": source if len(source) < 160 else source[:157] + "...",
                     "measured_ms": round(best * 1e3, 4), "estimate_ms": round(guess.ns / 1e6, 4),
                     "estimate_over_measured": round(guess.ns / 1e9 / best, 2) if best > 0 else None,
                     "refused": guess.ns > MAX_RULE_NS})
        log(f"{best * 1e3:9.3f} ms measured, {guess.ns / 1e6:9.3f} estimated  {rows[-1]['rule'][:90]}")
    under = [r for r in rows if r["measured_ms"] > r["estimate_ms"]]
    return {"limit_ms": MAX_RULE_NS / 1e6, "repeats": repeats, "rules": rows,
            "under_estimates": len(under),
            "smallest_ratio": min(r["estimate_over_measured"] for r in rows if r["estimate_over_measured"])}


def main() -> int:
    result = {"machine": machine(), **run()}
    path = write_result("rule_cost", result)
    log(f"{result['under_estimates']} under-estimates; smallest estimate/measured ratio "
        f"{result['smallest_ratio']}; -> {path}")
    return 1 if result["under_estimates"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
