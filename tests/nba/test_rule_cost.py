"""The CEL parse the rule cost estimate walks, and what the estimate refuses and accepts.

That the estimate bounds real evaluation times is measured in `bench/rule_cost.py` (timings do not belong in
unit tests); here: the parse agrees with the CEL runtime, and the estimate prices what costs.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import cel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nba.cel_syntax import Node, literal, parse, render, string_value
from nba.errors import RuleCompileError
from nba.rule_cost import MAX_RULE_NS, VARIABLES, estimate, regex_ns, shape_of
from nba.rules import CompiledRule, RuleInputs

# Every kind of syntax the runtime compiles, with the operators at each precedence level.
SYNTAX = [
    "customer.age >= 18 && (context.page == 'home' || !has(context.page))",
    "a ? b : c ? d : e",
    "-1 < --2 && !!true",
    "1 + 2 * 3 - 4 / 5 % 6 == 7",
    "'a' in ['a', 'b',] && 'k' in {'k': 1, 'j': 2,}",
    "0x1F == 31 && 3u == 3u && 1.5e3 == 1500.0 && .5 < 1.0 && 2e-1 > 0.0 && 0xAu == 10u",
    "r'\\d+' == '\\\\d+' && '''a'b''' != \"\"\"c\"d\"\"\" && b'x' == b'x' && R\"x\" == 'x' && br'\\n' != b''",
    "'\\x41\\u00e9\\101\\n\\'' != ''  // a comment: customer.secret",
    "customer.tags.exists(t, t.startsWith('a')) && [1, 2].map(x, x > 1, x * 2).size() == 1",
    "{'a': [1, {'b': 2}]}['a'][1]['b'] == 2",
    ".customer.age > 1",
    "now.getHours() >= 9 && timestamp('2026-01-01T00:00:00Z') < now && duration('1h') > duration('1m')",
    "type(1) == int && dyn(customer.x) == 1 && optional.of(1).hasValue() && optional.none().orValue(2) == 2",
    "customer.name.matches('^[A-Z][a-z]+$') && 'abc'.contains('b') && size('x') == 1",
    "1 == 1 == true && 1 < 2 != false",
    "[[1], [2]][0][0] in [1] ? {'x': 1}.x : 0",
]


@pytest.mark.parametrize("source", SYNTAX)
def test_what_the_runtime_compiles_parses(source: str) -> None:
    cel.compile(source)
    parse(source)


def _op(operator: str, *args: Node) -> Node:
    return Node("op", operator, None, args)


A, B, C, D = (Node("ident", name) for name in "abcd")


@pytest.mark.parametrize(("source", "tree"), [
    ("a || b && c", _op("||", A, _op("&&", B, C))),
    ("a && b || c", _op("||", _op("&&", A, B), C)),
    ("a == b in c", _op("in", _op("==", A, B), C)),
    ("a + b * c", _op("+", A, _op("*", B, C))),
    ("a - b - c", _op("-", _op("-", A, B), C)),
    ("!a.b", _op("!", Node("select", "b", A))),
    ("-a[b]", _op("-", Node("index", "[]", A, (B,)))),
    ("a ? b : c ? d : a", Node("cond", "?:", None, (A, B, Node("cond", "?:", None, (C, D, A))))),
    ("a || b ? c : d", Node("cond", "?:", None, (_op("||", A, B), C, D))),
    ("a.f(b).g", Node("select", "g", Node("call", "f", A, (B,)))),
])
def test_operators_bind_as_in_cel(source: str, tree: Node) -> None:
    assert parse(source) == tree


# Random expressions over every operator, rendered with as few parentheses as precedence allows: the runtime
# compiles each, and the parse gives back the tree they were written from.
_leaves = st.sampled_from([A, B, C, Node("literal", "1"), Node("literal", "'x'"), Node("literal", "true")])


def _extend(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    binary = st.builds(lambda op, a, b: _op(op, a, b), st.sampled_from(["||", "&&", "==", "<", "in", "+", "-", "*",
                                                                        "%"]), children, children)
    unary = st.builds(lambda op, a: _op(op, a), st.sampled_from(["!", "-"]), children)
    cond = st.builds(lambda a, b, c: Node("cond", "?:", None, (a, b, c)), children, children, children)
    member = st.builds(lambda a, name: Node("select", name, a), children, st.sampled_from(["f", "size_"]))
    index = st.builds(lambda a, b: Node("index", "[]", a, (b,)), children, children)
    call = st.builds(lambda a, b: Node("call", "contains", a, (b,)), children, children)
    listed = st.builds(lambda items: Node("list", "[]", None, tuple(items)), st.lists(children, max_size=3))
    return binary | unary | cond | member | index | call | listed


@pytest.mark.filterwarnings("ignore:Generating overly large repr")
@settings(max_examples=300, deadline=None)
@given(st.recursive(_leaves, _extend, max_leaves=12))
def test_random_expressions_parse_to_the_tree_they_were_written_from(tree: Node) -> None:
    source = render(tree)
    cel.compile(source)
    assert parse(source) == tree, source


@pytest.mark.parametrize("source", ["a.b{c: 1}", "Msg{x: 1}", "a +", "(a", "a ? b", "a # b", "[a b]"])
def test_what_is_not_an_expression_the_runtime_evaluates_is_refused(source: str) -> None:
    with pytest.raises(RuleCompileError):
        parse(source)


def test_string_literals_are_read_as_the_runtime_reads_them() -> None:
    assert string_value("'a\\'b'") == "a'b"
    assert string_value("r'\\d'") == "\\d"
    assert string_value('"""x"y"""') == 'x"y'
    assert string_value("'\\u00e9'") == "é"


