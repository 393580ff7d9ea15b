"""CEL expressions for eligibility rules: compiled once when an action is saved, evaluated per decision."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import cel

from nba.cel_syntax import MAX_TREE_DEPTH, Node, literal, parse, render
from nba.errors import RuleCompileError
from nba.rule_cost import MAX_DEPTH, MAX_RULE_NS, estimate, selected_shape, shape_of

RULE_VARIABLES = frozenset({"customer", "context", "action", "now"})

# The functions the CEL runtime defines (its core specification; `tests/nba/test_constraints.py` calls each one).
# Operators (`_&&_`, `@in`, `!_`) are not listed: the parser only produces ones that exist.
CEL_FUNCTIONS = frozenset({
    "size", "contains", "startsWith", "endsWith", "matches",
    "int", "uint", "double", "string", "bytes", "dyn", "type", "timestamp", "duration",
    "getFullYear", "getMonth", "getDayOfYear", "getDayOfMonth", "getDate", "getDayOfWeek",
    "getHours", "getMinutes", "getSeconds", "getMilliseconds",
    "of", "ofNonZeroValue", "none", "hasValue", "value", "or", "orValue",
})
# Names the runtime defines that the parser reports as variables: type names (`type(x) == int`) and the
# `optional` namespace.
CEL_BUILTIN_NAMES = frozenset({"int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type",
                               "optional"})

# Per variable: the fields rules select from it (`customer.age` -> {"age"}), or None for the whole value.
Selection = Mapping[str, frozenset[str] | None]

# CEL's lexical grammar, as far as finding variable references needs it: strings and comments are skipped.
_Q3 = ("'" * 3, '"' * 3)
_RAW = "|".join([f"{q}.*?{q}" for q in _Q3] + [r"'[^'\n\r]*'", r'"[^"\n\r]*"'])
_COOKED = "|".join([rf"{q}(?:\\.|[^\\])*?{q}" for q in _Q3] + [r"'(?:\\.|[^'\\\n\r])*'", r'"(?:\\.|[^"\\\n\r])*"'])
_TOKEN = re.compile(
    rf"(?P<string>(?:[rR][bB]?|[bB][rR])(?:{_RAW})|[bB]?(?:{_COOKED}))"
    r"|(?P<comment>//[^\n]*)|(?P<ident>[A-Za-z_][A-Za-z0-9_]*)|(?P<space>\s+)|(?P<other>.)",
    re.S,
)


def selected_fields(source: str, names: Iterable[str]) -> dict[str, frozenset[str] | None]:
    """Which fields of each named variable an expression reads: a set when every use is `name.field`, else None.

    Converting a variable to CEL costs about a microsecond per key, more than evaluating a compiled rule, so a
    decision converts only what its rules select. Any other use (an index, a macro such as `exists`, the
    value as a whole) selects the whole value.

    >>> rule = "has(customer.age) && customer.age >= 18 && context.page == 'customer.x'"
    >>> selected_fields(rule, ["customer", "context"])
    {'customer': frozenset({'age'}), 'context': frozenset({'page'})}
    >>> selected_fields("customer['age'] > 1 || size(context) > 0", ["customer", "context"])
    {'customer': None, 'context': None}
    """
    wanted = dict.fromkeys(names)
    tokens = _tokens(source)
    fields: dict[str, set[str] | None] = {name: set() for name in wanted}
    for index, (kind, text) in enumerate(tokens):
        if kind != "ident" or text not in wanted:
            continue
        if index > 0 and tokens[index - 1][1] == ".":
            continue  # a field of something else that happens to share the name
        after = tokens[index + 1:index + 4]
        is_field = (len(after) >= 2 and after[0][1] == "." and after[1][0] == "ident"
                    and (len(after) < 3 or after[2][1] != "("))  # `customer.exists(...)` is a macro
        current = fields[text]
        if not is_field:
            fields[text] = None
        elif current is not None:
            current.add(after[1][1])
    return {name: None if found is None else frozenset(found) for name, found in fields.items()}


def _tokens(source: str) -> list[tuple[str | None, str]]:
    return [(m.lastgroup, m.group()) for m in _TOKEN.finditer(source) if m.lastgroup not in ("space", "comment")]


_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})


# CEL's timestamp accessors; the runtime has them without the time-zone argument only (each call with one fails).
TIMESTAMP_ACCESSORS = frozenset({"getDate", "getDayOfMonth", "getDayOfWeek", "getDayOfYear", "getFullYear",
                                 "getHours", "getMilliseconds", "getMinutes", "getMonth", "getSeconds"})


def bound_names(source: str) -> frozenset[str]:
    """Names an expression binds in its macros (`tags.exists(t, t == 'x')` binds `t`).

    >>> sorted(bound_names("context.tags.exists(t, t == 'vip') && [1, 2].all(n, n > 0)"))
    ['n', 't']
    """
    tokens = _tokens(source)
    return frozenset(
        tokens[i + 3][1]
        for i in range(len(tokens) - 4)
        if tokens[i][1] == "." and tokens[i + 1][1] in _MACROS and tokens[i + 2][1] == "("
        and tokens[i + 3][0] == "ident" and tokens[i + 4][1] == ","
    )


def merge_selections(selections: Iterable[Selection]) -> dict[str, frozenset[str] | None]:
    """What any of several rules reads: the union of their fields, the whole value if any needs it."""
    merged: dict[str, frozenset[str] | None] = {}
    for selection in selections:
        for name, found in selection.items():
            if name in merged:
                before = merged[name]
                merged[name] = None if before is None or found is None else before | found
            else:
                merged[name] = found
    return merged


@dataclass(frozen=True)
class RuleResult:
    """The outcome of one rule: whether it passed, and what it read when it did not.

    `failed` marks an evaluation error (a missing key, a type mismatch) rather than a false result.
    """

    passed: bool
    detail: str
    failed: bool = False


class CompiledRule:
    """A compiled CEL boolean expression over `customer`, `context`, `action` and `now`.

    >>> rule = CompiledRule("customer.age >= action.min_age")
    >>> rule.evaluate({"customer": {"age": 17}, "action": {"min_age": 18}})
    RuleResult(passed=False, detail='customer.age >= action.min_age is false', failed=False)

    A rule that cannot be evaluated (a missing key, a type mismatch) does not pass: constraints fail closed.

    >>> rule.evaluate({"customer": {}, "action": {"min_age": 18}}).passed
    False
    """

    def __init__(self, source: str, variables: frozenset[str] = RULE_VARIABLES,
                 attributes: Mapping[str, Any] | None = None) -> None:
        """`attributes`: the action's, written into the rule (see `with_action`) when given."""
        if not source.strip():
            raise RuleCompileError("the expression is empty")
        try:
            self._program = cel.compile(source)
        except ValueError as exc:
            raise RuleCompileError(f"does not compile: {exc}") from exc
        self.names = frozenset(self._program.variables()) - (bound_names(source) - variables) - CEL_BUILTIN_NAMES
        unknown = self.names - variables
        if unknown:
            raise RuleCompileError(
                f"unknown variable(s) {sorted(unknown)}: use only {sorted(variables)}"
            )
        self.source = source
        self.selection: Selection = selected_fields(source, self.names - {"action"})
        # The action's attributes the rule reads (None: all of them), converted for each evaluation
        self.action_fields = selected_fields(source, ["action"])["action"] if "action" in self.names else None
        if attributes is not None and "action" in self.names:
            folded = _folded_program(source, attributes)
            if folded is not None:
                self._program, self.names = folded, self.names - {"action"}

    def check_functions(self, attributes: Mapping[str, Any] | None = None) -> None:
        """Refuse a rule that calls a function the CEL runtime does not define (it could never pass), or whose
        evaluation could cost more than MAX_RULE_NS on the largest inputs, given the action's `attributes`.

        Checked when a client saves a rule, not when a stored one is loaded: a stored rule keeps loading
        (and fails closed at decide time, excluding its action) rather than stop the whole catalog.
        """
        unknown = {name for name in self._program.functions() if name[0].isalpha()} - CEL_FUNCTIONS
        if unknown:
            raise RuleCompileError(f"unknown function(s) {sorted(unknown)}: CEL's standard functions are "
                                   f"{', '.join(sorted(CEL_FUNCTIONS))}")
        tokens = _tokens(self.source)
        known = dict(attributes or {})
        converted = []  # what each evaluation of a rule reading `action` converts for it alone
        if "action" in self.names and _folded_program(self.source, known) is None:
            converted = [shape_of(self._action_input(known))]
            converted += [selected_shape(name, self.selection.get(name)) for name in self.names - {"action"}]
        try:
            cost = estimate(self.source, shape_of(known), converted)
        except RecursionError:
            raise RuleCompileError(f"nested more than {MAX_TREE_DEPTH} operations deep") from None
        if cost.depth > MAX_DEPTH:
            raise RuleCompileError(f"comprehensions nested {cost.depth} deep: at most {MAX_DEPTH} (each level "
                                   "multiplies the work of every decision by the length of its list)")
        if cost.ns > MAX_RULE_NS:
            raise RuleCompileError(
                f"could take up to {cost.ns / 1e6:,.1f} ms an evaluation on the largest inputs the service accepts "
                f"(lists of 100 strings of 1,024 characters, 256 keys of `context` or `action`, 1,024 properties "
                f"of `customer`): at most {MAX_RULE_NS / 1e6:,.0f} ms, as every decision pays it for this action; "
                f"comprehensions nested in others, `map` and `filter` over large ranges, copies of whole "
                f"maps or lists (`+`, list literals, selecting a list) and, in a rule that reads `action`, reading "
                f"all of `customer` or `context` (converted again for each action) cost the most"
            )
        zoned = sorted({tokens[i + 1][1] for i in range(len(tokens) - 3)
                        if tokens[i][1] == "." and tokens[i + 1][1] in TIMESTAMP_ACCESSORS
                        and tokens[i + 2][1] == "(" and tokens[i + 3][1] != ")"})
        if zoned:
            raise RuleCompileError(f"{', '.join(zoned)} with a time zone: this CEL runtime reads times in UTC only "
                                   f"(`now.getHours()` is the hour in UTC)")

    def check_trial(self, attributes: Mapping[str, Any], now: datetime) -> None:
        """Refuse a rule whose outcome is known at save and is a failure: one that reads neither `customer` nor
        `context` is evaluated on the action's own attributes and the current time, and an error there (an
        attribute the action does not have, `duration('1d')`, mixed types) would exclude the action from every
        decision. A rule that reads customer data or context is not tried: what a decision reads may differ.
        Checked when a client saves a rule, as `check_functions`.
        """
        if self.names & {"customer", "context"}:
            return
        result = self._run({"action": dict(attributes), "now": now})
        if result.failed:
            raise RuleCompileError(f"the expression is not a condition that can pass: {result.detail}")

    def evaluate(self, variables: Mapping[str, Any]) -> RuleResult:
        return self._run(dict(variables))

    def evaluate_for(self, inputs: RuleInputs, action: Mapping[str, Any]) -> RuleResult:
        """Evaluate for one action; a rule that does not read `action` uses the decision's shared inputs.

        Inputs may hold only what the catalog's rules select; should this rule fail on them, it is evaluated
        again on every variable, so the selection can never change a rule's outcome.
        """
        result = self._evaluate(inputs, action)
        if result.failed and inputs.partial:
            result = self._evaluate(inputs.complete(), action)
        return result

    def _evaluate(self, inputs: RuleInputs, action: Mapping[str, Any]) -> RuleResult:
        if "action" not in self.names:
            try:
                shared = inputs.shared()
            except Exception as exc:  # a value CEL cannot represent: fail closed, as for any evaluation error
                return RuleResult(False, f"{self.source} could not be evaluated: {exc}", failed=True)
            return self._run(shared)
        # Converted for this evaluation alone: adding a variable to the shared, converted inputs would convert
        # all of them again.
        values = {name: inputs.variables[name] for name in self.names if name in inputs.variables}
        values["action"] = self._action_input(action)
        return self._run(values)

    def _action_input(self, action: Mapping[str, Any]) -> dict[str, Any]:
        fields = self.action_fields
        return dict(action) if fields is None else {name: action[name] for name in fields if name in action}

    def _run(self, variables: dict[str, Any] | cel.Context) -> RuleResult:
        try:
            value = self._program.execute(variables)
        except KeyError as exc:
            return RuleResult(False, f"{self.source} could not be evaluated: no such key {exc}", failed=True)
        except Exception as exc:  # CEL runtime errors are not a stable exception type
            return RuleResult(False, f"{self.source} could not be evaluated: {exc}", failed=True)
        if value is True:
            return RuleResult(True, f"{self.source} is true")
        if value is False:
            return RuleResult(False, f"{self.source} is false")
        # the type only: the value may be a whole map, and the detail is stored with the decision
        return RuleResult(False, f"{self.source} evaluated to a {type(value).__name__}, not a bool", failed=True)


