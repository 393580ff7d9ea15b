"""CEL's grammar, parsed into a syntax tree: what the rule cost estimate walks.

The CEL runtime compiles an expression but shows none of its structure, so what a rule may cost is read from
this parse. It follows the CEL language definition (the `cel-spec` grammar): every expression the runtime
accepts parses here, or is refused with the reason (message construction, which the runtime cannot evaluate).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field

from nba.errors import RuleCompileError

_Q3 = ("'" * 3, '"' * 3)
_RAW = "|".join([f"{q}.*?{q}" for q in _Q3] + [r"'[^'\n\r]*'", r'"[^"\n\r]*"'])
_COOKED = "|".join([rf"{q}(?:\\.|[^\\])*?{q}" for q in _Q3] + [r"'(?:\\.|[^'\\\n\r])*'", r'"(?:\\.|[^"\\\n\r])*"'])
_TOKEN = re.compile(
    rf"(?P<string>(?:[rR][bB]?|[bB][rR])(?:{_RAW})|[bB]?(?:{_COOKED}))"
    r"|(?P<comment>//[^\n]*)|(?P<space>\s+)"
    r"|(?P<number>0[xX][0-9a-fA-F]+[uU]?|(?:[0-9]+\.[0-9]+|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+"
    r"|[0-9]+[uU]?)"
    r"|(?P<ident>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>&&|\|\||<=|>=|==|!=|[-!<>+*/%?:.,()\[\]{}])"
    r"|(?P<other>.)",
    re.S,
)
_RELATIONS = frozenset({"<", "<=", ">", ">=", "==", "!=", "in"})
_LITERAL_WORDS = frozenset({"true", "false", "null"})


@dataclass(frozen=True)
class Node:
    """One expression: `kind` is literal, ident, select, index, call, list, map, op or cond.

    `text` holds a literal's source, a name, a selected field, a function or an operator; `target` is the
    receiver of `a.f(...)`, `a.f` or `a[i]`; `args` the operands, items or arguments (a map's as key, value pairs).
    """

    kind: str
    text: str = ""
    target: Node | None = None
    args: tuple[Node, ...] = field(default=())


def string_value(literal: str) -> str:
    """The text a CEL string literal denotes, as far as the cost estimate needs it (escapes decoded when they
    can be, the literal's body otherwise)."""
    prefix = re.match(r"[rRbB]*", literal)
    head = prefix.group() if prefix else ""
    body = literal[len(head):]
    quote = 3 if body[:3] in _Q3 else 1
    body = body[quote:-quote]
    if "r" in head.lower():
        return body
    try:
        return body.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except (UnicodeDecodeError, ValueError):
        return body


def parse(source: str) -> Node:
    """The syntax tree of a CEL expression; RuleCompileError for what is not one."""
    tokens = []
    for match in _TOKEN.finditer(source):
        kind = match.lastgroup or "other"
        if kind in ("space", "comment"):
            continue
        if kind == "other":
            raise RuleCompileError(f"does not compile: unexpected {match.group()!r}")
        tokens.append((kind, match.group()))
    parser = _Parser(tokens)
    try:
        node = parser.expr()
    except RecursionError:
        node = None
    if node is None or _depth(node) > MAX_TREE_DEPTH:
        raise RuleCompileError(f"nested more than {MAX_TREE_DEPTH} operations deep")
    if parser.pos != len(tokens):
        raise RuleCompileError(f"does not compile: unexpected {tokens[parser.pos][1]!r}")
    return node


# What the walks over a tree (the cost estimate, the action written in) can recurse through: a 4,096-character
# rule holds up to about 2,000 operations in a chain (`a || b || ...`), which the CEL runtime evaluates.
MAX_TREE_DEPTH = 2_500
sys.setrecursionlimit(max(sys.getrecursionlimit(), 4 * MAX_TREE_DEPTH + 1_000))


def _depth(root: Node) -> int:
    """How deep a tree nests, found without recursion."""
    deepest = 0
    stack = [(root, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in ((node.target,) if node.target else ()) + node.args)
    return deepest


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self, ahead: int = 0) -> str:
        at = self.pos + ahead
        return self.tokens[at][1] if at < len(self.tokens) else ""

    def take(self, expected: str | None = None) -> tuple[str, str]:
        if self.pos >= len(self.tokens):
            raise RuleCompileError("does not compile: the expression ends too soon")
        token = self.tokens[self.pos]
        if expected is not None and token[1] != expected:
            raise RuleCompileError(f"does not compile: expected {expected!r}, found {token[1]!r}")
        self.pos += 1
        return token

    def expr(self) -> Node:
        condition = self.binary(0)
        if self.peek() != "?":
            return condition
        self.take("?")
        then = self.binary(0)
        self.take(":")
        return Node("cond", "?:", None, (condition, then, self.expr()))

    _LEVELS: tuple[frozenset[str], ...] = (
        frozenset({"||"}), frozenset({"&&"}), _RELATIONS, frozenset({"+", "-"}), frozenset({"*", "/", "%"}),
    )

    def binary(self, level: int) -> Node:
        if level == len(self._LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while self.pos < len(self.tokens) and self.tokens[self.pos][0] in ("op", "ident") \
                and self.peek() in self._LEVELS[level]:
            operator = self.take()[1]
            left = Node("op", operator, None, (left, self.binary(level + 1)))
        return left

    def unary(self) -> Node:
        if self.peek() in ("!", "-") and self.tokens[self.pos][0] == "op":
            operator = self.take()[1]
            return Node("op", operator, None, (self.unary(),))
        return self.member()

    def member(self) -> Node:
        node = self.primary()
        while True:
            if self.peek() == "." and self.tokens[self.pos][0] == "op":
                self.take(".")
                kind, name = self.take()
                if kind != "ident":
                    raise RuleCompileError(f"does not compile: a field name expected after '.', found {name!r}")
                if self.peek() == "(":
                    node = Node("call", name, node, self.arguments(")"))
                elif self.peek() == "{":
                    raise RuleCompileError("message construction (`Type{...}`) is not supported by this CEL runtime")
                else:
                    node = Node("select", name, node)
            elif self.peek() == "[":
                self.take("[")
                index = self.expr()
                self.take("]")
                node = Node("index", "[]", node, (index,))
            else:
                return node

    def arguments(self, closing: str) -> tuple[Node, ...]:
        self.take()
        items: list[Node] = []
        while self.peek() != closing:
            items.append(self.expr())
            if self.peek() != closing:
                self.take(",")
        self.take(closing)
        return tuple(items)

    def primary(self) -> Node:
        kind, text = self.take()
        if kind == "op" and text == "." and self.pos < len(self.tokens) and self.tokens[self.pos][0] == "ident":
            kind, text = self.take()  # `.name`: the name in the root scope
        if kind == "ident":
            if text in _LITERAL_WORDS:
                return Node("literal", text)
            if text == "in":
                raise RuleCompileError("does not compile: `in` without a left operand")
            if self.peek() == "(":
                return Node("call", text, None, self.arguments(")"))
            if self.peek() == "{":
                raise RuleCompileError("message construction (`Type{...}`) is not supported by this CEL runtime")
            return Node("ident", text)
        if kind in ("number", "string"):
            return Node("literal", text)
        if text == "(":
            inner = self.expr()
            self.take(")")
            return inner
        if text == "[":
            self.pos -= 1
            return Node("list", "[]", None, self.arguments("]"))
        if text == "{":
            pairs: list[Node] = []
            while self.peek() != "}":
                pairs.append(self.expr())
                self.take(":")
                pairs.append(self.expr())
                if self.peek() != "}":
                    self.take(",")
            self.take("}")
            return Node("map", "{}", None, tuple(pairs))
        raise RuleCompileError(f"does not compile: unexpected {text!r}")


_LEVEL = {"||": 1, "&&": 2, **dict.fromkeys(_RELATIONS, 3), "+": 4, "-": 4, "*": 5, "/": 5, "%": 5}
_UNARY, _MEMBER = 6, 7


def _level(node: Node) -> int:
    if node.kind == "cond":
        return 0
    if node.kind == "op":
        return _UNARY if len(node.args) == 1 else _LEVEL[node.text]
    return _MEMBER


def render(node: Node) -> str:
    """CEL source for a syntax tree, with the parentheses precedence needs (what `parse` reads back as the same
    tree; the runtime refuses more than about 100 nested parentheses)."""
    kind = node.kind
    if kind in ("literal", "ident"):
        return node.text
    if kind == "list":
        return "[" + ", ".join(render(item) for item in node.args) + "]"
    if kind == "map":
        pairs = zip(node.args[0::2], node.args[1::2], strict=True)
        return "{" + ", ".join(f"{render(k)}: {render(v)}" for k, v in pairs) + "}"
    if kind == "cond":
        condition, then, otherwise = node.args
        return f"{_operand(condition, 1)} ? {_operand(then, 1)} : {render(otherwise)}"
    if kind == "op":
        if len(node.args) == 1:  # `!!a` and `--a` are CEL, `!-a` is not: a unary operand is parenthesized
            return f"{node.text}{_operand(node.args[0], _MEMBER)}"
        level = _LEVEL[node.text]
        return f"{_operand(node.args[0], level)} {node.text} {_operand(node.args[1], level + 1)}"
    arguments = ", ".join(render(arg) for arg in node.args)
    if node.target is None:
        return f"{node.text}({arguments})"
    target = _operand(node.target, _MEMBER)
    if kind == "select":
        return f"{target}.{node.text}"
    if kind == "index":
        return f"{target}[{arguments}]"
    return f"{target}.{node.text}({arguments})"


def _operand(node: Node, least: int) -> str:
    """`node` rendered as an operand that must bind at least as tightly as `least`."""
    text = render(node)
    return text if _level(node) >= least else f"({text})"


def literal(value: object) -> Node:
    """A CEL literal for a value of an action's attributes (bool, number, string, list); ValueError for others."""
    if isinstance(value, bool):
        return Node("literal", "true" if value else "false")
    if isinstance(value, int):
        if not -(2**63) < value < 2**63:
            raise ValueError(f"{value} is out of CEL's int range")
        return Node("literal", str(value)) if value >= 0 else Node("op", "-", None, (Node("literal", str(-value)),))
    if isinstance(value, float):
        text = repr(abs(value))
        if not all(c in "0123456789.e+-" for c in text):
            raise ValueError(f"{value} has no CEL literal")
        number = Node("literal", text if ("." in text or "e" in text) else text + ".0")
        return number if value >= 0 and str(value)[0] != "-" else Node("op", "-", None, (number,))
    if isinstance(value, str):
        return Node("literal", '"' + "".join(_escape(c) for c in value) + '"')
    if isinstance(value, list | tuple):
        return Node("list", "[]", None, tuple(literal(item) for item in value))
    raise ValueError(f"{type(value).__name__} has no CEL literal")


def _escape(char: str) -> str:
    if char in '"\\':
        return "\\" + char
    code = ord(char)
    if code < 0x20 or code == 0x7F or 0xD800 <= code <= 0xDFFF:
        return f"\\u{code:04x}"
    return char
