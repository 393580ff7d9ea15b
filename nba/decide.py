"""The decision pipeline: candidates, hard constraints, scoring, sampling, durable logging."""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from nba.catalog import Action, Policy
from nba.catalog_view import CatalogView
from nba.clock import Clock, epoch_ms
from nba.constraints import CounterState, cel_variables, counter_exclusion, longest_counter_window, static_exclusion
from nba.errors import (
    ActionNotFound,
    CatalogChanged,
    IdempotencyConflict,
    LocksHeld,
    NoPolicyForChannel,
    StoreUnavailable,
)
from nba.ids import new_id
from nba.rules import RuleInputs
from nba.sampling import InvalidDistribution, check_distribution, sample_slots, uniform
from nba.store.decision_repo import ReservationFailed
from nba.store.store import Store, WriteJob
from nba.types import Context, CustomerState, Decision, Exclusion, PolicyMode, PolicyRef

log = logging.getLogger(__name__)
T = TypeVar("T")
# The exclusion of a budgeted action whose budget another session's unfinished write holds (PostgreSQL).
BUDGET_HELD = "in use by another session's unfinished write: left out, as its use cannot be checked"
LOCKS_BUSY = "locks this decision needs are held by another session; try again"


class Scorer(Protocol):
    """A policy's scoring function: a probability for each eligible action, in the order given."""

    def score(
        self, context: Context, customer: CustomerState, actions: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> list[float]: ...


class ScorerProvider(Protocol):
    """Finds the live scorer for a policy version; None when the learning policy is unavailable."""

    def scorer(self, name: str, version: int, policy: Policy) -> Scorer | None: ...


@dataclass(frozen=True)
class Read(Generic[T]):
    """A step that reads the store (or refreshes the catalog from it)."""

    fn: Callable[[], T]


Steps = Generator["Read[Any] | WriteJob[Any]", Any, T]
DecisionInputs = tuple[str, "tuple[str, str] | None", "CustomerState | None", CounterState]


def _resume(
    steps: Steps[DecideResult], value: Any, error: Exception | None
) -> Read[Any] | WriteJob[Any] | DecideResult:
    """Hand the last step's outcome (its value, or the error it raised) to the pipeline: its next step, or the
    decision once it has finished. Both drivers advance the pipeline with this; only how they run a step differs."""
    try:
        return steps.throw(error) if error is not None else steps.send(value)
    except StopIteration as done:
        result: DecideResult = done.value
        return result


@dataclass(frozen=True)
class DecideRequest:
    """A validated decide call."""

    customer_id: str
    channel: str
    context: Context
    candidates: list[str] | None = None
    slots: int = 1
    request_id: str | None = None
    defer_activation: bool = False
    body_hash: str | None = None


@dataclass(frozen=True)
class DecideResult:
    decision: Decision
    replayed: bool


class DecisionEngine:
    """Makes decisions under hard constraints and logs each one durably before it is returned."""

    def __init__(
        self,
        store: Store,
        catalog: Callable[[], CatalogView],
        scorers: ScorerProvider,
        clock: Clock,
        rng: random.Random | None = None,
        on_decision: Callable[[Decision], None] | None = None,
        refresh_catalog: Callable[[], CatalogView] | None = None,
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._scorers = scorers
        self._clock = clock
        self._rng = rng or random.Random(int.from_bytes(os.urandom(8), "big"))
        self._on_decision = on_decision
        self._refresh_catalog = refresh_catalog or catalog

    def decide(self, request: DecideRequest) -> DecideResult:
        """Decide in the calling thread, blocking on the store."""
        steps = self._steps(request)
        value: Any = None
        error: Exception | None = None
        while True:
            step = _resume(steps, value, error)
            if isinstance(step, DecideResult):
                return step
            value, error = None, None
            try:
                value = step.fn() if isinstance(step, Read) else self._store.run(step)
            except Exception as exc:
                error = exc

    async def decide_async(self, request: DecideRequest) -> DecideResult:
        """Decide in an event loop: the CPU work runs inline, the request awaits its group commit.

        Reads run inline on a local store (SQLite answers in microseconds) and in a worker thread otherwise,
        so a network database never stalls the loop.
        """
        steps = self._steps(request)
        inline_reads = self._store.local
        value: Any = None
        error: Exception | None = None
        while True:
            step = _resume(steps, value, error)
            if isinstance(step, DecideResult):
                return step
            value, error = None, None
            try:
                if isinstance(step, Read):
                    value = step.fn() if inline_reads else await asyncio.to_thread(step.fn)
                else:
                    value = await self._store.run_async(step)
            except Exception as exc:
                error = exc

    def _steps(self, request: DecideRequest) -> Steps[DecideResult]:
        """The decision as a sequence of store steps, so one pipeline serves threads and event loops."""
        for _ in range(5):
            try:
                return (yield from self._decide(request, self._catalog()))
            except CatalogChanged:
                yield Read(self._refresh_catalog)
        catalog: CatalogView = yield Read(self._refresh_catalog)
        return (yield from self._decide(request, catalog))

    def _looked_up(self, catalog: CatalogView, lookup: Callable[[], T]) -> Steps[T]:
        """A catalog lookup; its refusal (no policy for the channel, an unknown candidate) stands only once the
        store's catalog is no newer than `catalog`: another process may have just answered the change that adds
        it (then CatalogChanged, and the decision is made again on the new catalog)."""
        try:
            return lookup()
        except (ActionNotFound, NoPolicyForChannel):
            stored: int = yield Read(self._store.catalog_version)
            if stored != catalog.version:
                raise CatalogChanged("the catalog changed since this process read it") from None
            raise

    def _decide(self, request: DecideRequest, catalog: CatalogView) -> Steps[DecideResult]:
        now = self._clock.now()
        candidate_ids = yield from self._looked_up(catalog, lambda: catalog.candidates(request.channel,
                                                                                     request.candidates))
        candidates = {aid: catalog.actions[aid] for aid in candidate_ids}
        lookback = longest_counter_window(list(candidates.values()))
        inputs: DecisionInputs = yield Read(lambda: self._store.decision_inputs(
            request.customer_id, request.channel, request.request_id, candidates, now, lookback
        ))
        customer_id, hit, state, counters = inputs
        if hit is not None:
            replay: Decision | None = yield Read(lambda: self._replay(request, hit))
            if replay is not None:
                return DecideResult(replay, True)
        name, version, policy = yield from self._looked_up(catalog, lambda: catalog.policy_for(request.channel))
        customer = state or CustomerState(customer_id)
        variables = RuleInputs(
            cel_variables(customer, request.context, now, catalog.rule_selection),
            lambda: cel_variables(customer, request.context, now),
        )
        excluded: list[Exclusion] = []
        remaining: dict[str, Action] = {}
        for action_id in candidate_ids:
            action = catalog.actions[action_id]
            exclusion = static_exclusion(
                action_id, action, catalog.rules.get(action_id), request.channel, customer, variables, now
            )
            if exclusion is None:
                remaining[action_id] = action
            else:
                excluded.append(exclusion)
        eligible: dict[str, Action] = {}
        for action_id, action in remaining.items():
            if not action.has_counter_rules:
                eligible[action_id] = action
                continue
            exclusion = counter_exclusion(action_id, action, request.channel, counters, now)
            if exclusion is None:
                eligible[action_id] = action
            else:
                excluded.append(exclusion)
        while True:
            decision = self._draft(request, customer, name, version, policy, eligible, excluded, now)
            try:
                stored: Decision = yield self._store.decision_write(
                    decision, eligible, policy.reward, lookback, request.body_hash, catalog.version
                )
            except ReservationFailed as failed:
                # A concurrent decision took the last unit: exclude the action and decide again.
                eligible.pop(failed.exclusion.action_id)
                excluded.append(failed.exclusion)
                continue
            except LocksHeld as held:
                # Another session's unfinished write (a host frozen mid-decision) holds these budgets: their use
                # cannot be checked, so they are left out rather than waited for.
                busy = self._store.budgets_held(held, [choice.action_id for choice in decision.actions])
                if not busy:
                    raise StoreUnavailable(LOCKS_BUSY) from held
                for action_id in busy:
                    budget = eligible.pop(action_id).budget
                    assert budget is not None
                    excluded.append(Exclusion(action_id, budget.rule, BUDGET_HELD))
                continue
            replayed = stored.decision_id != decision.decision_id
            if not replayed and self._on_decision is not None:
                self._on_decision(stored)
            return DecideResult(stored, replayed)

    def _replay(self, request: DecideRequest, found: tuple[str, str]) -> Decision | None:
        assert request.request_id is not None
        body_hash, decision_id = found
        if body_hash != request.body_hash:
            raise IdempotencyConflict(
                f"request_id {request.request_id!r} was used with a different request", field="request_id"
            )
        return self._store.get_decision(decision_id, with_rewards=False)

    def _draft(
        self,
        request: DecideRequest,
        customer: CustomerState,
        name: str,
        version: int,
        policy: Policy,
        eligible: Mapping[str, Action],
        excluded: list[Exclusion],
        now: Any,
    ) -> Decision:
        ids = list(eligible)
        attributes = {aid: eligible[aid].attributes for aid in ids}  # the catalog's own (scorers cache by it)
        mode: PolicyMode = policy.mode
        probabilities = uniform(len(ids))
        if ids and mode == "online":
            probabilities, mode = self._score(request, customer, name, version, policy, ids, attributes)
        choices = sample_slots(ids, probabilities, request.slots, self._rng)
        return Decision(
            decision_id=new_id("d-", epoch_ms(now)),  # the time it is logged under: retention finds it by its id
            customer_id=customer.customer_id,
            channel=request.channel,
            policy=PolicyRef(name, version, mode),
            created_at=now,
            actions=choices,
            ranking=sorted(zip(ids, probabilities, strict=True), key=lambda item: -item[1]),
            excluded=list(excluded),
            context=dict(request.context),
            customer=customer.to_json(),
            action_attributes=attributes,
            deferred=request.defer_activation,
            request_id=request.request_id,
        )

    def _score(
        self,
        request: DecideRequest,
        customer: CustomerState,
        name: str,
        version: int,
        policy: Policy,
        ids: list[str],
        attributes: dict[str, dict[str, Any]],
    ) -> tuple[list[float], PolicyMode]:
        try:
            scorer = self._scorers.scorer(name, version, policy)
            if scorer is None:
                return uniform(len(ids)), "fallback"
            raw = scorer.score(request.context, customer, [(aid, attributes[aid]) for aid in ids])
            return check_distribution(raw, len(ids)), "online"
        except (InvalidDistribution, RuntimeError, ValueError, TypeError) as exc:
            log.warning("policy %s v%d could not score, falling back to uniform: %s", name, version, exc)
            return uniform(len(ids)), "fallback"
