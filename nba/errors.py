"""Domain exceptions. `serving/` maps each to an HTTP problem in one place."""

from __future__ import annotations


class NBAError(Exception):
    """Base of every domain error; `field` names the input at fault when there is one."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInput(NBAError):
    """Input that is well-formed but breaks a domain rule (maps to 422)."""


class RuleCompileError(InvalidInput, ValueError):
    """A CEL eligibility or condition expression that does not compile."""


class ActionNotFound(NBAError):
    """An action id that is not in the catalog."""


class PolicyNotFound(NBAError):
    """A policy name that is not configured."""


class NoPolicyForChannel(InvalidInput):
    """No policy serves the requested channel."""


class DecisionNotFound(NBAError):
    """A decision id that is not in the log."""


class CustomerNotFound(NBAError):
    """A customer id (or alias) the store has never seen."""


class Conflict(NBAError):
    """A request that conflicts with the stored state (maps to 409)."""


class IdempotencyConflict(Conflict):
    """The same idempotency key was used with a different request body."""


class StoreUnavailable(NBAError):
    """The store cannot be read or written right now (maps to 503)."""


class LocksHeld(NBAError):
    """A write that would rather not wait found lock keys another session holds (PostgreSQL): `key_ids` (advisory
    lock ids) name them. Nothing of it was written."""

    def __init__(self, key_ids: frozenset[int]) -> None:
        super().__init__(f"{len(key_ids)} lock(s) held by another session")
        self.key_ids = key_ids


class CatalogChanged(NBAError):
    """The catalog changed while a decision was being made; it must be made again on the new catalog."""


class LeaseLost(NBAError):
    """A write that only the holder of a lease may make, by a process that no longer holds it."""