def _ns(source: str, attributes: dict[str, Any] | None = None) -> int:
    return estimate(source, shape_of(attributes) if attributes is not None else None).ns


def test_a_comprehension_costs_its_body_once_per_item_of_its_range() -> None:
    body = _ns("context.tags.all(t, t != 'x')")
    nested = _ns("context.tags.all(s, context.tags.all(t, t != 'x'))")
    assert nested > 100 * body * 0.9


def test_map_and_filter_pay_for_their_growing_result() -> None:
    assert _ns("customer.map(k, k).size() > 0") > 100 * _ns("customer.all(k, k != '')")


@pytest.mark.parametrize("source", [
    "customer.exists(k, k.startsWith('pref_') && customer[k] == true)",  # each value copied once over the loop
    "customer.event_counts.exists(e, e.startsWith('x'))",
    "has(customer.prefs) && customer.prefs['sms'] == true",
    "context.tags.exists(t, t.matches('^[a-z]+-[0-9]{1,4}$'))",
    "customer.exists(k, k.matches('^consent_'))",  # 6.4 ms on 1,027 keys of 128 characters
    " || ".join(["context.page == 'p'"] * 400),  # deep as a tree, and no deeper than the runtime evaluates
])
def test_reasonable_rules_are_within_the_bound(source: str) -> None:
    CompiledRule(source).check_functions({})
    assert _ns(source) <= MAX_RULE_NS


@pytest.mark.parametrize(("source", "why"), [
    # a chain of list copies: 300 `+` took 1.7 s an evaluation
    ("(" + " + ".join(["context.tags"] * 300) + ").size() > 0", "could take"),
    # whole maps compared or copied into literals: 0.3 to 0.4 s
    (" && ".join(["customer == customer"] * 150), "could take"),
    ("[" + ", ".join(["customer"] * 100) + "].size() > 0", "could take"),
    # `in` scanning a list in a nested comprehension's body: 75 ms
    ("context.tags.all(a, context.tags.all(b, a + 'q' in context.tags))", "could take"),
    # `map` over a customer's keys copies its growing result at each step: 46 ms
    ("customer.map(k, k).size() > 0", "could take"),
    # a pattern of 100 Unicode word characters compiles in 20 ms, and at every evaluation
    ("context.q.matches('\\\\w{100}')", "could take"),
    # a pattern built from data: compiled at every evaluation, 2.1 s in a comprehension
    ("context.tags.exists(a, context.tags.exists(b, a.matches(b)))", "literal"),
    ("context.tags.exists(a, context.q.matches('^' + a))", "literal"),
    # patterns whose matching grows with their size on wide text (1,024 emoji: 16 to 126 ms), or whose case
    # folding walks wide ranges (3.3 ms a class, compiled at every call)
    ("context.q.matches(r'.{1000}x')", "could take"),
    ("context.q.matches(r'(?:.?){1500}x')", "could take"),
    ("context.q.matches(r'(?:.\\B){500}$')", "could take"),
    ("context.tags.all(t, !t.matches(r'(?i)[\\u0000-\\U0010ffff]z'))", "could take"),
    ("context.q.matches(r'(?i)" + "[\\u0000-\\U0010ffff]" * 10 + "')", "could take"),
    ("context.q.matches(r'(?i:[\\u0100-\\uffff]{100})') && context.q.matches(r'(?i:[\\u0100-\\uffff]{9})')",
     "could take"),
    # a result that is not a bool is converted back (a whole context: 17 ms)
    ("context", "could take"),
    ("true ? context : false", "could take"),
    # selecting a map copies it: this one at each of 1,024 steps, 75 ms
    ("customer.event_counts.all(e, e.startsWith('x') || customer.event_counts[e] < 5)", "could take"),
])
def test_rules_whose_worst_case_is_too_slow_are_refused(source: str, why: str) -> None:
    with pytest.raises(RuleCompileError, match=why):
        CompiledRule(source).check_functions({})


def test_the_action_s_own_attributes_bound_what_a_rule_reads_of_it() -> None:
    rule = CompiledRule("customer.event_counts.all(e, action.codes.exists(c, c != e))")
    rule.check_functions({"codes": ["a", "b", "c"]})
    with pytest.raises(RuleCompileError, match="could take"):
        rule.check_functions({"codes": ["x" * 1024] * 100})


