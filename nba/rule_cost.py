"""The most a rule's evaluation may cost, estimated when a client saves it, so that no rule can stall decisions.

Every decision evaluates each candidate's rule, on inputs a client controls (a request's context, a customer's
event properties), so a rule is refused at save when its worst case on the largest inputs the service accepts
exceeds `MAX_RULE_NS`. The estimate walks the rule's syntax tree with, for each value, a bound on its shape
(items, characters, what its items are) and prices what the CEL runtime does, as measured on it
(`bench/rule_cost.py` times rules on their worst inputs against the estimate): a comprehension runs its body
once per item, `map` and `filter` copy their growing result at every step, selecting a field copies its value,
`+` copies both operands, `==` and `in` compare item by item, and `matches` compiles its pattern at every call
(a pattern of 100 `\\w` took 20 ms), so a pattern must be a literal and is priced by what it holds.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from nba.cel_syntax import Node, parse, string_value
from nba.errors import RuleCompileError

# CPython's own parser of regular expressions (Python 3.11 and later), to read a `matches` pattern's structure
_regex_parser: Any = importlib.import_module("re._parser")
_regex: Any = importlib.import_module("re._constants")

# A rule whose estimated worst case exceeds this is refused: every decision pays it once for each candidate action
# with the rule. The estimate is an upper bound (it takes every `exists` to run to its end and every input at its
# largest); two comprehensions over lists each nested in another (2 x 10,000 steps, about 5 ms on the largest
# lists) stay under it, three do not.
MAX_RULE_NS = 8_000_000
MAX_DEPTH = 2  # comprehensions nested deeper are refused whatever their ranges

# What the runtime spends, in nanoseconds (measured on the CEL runtime, upper ends of repeated runs).
NODE_NS = 25  # evaluating any operator, name or literal
STEP_NS = 150  # one step of a comprehension, besides its body
ITEM_NS = 20  # copying or comparing one item of a list or map
ENTRY_NS = 20  # and hashing a map's entry
CHARS_PER_NS = 32  # characters copied or compared per nanosecond
APPEND_NS = 100  # a step of `map` or `filter` copies each item its result holds so far,
APPEND_COPIES = 4  # at up to four times the cost of another copy (130 ms for 100 lists of 100 strings)
CONVERT_NS = 1_000  # converting one item of a variable to CEL
REGEX_NS = 4_500  # compiling the smallest pattern
TEXT_MATCH_NS = 20  # matching one character of text
WIDE_MATCH_NS = 64  # and for each position of a pattern with wide atoms


@dataclass(frozen=True)
class Shape:
    """An upper bound on a value: at most `items` items if it is a list or map, `chars` characters if a string
    or bytes, `item` what its items (a map's values) may be and `key` its keys (None: it has none), `fields`
    known fields of a map (selecting any other gives `item`)."""

    items: int = 0
    chars: int = 0
    item: Shape | None = None
    key: Shape | None = None
    fields: Mapping[str, Shape] = field(default_factory=dict)
    total_items: int | None = None  # items it holds at every level together, when bounded more tightly
    is_map: bool = False  # certainly a map (a comprehension over it binds its keys only)

    @cached_property
    def copy_ns(self) -> int:
        """What copying (or comparing) it whole may cost."""
        inner = max([0] + [(s.copy_ns if s else 0) for s in (self.item, *self.fields.values())])
        per_item = ITEM_NS + inner + (self.key.copy_ns + ENTRY_NS if self.key else 0)
        whole = self.items * per_item
        if self.total_items is not None:
            whole = min(whole, self.total_items * (ITEM_NS + self.chars // CHARS_PER_NS))
        return NODE_NS + self.chars // CHARS_PER_NS + whole

    @cached_property
    def element(self) -> Shape:
        """What a comprehension over it binds: a list's items or a map's keys."""
        return self.key or SCALAR if self.is_map else join(self.item, self.key)

    @cached_property
    def convert_ns(self) -> int:
        """What converting it to a CEL value may cost."""
        items = self.total_items if self.total_items is not None else _count(self)
        return CONVERT_NS * (1 + items) + self.chars // CHARS_PER_NS


def _count(shape: Shape) -> int:
    inner = max([0] + [_count(s) for s in (shape.item, *shape.fields.values()) if s is not None])
    return shape.items * (1 + inner)


SCALAR = Shape()


def join(*shapes: Shape | None) -> Shape:
    """A bound on a value that may be any of `shapes`."""
    present = [s for s in shapes if s is not None]
    if not present:
        return SCALAR
    if len(present) == 1:
        return present[0]
    items = [s.item for s in present if s.item is not None]
    keys = [s.key for s in present if s.key is not None]
    fields: dict[str, Shape] = {}
    for shape in present:
        for name, value in shape.fields.items():
            fields[name] = join(fields.get(name), value)
    totals = [s.total_items for s in present]
    return Shape(
        items=max(s.items for s in present), chars=max(s.chars for s in present),
        item=join(*items) if items else None, key=join(*keys) if keys else None, fields=fields,
        total_items=None if None in totals else max(t for t in totals if t is not None),
        is_map=all(s.is_map for s in present),
    )


def _text(chars: int) -> Shape:
    return Shape(chars=chars)


# The largest inputs the service accepts: strings of 1,024 characters, lists of 100 of them, 256 keys of 128
# characters in a request's context or an action's attributes; a customer holds up to 1,024 properties (256 KiB
# of them in all) besides `id`, `event_counts` and `last_event_at` (one entry per event type).
_KEY = _text(128)
_TEXT = _text(1024)
_VALUE = join(SCALAR, _TEXT, Shape(items=100, item=_TEXT))
_FLAT_MAP = Shape(items=256, key=_KEY, item=_VALUE, is_map=True)
_EVENT_TYPES = 1024
_CUSTOMER_ITEMS = 256 * 1024 // 4 + 3 * _EVENT_TYPES  # the most items 256 KiB of JSON can hold, and the maps
VARIABLES: Mapping[str, Shape] = {
    "context": _FLAT_MAP,
    "action": _FLAT_MAP,
    "customer": Shape(
        items=1024 + 3, key=_KEY, item=_VALUE, total_items=_CUSTOMER_ITEMS, is_map=True,
        fields={"id": _KEY, "event_counts": Shape(items=_EVENT_TYPES, key=_KEY, item=SCALAR, is_map=True),
                "last_event_at": Shape(items=_EVENT_TYPES, key=_KEY, item=SCALAR, is_map=True)},
    ),
    "now": SCALAR,
}

_COMPREHENSIONS = frozenset({"all", "exists", "exists_one", "map", "filter"})
_STRING_SCANS = frozenset({"contains", "startsWith", "endsWith", "size"})


@dataclass(frozen=True)
class Estimate:
    """A rule's worst case: nanoseconds per evaluation, and how deep its comprehensions nest."""

    ns: int
    depth: int


def estimate(source: str, action: Shape | None = None, converted: Iterable[Shape] = ()) -> Estimate:
    """The worst-case cost of evaluating `source` when the action's attributes are bounded by `action` (any
    action's when None), adding the conversion of `converted`, what each evaluation converts for this rule alone
    (a rule that reads `action`: the action's attributes and what it reads of the decision's inputs; the others
    share inputs converted once a decision).

    >>> estimate("customer.age >= 18")  # `age` may be a list of 100 strings, and selecting it copies it
    Estimate(ns=7882, depth=0)
    >>> estimate("context.tags.all(a, context.tags.all(b, a != b))")
    Estimate(ns=3626032, depth=2)
    """
    walker = _Walker()
    scope = dict(VARIABLES)
    if action is not None:
        scope["action"] = action
    ns, result = walker.walk(parse(source), scope, 0)
    # a result that is not a bool (a rule that is only `context`) is converted back to Python before it fails
    back = result.convert_ns if result.items or result.chars else 0
    return Estimate(ns + back + sum(shape.convert_ns for shape in converted), walker.depth)


def selected_shape(name: str, fields: Iterable[str] | None) -> Shape:
    """A bound on the part of variable `name` a rule selects: the given fields, or all of it (None)."""
    whole = VARIABLES.get(name, SCALAR)
    if fields is None:
        return whole
    chosen = {field: _field(whole, field) for field in fields}
    return Shape(items=len(chosen), key=whole.key, item=join(*chosen.values()) if chosen else None, fields=chosen)


def shape_of(value: Any) -> Shape:
    """The shape of a known value (an action's attributes)."""
    if isinstance(value, str | bytes):
        return _text(len(value))
    if isinstance(value, Mapping):
        fields = {str(k): shape_of(v) for k, v in value.items()}
        keys = [shape_of(k) for k in value]
        return Shape(items=len(value), key=join(*keys) if keys else None,
                     item=join(*fields.values()) if fields else None, fields=fields, is_map=True)
    if isinstance(value, list | tuple):
        return Shape(items=len(value), item=join(*map(shape_of, value)) if value else None)
    return SCALAR


class _Walker:
    def __init__(self) -> None:
        self.depth = 0
        # Names bound to the keys of a map (a variable or a field of one: distinct keys), with how many there may
        # be: `m[k]` inside `customer.all(k, ...)` reads each value of `m` once over the comprehension, so its
        # copies cost at most a copy of `m` in all.
        self.keys_of: dict[str, int] = {}
        self.bound: list[str] = []

    def walk(self, node: Node, scope: dict[str, Shape], depth: int) -> tuple[int, Shape]:
        """(worst-case nanoseconds, shape of the result) of one expression."""
        handler = getattr(self, f"_{node.kind}")
        result: tuple[int, Shape] = handler(node, scope, depth)
        return result

    def _all(self, nodes: tuple[Node, ...], scope: dict[str, Shape], depth: int) -> tuple[int, list[Shape]]:
        total = 0
        shapes = []
        for node in nodes:
            ns, shape = self.walk(node, scope, depth)
            total += ns
            shapes.append(shape)
        return total, shapes

    def _literal(self, node: Node, scope: dict[str, Shape], depth: int) -> tuple[int, Shape]:
        text = node.text
        if text[:1] in "'\"rRbB":
            return NODE_NS, _text(len(string_value(text)))
        return NODE_NS, SCALAR

    def _ident(self, node: Node, scope: dict[str, Shape], depth: int) -> tuple[int, Shape]:
        shape = scope.get(node.text, SCALAR)
        if node.text == "action" and node.text not in self.bound:  # written in as a map literal, built each time
            return NODE_NS + shape.copy_ns, shape
        return NODE_NS, shape

    def _select(self, node: Node, scope: dict[str, Shape], depth: int) -> tuple[int, Shape]:
        assert node.target is not None
        ns, target = self.walk(node.target, scope, depth)
        value = _field(target, node.text)
        return ns + NODE_NS + value.copy_ns, value

    def _index(self, node: Node, scope: dict[str, Shape], depth: int) -> tuple[int, Shape]:
        assert node.target is not None
        ns, target = self.walk(node.target, scope, depth)
        key_ns, key = self.walk(node.args[0], scope, depth)
        literal = node.args[0]
        if literal.kind == "literal" and literal.text[:1] in "'\"rR":
            value = _field(target, string_value(literal.text))
        else:
            value = join(target.item, *target.fields.values())
        copy_ns = value.copy_ns
        keys = self.keys_of.get(literal.text) if literal.kind == "ident" else None
        if keys and literal.text not in _names(node.target):
            copy_ns = min(copy_ns, target.copy_ns // keys + NODE_NS)
        return ns + key_ns + NODE_NS + key.chars // CHARS_PER_NS + copy_ns, value

    def _list(self, node: Node, scope: dict[str, Shape], depth: int) -> tuple[int, Shape]:
        ns, shapes = self._all(node.args, scope, depth)
        copies = sum(shape.copy_ns for shape in shapes)
        return ns + copies + NODE_NS, Shape(items=len(shapes), item=join(*shapes) if shapes else None)

    def _map(self, node: Node, scope: dict[str, Shape], depth: int) -> tuple[int, Shape]:
        ns, shapes = self._all(node.args, scope, depth)
        copies = sum(shape.copy_ns for shape in shapes)
        keys, values = shapes[0::2], shapes[1::2]
        fields = {string_value(k.text): v for k, v in zip(node.args[0::2], values, strict=True)
                  if k.kind == "literal" and k.text[:1] in "'\"rR"}
        return ns + copies + NODE_NS, Shape(items=len(keys), key=join(*keys) if keys else None,
                                            item=join(*values) if values else None, fields=fields, is_map=True)

    def _cond(self, node: Node, scope: dict[str, Shape], depth: int) -> tuple[int, Shape]:
        condition_ns, _ = self.walk(node.args[0], scope, depth)
        then_ns, then = self.walk(node.args[1], scope, depth)
        else_ns, otherwise = self.walk(node.args[2], scope, depth)
        return condition_ns + max(then_ns, else_ns) + NODE_NS, join(then, otherwise)

    def _op(self, node: Node, scope: dict[str, Shape], depth: int) -> tuple[int, Shape]:
        ns, shapes = self._all(node.args, scope, depth)
        ns += NODE_NS
        operator = node.text
        if len(shapes) == 1 or operator in ("&&", "||", "-", "*", "/", "%"):
            return ns, SCALAR
        left, right = shapes
        if operator == "+":
            joined = Shape(items=left.items + right.items, chars=left.chars + right.chars,
                           item=join(left.item, right.item))
            return ns + joined.copy_ns * 3 // 2, joined  # a new list: 100 ns an item of a 1,024-character string
        if operator == "in":  # a scan of a list, comparing the left operand with each item; a map is hashed
            return ns + right.items * min(left.copy_ns, right.element.copy_ns) + left.copy_ns, SCALAR
        return ns + min(left.copy_ns, right.copy_ns), SCALAR  # comparisons stop at the shorter operand

    def _call(self, node: Node, scope: dict[str, Shape], depth: int) -> tuple[int, Shape]:
        name = node.text
        if node.target is not None and name in _COMPREHENSIONS and node.args and node.args[0].kind == "ident":
            return self._comprehension(node, scope, depth)
        if node.target is None and name == "has" and len(node.args) == 1 and node.args[0].target is not None:
            ns, _ = self.walk(node.args[0].target, scope, depth)
            return ns + NODE_NS, SCALAR
        operands = ((node.target,) if node.target is not None else ()) + node.args
        ns, shapes = self._all(operands, scope, depth)
        ns += NODE_NS
        if name == "matches":
            return ns + self._matches(operands, shapes), SCALAR
        if name in _STRING_SCANS:
            return ns + sum(shape.chars for shape in shapes) // CHARS_PER_NS, SCALAR
        if name in ("string", "bytes"):
            chars = max([32] + [shape.chars for shape in shapes])
            return ns + chars // CHARS_PER_NS, _text(chars)
        if name in ("int", "uint", "double", "timestamp", "duration", "type"):
            return ns + sum(shape.chars for shape in shapes) // CHARS_PER_NS, SCALAR
        if name in ("dyn", "of", "ofNonZeroValue", "value", "or", "orValue"):
            result = join(*shapes)
            return ns + result.copy_ns, result
        return ns, SCALAR  # timestamp accessors, hasValue, none and the like

    def _comprehension(self, node: Node, scope: dict[str, Shape], depth: int) -> tuple[int, Shape]:
        assert node.target is not None
        range_ns, over = self.walk(node.target, scope, depth)
        depth += 1
        self.depth = max(self.depth, depth)
        name = node.args[0].text
        inner = {**scope, name: over.element}
        outer = self.keys_of.pop(name, None)
        path = _names(node.target, path=True)
        if over.is_map and path and path[0] in VARIABLES and path[0] not in self.bound:
            self.keys_of[name] = over.items
        self.bound.append(name)
        ns, shapes = self._all(node.args[1:], inner, depth)
        self.bound.pop()
        self.keys_of.pop(name, None)
        if outer is not None:
            self.keys_of[name] = outer
        steps = over.items
        total = range_ns + NODE_NS + steps * (STEP_NS + ns)
        if node.text == "map":
            result = Shape(items=steps, item=shapes[-1] if shapes else SCALAR)
        elif node.text == "filter":
            result = Shape(items=steps, item=over.element)
        else:
            return total, SCALAR
        assert result.item is not None
        # each step copies the result so far: the sum of 0, 1, ..., steps - 1 items
        total += steps * (steps - 1) // 2 * (APPEND_NS + APPEND_COPIES * result.item.copy_ns)
        return total, result

    @staticmethod
    def _matches(operands: tuple[Node, ...], shapes: list[Shape]) -> int:
        if len(operands) != 2:
            return 0
        pattern = operands[1]
        if pattern.kind != "literal" or pattern.text[:1] not in "'\"rR":
            raise RuleCompileError(
                "matches() with a pattern that is not a string literal: the pattern is compiled at every "
                "evaluation, and one built from data may take seconds; write the pattern in the rule")
        return regex_ns(string_value(pattern.text), shapes[0].chars)


def _names(node: Node, path: bool = False) -> list[str]:
    """The names an expression reads; with `path`, the names of a variable's path (`customer.event_counts`)
    and an empty list for anything else."""
    if path:
        if node.kind == "ident":
            return [node.text]
        if node.kind == "select" and node.target is not None:
            head = _names(node.target, path=True)
            return head + [node.text] if head else []
        return []
    found = [node.text] if node.kind == "ident" else []
    for child in ((node.target,) if node.target is not None else ()) + node.args:
        found += _names(child)
    return found


def _field(target: Shape, name: str) -> Shape:
    return target.fields.get(name) or target.item or SCALAR


# What a pattern's parts cost to compile, relative to a literal character (measured: 100 `\w` took 20 ms, 10 `.`
# 46 us, 100 `[a-z0-9_]` 82 us, 1,000 `a` 43 us): classes of Unicode letters or digits compile to large automata.
_UNICODE_PROPERTY = re.compile(r"\\[pP](?:\{[^}]*\}|[A-Za-z])")
_CATEGORY_COST = {"CATEGORY_WORD": 5_000, "CATEGORY_NOT_WORD": 5_000, "CATEGORY_DIGIT": 400,
                  "CATEGORY_NOT_DIGIT": 400, "CATEGORY_SPACE": 100, "CATEGORY_NOT_SPACE": 100}
_PER_UNIT_NS = 40


def regex_ns(pattern: str, text_chars: int = 0) -> int:
    """What compiling a `matches` pattern and matching it on a text of `text_chars` characters may cost.

    Matching is linear in the text while the pattern is small and narrow; one that holds wide atoms (`.`, a
    negated or Unicode class, `\\b`) is matched by automata whose work also grows with the pattern's positions
    (`.{1000}x` on 1,024 characters: 16 ms; `(?:.?){1500}x`: 121 ms)."""
    readable = _UNICODE_PROPERTY.sub(r"\\w", pattern)  # as large as a class of letters
    try:
        parsed = _regex_parser.parse(readable)
    except (re.error, OverflowError, RecursionError) as exc:
        raise RuleCompileError(f"matches() pattern {pattern!r} cannot be read: {exc}") from exc
    items = list(parsed)
    size = _regex_size(items, ignore_case=bool(parsed.state.flags & re.I))
    per_char = TEXT_MATCH_NS + (size.positions * WIDE_MATCH_NS if size.wide else 0)
    widest = parsed.getwidth()[1]
    anchored = (items and str(items[0][0]) == "AT" and "BEGINNING" in str(items[0][1])
                and not parsed.state.flags & re.M and widest < _regex.MAXREPEAT)
    scanned = min(text_chars, widest) if anchored else text_chars  # `^` and a bounded width: a prefix at most
    return REGEX_NS + _PER_UNIT_NS * size.units + scanned * per_char


@dataclass(frozen=True)
class _RegexSize:
    units: int = 0  # compile work, in literal characters
    positions: int = 0  # places in the pattern a match may be at (an optional or ranged repeat counts twice)
    wide: bool = False  # holds an atom matching much of Unicode, or a word boundary

    def __add__(self, other: _RegexSize) -> _RegexSize:
        return _RegexSize(self.units + other.units, self.positions + other.positions, self.wide or other.wide)

    def times(self, count: int, optional: bool) -> _RegexSize:
        return _RegexSize(self.units * count, self.positions * count * (2 if optional else 1), self.wide)


def _regex_size(items: list[tuple[Any, Any]], ignore_case: bool) -> _RegexSize:
    total = _RegexSize()
    for opcode, value in items:
        name = str(opcode)
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, high, sub = value
            times = high if high != _regex.MAXREPEAT else low + 1
            total += _regex_size(list(sub), ignore_case).times(max(times, 1), optional=low != high)
        elif name == "SUBPATTERN":  # (group, flags added, flags removed, pattern): `(?i:...)` scopes a flag
            _, added, removed, sub = value
            scoped = (ignore_case or bool(added & re.I)) and not removed & re.I
            total += _regex_size(list(sub), scoped)
        elif name == "ATOMIC_GROUP":
            total += _regex_size(list(value), ignore_case)
        elif name == "BRANCH":
            for sub in value[1]:
                total += _RegexSize(5) + _regex_size(list(sub), ignore_case)
        elif name in ("ASSERT", "ASSERT_NOT"):
            total += _regex_size(list(value[1]), ignore_case)
        elif name == "IN":
            total += _class_size(value, ignore_case)
        elif name == "CATEGORY":
            total += _RegexSize(_CATEGORY_COST.get(str(value), 100), 1, True)
        elif name in ("ANY", "NOT_LITERAL"):
            total += _RegexSize(100, 1, True)  # any character but one: a class of all of Unicode
        elif name == "AT":  # \b and \B look at Unicode word characters
            total += _RegexSize(250, 1, True) if "BOUNDARY" in str(value) else _RegexSize(1)
        else:
            total += _RegexSize(2 if ignore_case else 1, 1)
    return total


def _class_size(members: list[tuple[Any, Any]], ignore_case: bool) -> _RegexSize:
    units = 0
    wide = False
    for opcode, value in members:
        kind = str(opcode)
        if kind == "NEGATE":
            units, wide = units + 100, True
        elif kind == "CATEGORY":
            units, wide = units + _CATEGORY_COST.get(str(value), 100), True
        elif kind == "RANGE":
            low, high = value
            wide = wide or high > 0x7F
            # case folding walks the range: all of Unicode took 3.3 ms, U+0100 to U+FFFF 1 ms
            units += 10 + ((high - low) // 2 if ignore_case else 0)
        else:
            units += 10
    return _RegexSize(units * (4 if ignore_case else 1), 1, wide)