def fold_action(node: Node, attributes: Mapping[str, Any], shadowed: bool = False) -> Node:
    """`node` with the action's attributes written in as literals: `action.tier` becomes `"gold"`,
    `has(action.tier)` `true`, `action` a map literal, and an attribute the action lacks `{}.name` (an error, as
    reading it was). A rule that reads `action` then needs only the decision's inputs, converted once for every
    rule, where adding the action to them would convert them all again. `shadowed`: inside a comprehension that
    binds the name `action`."""
    def is_action(n: Node | None) -> bool:
        return n is not None and n.kind == "ident" and n.text == "action" and not shadowed

    if is_action(node):
        return Node("map", "{}", None, tuple(x for k, v in attributes.items() for x in (literal(k), literal(v))))
    if node.kind == "select" and is_action(node.target):
        return literal(attributes[node.text]) if node.text in attributes else Node("select", node.text, Node("map"))
    if (node.kind == "call" and node.text == "has" and node.target is None and len(node.args) == 1
            and node.args[0].kind == "select" and is_action(node.args[0].target)):
        return literal(node.args[0].text in attributes)
    target = fold_action(node.target, attributes, shadowed) if node.target is not None else None
    args = node.args
    if node.kind == "call" and node.target is not None and node.text in _MACROS and args and args[0].kind == "ident":
        inner = shadowed or args[0].text == "action"
        args = (args[0], *[fold_action(arg, attributes, inner) for arg in args[1:]])
    else:  # a list, not a generator: no C frames between the levels of a deep tree
        args = tuple([fold_action(arg, attributes, shadowed) for arg in args])
    return Node(node.kind, node.text, target, args)


