"""CEL's grammar, parsed into a syntax tree: what the rule cost estimate walks.

The CEL runtime compiles an expression but shows none of its structure, so what a rule may cost is read from
this parse. It follows the CEL language definition (the `cel-spec` grammar): every expression the runtime
accepts parses here, or is refused with the reason (message construction, which the runtime cannot evaluate).
"""

from __future__ import annotations

import re
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
    node = parser.expr()
    if parser.pos != len(tokens):
        raise RuleCompileError(f"does not compile: unexpected {tokens[parser.pos][1]!r}")
    return node


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