def test_a_rule_reading_the_action_is_priced_as_it_is_evaluated() -> None:
    # the action's attributes are written into the rule, which then shares the decision's converted inputs
    CompiledRule("customer.exists(k, k == action.tier)").check_functions({"tier": "gold"})
    # unless a value has no CEL literal: the rule then converts what it reads for itself at each evaluation (the
    # shared inputs cannot take the action without converting all of them again), a whole customer here
    CompiledRule("customer.tier == 'x' && action.n > 0").check_functions({"n": 2**70})
    with pytest.raises(RuleCompileError, match="could take"):
        CompiledRule("customer.exists(k, k == 'x') && action.n > 0").check_functions({"n": 2**70})


def test_an_index_by_a_variable_key_is_priced_as_any_item_of_the_map() -> None:
    assert _ns("customer[context.k] == 1") > _ns("customer['age'] == 1")
    assert abs(_ns("customer['event_counts'] == {}") - _ns("customer.event_counts == {}")) < 100


def test_pattern_cost_grows_with_what_it_matches() -> None:
    assert regex_ns("\\w{100}") > 10 * regex_ns("\\w{10}") / 1.1 > regex_ns("[a-z]{10}")
    assert regex_ns("(?i)[a-z]{50}") > regex_ns("[a-z]{50}")
    assert regex_ns("\\p{L}") >= regex_ns("\\w")
    with pytest.raises(RuleCompileError, match="cannot be read"):
        regex_ns("(unclosed")


def test_a_result_that_is_not_a_bool_is_named_by_its_type_only() -> None:
    result = CompiledRule("context.tags").evaluate({"context": {"tags": ["x" * 100] * 100}})
    assert result.failed and "list" in result.detail and "xxx" not in result.detail


def test_each_variable_is_bounded() -> None:
    assert set(VARIABLES) == {"customer", "context", "action", "now"}


NOW = datetime(2026, 12, 1, tzinfo=UTC)


def test_rules_reading_the_action_see_each_action_s_attributes_on_the_shared_inputs() -> None:
    inputs = RuleInputs({"customer": {"tier": "gold", "tags": ["a"]}, "context": {}, "now": NOW})
    rule = CompiledRule("customer.tier == action.tier && !has(action.banned)")
    assert rule.evaluate_for(inputs, {"tier": "gold"}).passed
    assert not rule.evaluate_for(inputs, {"tier": "silver"}).passed
    assert not rule.evaluate_for(inputs, {"tier": "gold", "banned": True}).passed
    assert rule.evaluate_for(inputs, {"tier": "gold"}).passed  # nothing of the previous action stays
    whole = CompiledRule("customer.tags.exists(t, t in action.tags) && size(action) == 1")
    assert whole.evaluate_for(inputs, {"tags": ["a"]}).passed
    assert not whole.evaluate_for(inputs, {"tags": ["a"], "x": 1}).passed
    unread = CompiledRule("customer.tier == 'gold'")
    assert unread.evaluate_for(inputs, {"tier": "silver"}).passed


ATTRIBUTE_SETS: list[dict[str, Any]] = [
    {"tier": "gold", "min_age": 18, "codes": ["a", "b"], "weight": 1.5, "on": True},
    {"tier": "sil\"ver\\\n", "min_age": -3, "codes": [], "weight": -0.0, "on": False},
    {},
]
FOLDED = [
    "customer.tier == action.tier",
    "has(action.tier) && customer.tier == action.tier",
    "!has(action.tier) || customer.age >= action.min_age",
    "action.codes.exists(c, c in customer.tags) || action.on",
    "size(action) > 2 && 'tier' in action && action['tier'] != ''",
    "action.weight * 2.0 > 1.0",
    "customer.tags.exists(action, action == 'a') && has(action.on)",  # a comprehension binding `action`
    "customer.exists(k, k == action.tier)",
    "action.missing == 1 || true",
]


@pytest.mark.parametrize("source", FOLDED)
@pytest.mark.parametrize("attributes", ATTRIBUTE_SETS)
def test_a_rule_with_the_action_written_in_has_the_outcome_it_had(source: str, attributes: dict[str, Any]) -> None:
    folded = CompiledRule(source, attributes=attributes)
    assert "action" not in folded.names or source.startswith("customer.tags.exists(action")
    for customer in ({"tier": "gold", "age": 20, "tags": ["a"]}, {"tier": 'sil"ver\\\n', "age": 0, "tags": []}, {}):
        inputs = RuleInputs({"customer": customer, "context": {}, "now": NOW})
        plain = CompiledRule(source).evaluate_for(inputs, attributes)
        written = folded.evaluate_for(inputs, attributes)
        assert (written.passed, written.failed) == (plain.passed, plain.failed), (customer, written, plain)


def test_an_action_value_with_no_cel_literal_is_read_at_each_evaluation() -> None:
    rule = CompiledRule("action.n > 0", attributes={"n": 2**70})
    assert "action" in rule.names
    inputs = RuleInputs({"now": NOW})
    assert rule.evaluate_for(inputs, {"n": 2**70}) == CompiledRule("action.n > 0").evaluate_for(inputs, {"n": 2**70})