MAX_FOLDED_CHARS = 256 * 1024  # a rule with the action written in, at most (compiled when the catalog loads)


def _folded_program(source: str, attributes: Mapping[str, Any]) -> Any:
    """The rule compiled with the action's attributes written in, or None when they cannot be (a value with no
    CEL literal, a rule too deeply nested to rewrite): it then reads `action` at each evaluation."""
    try:
        folded = render(fold_action(parse(source), attributes))
        if len(folded) > MAX_FOLDED_CHARS:
            return None
        program = cel.compile(folded)
    except (RuleCompileError, ValueError, RecursionError):
        return None
    return program if "action" not in set(program.variables()) - bound_names(folded) else None


class RuleInputs:
    """One decision's rule variables (`customer`, `context`, `now`), converted to CEL at most once.

    Converting variables costs far more than evaluating a compiled rule, so every rule that does not read
    `action` shares one converted context; a rule that does gets only the variables it names.
    """

    def __init__(
        self, variables: Mapping[str, Any], complete: Callable[[], Mapping[str, Any]] | None = None
    ) -> None:
        """`variables` may be a selection of the decision's variables; `complete` then builds all of them."""
        self.variables = variables
        self._complete = complete
        self._complete_inputs: RuleInputs | None = None
        self._shared: cel.Context | None = None

    @property
    def partial(self) -> bool:
        return self._complete is not None

    def complete(self) -> RuleInputs:
        """Inputs with every variable (built once, on the first rule the selection could not serve)."""
        if self._complete is None:
            return self
        if self._complete_inputs is None:
            self._complete_inputs = RuleInputs(self._complete())
        return self._complete_inputs

    def shared(self) -> cel.Context:
        if self._shared is None:
            self._shared = cel.Context(variables=dict(self.variables))
        return self._shared
