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
        self.names = frozenset(self._program.variables())
        unknown = self.names - variables
        if unknown:
            raise RuleCompileError(
                f"unknown variable(s) {sorted(unknown)}: use only {sorted(variables)}"
            )
        self.source = source

    def evaluate(self, variables: Mapping[str, Any]) -> RuleResult:
        return self._run(dict(variables))

    def evaluate_for(self, inputs: RuleInputs, action: Mapping[str, Any]) -> RuleResult:
        """Evaluate for one action; a rule that does not read `action` uses the decision's shared inputs."""
        if "action" not in self.names:
            try:
                shared = inputs.shared()
            except Exception as exc:  # a value CEL cannot represent: fail closed, as for any evaluation error
                return RuleResult(False, f"{self.source} could not be evaluated: {exc}")
            return self._run(shared)
        values = {name: inputs.variables[name] for name in self.names if name in inputs.variables}
        values["action"] = action
        return self._run(values)

    def _run(self, variables: dict[str, Any] | cel.Context) -> RuleResult:
        try:
            value = self._program.execute(variables)
        except KeyError as exc:
            return RuleResult(False, f"{self.source} could not be evaluated: no such key {exc}")
        except Exception as exc:  # CEL runtime errors are not a stable exception type
            return RuleResult(False, f"{self.source} could not be evaluated: {exc}")
        if value is True:
            return RuleResult(True, f"{self.source} is true")
        if value is False:
            return RuleResult(False, f"{self.source} is false")
        return RuleResult(False, f"{self.source} evaluated to {value!r}, not a bool")


class RuleInputs:
    """One decision's rule variables (`customer`, `context`, `now`), converted to CEL at most once.

    Converting variables costs far more than evaluating a compiled rule, so every rule that does not read
    `action` shares one converted context; a rule that does gets only the variables it names.
    """

    def __init__(self, variables: Mapping[str, Any]) -> None:
        self.variables = variables
        self._shared: cel.Context | None = None

    def shared(self) -> cel.Context:
        if self._shared is None:
            self._shared = cel.Context(variables=dict(self.variables))
        return self._shared
