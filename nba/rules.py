"""CEL expressions for eligibility rules: compiled once when an action is saved, evaluated per decision."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cel

from nba.errors import RuleCompileError

RULE_VARIABLES = frozenset({"customer", "context", "action", "now"})


@dataclass(frozen=True)
class RuleResult:
    """The outcome of one rule: whether it passed, and what it read when it did not."""

    passed: bool
    detail: str


class CompiledRule:
    """A compiled CEL boolean expression over `customer`, `context`, `action` and `now`.

    >>> rule = CompiledRule("customer.age >= action.min_age")
    >>> rule.evaluate({"customer": {"age": 17}, "action": {"min_age": 18}})
    RuleResult(passed=False, detail='customer.age >= action.min_age is false')

    A rule that cannot be evaluated (a missing key, a type mismatch) does not pass: constraints fail closed.

    >>> rule.evaluate({"customer": {}, "action": {"min_age": 18}}).passed
    False
    """

    def __init__(self, source: str, variables: frozenset[str] = RULE_VARIABLES) -> None:
        if not source.strip():
            raise RuleCompileError("the expression is empty")
        try:
            self._program = cel.compile(source)
        except ValueError as exc:
            raise RuleCompileError(f"does not compile: {exc}") from exc
        unknown = set(self._program.variables()) - variables
        if unknown:
            raise RuleCompileError(
                f"unknown variable(s) {sorted(unknown)}: use only {sorted(variables)}"
            )
        self.source = source

    def evaluate(self, variables: Mapping[str, Any]) -> RuleResult:
        try:
            value = self._program.execute(dict(variables))
        except KeyError as exc:
            return RuleResult(False, f"{self.source} could not be evaluated: no such key {exc}")
        except Exception as exc:  # CEL runtime errors are not a stable exception type
            return RuleResult(False, f"{self.source} could not be evaluated: {exc}")
        if value is True:
            return RuleResult(True, f"{self.source} is true")
        if value is False:
            return RuleResult(False, f"{self.source} is false")
        return RuleResult(False, f"{self.source} evaluated to {value!r}, not a bool")
