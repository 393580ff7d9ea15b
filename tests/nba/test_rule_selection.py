"""A decision converts for CEL only what the catalog's rules read, and that never changes a rule's outcome."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import product
from typing import Any

import pytest

from nba.constraints import cel_variables
from nba.errors import RuleCompileError
from nba.rules import CompiledRule, RuleInputs, merge_selections, selected_fields
from nba.types import CustomerState

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
NAMES = ["customer", "context", "now"]


@pytest.mark.parametrize(("source", "expected"), [
    ("customer.age >= 18", {"customer": {"age"}, "context": set(), "now": set()}),
    ("has(customer.age) && customer . age >= 18 || context.page == 'x'",
     {"customer": {"age"}, "context": {"page"}, "now": set()}),
    # Inside strings and comments a name is not a reference.
    ("context.page == 'customer.tier' // customer.segment", {"customer": set(), "context": {"page"}, "now": set()}),
    ('context.page == r"customer[0]" && context.q == """customer"""',
     {"customer": set(), "context": {"page", "q"}, "now": set()}),
    ("context.page == 'it\\'s customer'", {"customer": set(), "context": {"page"}, "now": set()}),
    # A field of a field selects the outer field whole.
    ("customer.event_counts.purchase > 2", {"customer": {"event_counts"}, "context": set(), "now": set()}),
    # Index, macro, function argument or comparison of the whole value: all of it.
    ("customer['age'] > 1", {"customer": None, "context": set(), "now": set()}),
    ("context.exists(k, k == 'a')", {"customer": set(), "context": None, "now": set()}),
    ("size(customer) > 2", {"customer": None, "context": set(), "now": set()}),
    ("now > timestamp('2026-01-01T00:00:00Z')", {"customer": set(), "context": set(), "now": None}),
    # `x.customer` is a field of something else.
    ("context.customer == 'a'", {"customer": set(), "context": {"customer"}, "now": set()}),
])
def test_selected_fields(source: str, expected: dict[str, set[str] | None]) -> None:
    found = selected_fields(source, NAMES)
    assert {k: (None if v is None else set(v)) for k, v in found.items()} == expected


def test_macro_variables_are_not_taken_for_unknown_variables() -> None:
    rule = CompiledRule("context.tags.exists(t, t == 'vip')")
    assert rule.names == {"context"}
    assert rule.evaluate({"context": {"tags": ["vip"]}}).passed
    with pytest.raises(RuleCompileError, match="limit"):
        CompiledRule("context.tags.exists(t, t == limit)")


def test_merged_selection_is_the_union_and_whole_wins() -> None:
    merged = merge_selections([
        {"customer": frozenset({"age"}), "context": frozenset({"page"})},
        {"customer": frozenset({"tier"}), "context": None},
        {"now": None},
    ])
    assert merged == {"customer": frozenset({"age", "tier"}), "context": None, "now": None}


def test_a_selection_only_converts_what_it_names() -> None:
    customer = CustomerState("c1", attributes={"age": 30, "tier": "gold", "notes": "x" * 100},
                             event_counts={"purchase": 2}, last_event_at={"purchase": "2026-11-20T08:00:00+00:00"})
    context = {"page": "home", "cart_value": 12.5, "device": "mobile"}
    selection = {"customer": frozenset({"age", "last_event_at", "missing"}), "context": frozenset({"page"})}
    assert cel_variables(customer, context, NOW, selection) == {
        "customer": {"age": 30, "last_event_at": {"purchase": datetime(2026, 11, 20, 8, tzinfo=UTC)}},
        "context": {"page": "home"},
    }
    assert cel_variables(customer, context, NOW, {}) == {}


RULES = [
    "customer.age >= 18",
    "!has(customer.age) || customer.age >= 21",
    "has(customer.tier) && customer.tier == 'gold'",
    "customer.event_counts.purchase > 1",
    "now - customer.last_event_at.purchase < duration('72h')",
    "customer.id.startsWith('c')",
    "context.page == 'checkout' && context.cart_value >= action.min_cart",
    "!has(context.cart_value) || context.cart_value >= 1.0",
    "context.tags.exists(t, t == 'returning')",
    "size(context) > 2",
    "customer['age'] > 40",
    "context.page == 'customer.tier' && customer.age > 0",
    "action.min_cart < 50.0 && customer.age < 65",
]
CUSTOMERS = [
    CustomerState("c1"),
    CustomerState("c2", attributes={"age": 19, "tier": "gold"}, event_counts={"purchase": 3},
                  last_event_at={"purchase": "2026-11-23T10:00:00+00:00"}),
    CustomerState("d3", attributes={"age": 70}, event_counts={"purchase": 1},
                  last_event_at={"purchase": "2026-10-01T10:00:00+00:00"}),
    CustomerState("c4", attributes={"age": "unknown", "tier": 3}),
]
CONTEXTS: list[dict[str, Any]] = [
    {},
    {"page": "checkout", "cart_value": 80.0, "tags": ["returning"]},
    {"page": "customer.tier", "cart_value": 0.5, "tags": []},
]


@pytest.mark.parametrize("catalog_rules", [RULES[:3], RULES[6:9], RULES])
def test_rules_decide_the_same_on_the_selection_as_on_everything(catalog_rules: list[str]) -> None:
    compiled = [CompiledRule(source) for source in catalog_rules]
    selection = merge_selections(rule.selection for rule in compiled)
    for customer, context, min_cart in product(CUSTOMERS, CONTEXTS, (10.0, 100.0)):
        full = RuleInputs(cel_variables(customer, context, NOW))
        partial = RuleInputs(cel_variables(customer, context, NOW, selection),
                             lambda c=customer, x=context: cel_variables(c, x, NOW))  # type: ignore[misc]
        for rule in compiled:
            expected = rule.evaluate_for(full, {"min_cart": min_cart})
            assert rule.evaluate_for(partial, {"min_cart": min_cart}) == expected, (rule.source, customer, context)


def test_a_rule_the_selection_cannot_serve_is_evaluated_on_everything() -> None:
    """Even a selection that misses what a rule reads cannot change its outcome: the failed rule runs again."""
    rule = CompiledRule("customer.age >= 18 && context.page == 'home'")
    customer = CustomerState("c1", attributes={"age": 30}, last_event_at={"x": "2026-11-24T09:00:00+00:00"})
    calls = []

    def everything() -> dict[str, Any]:
        calls.append(1)
        return cel_variables(customer, {"page": "home"}, NOW)

    inputs = RuleInputs(cel_variables(customer, {"page": "home"}, NOW, {"customer": frozenset()}), everything)
    assert rule.evaluate_for(inputs, {}).passed
    assert rule.evaluate_for(inputs, {}).passed
    assert calls == [1]  # built once per decision
    old = CustomerState("c2", attributes={"age": 12})
    assert not CompiledRule("customer.age >= 18").evaluate_for(
        RuleInputs({}, lambda: cel_variables(old, {}, NOW + timedelta(0))), {}).passed
