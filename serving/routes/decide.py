"""`POST /v1/decide` and `GET /v1/customers/{id}/next`: the next best action for a customer on a channel."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any

import msgspec
from litestar import Request, get, post
from litestar.params import Parameter

from nba.clock import to_rfc3339
from nba.decide import DecideRequest
from nba.errors import InvalidInput
from nba.ids import ID_REGEX, NAME_REGEX
from nba.numbers import is_unusable_number
from nba.types import Decision
from serving.metrics import DECIDE_LATENCY, DECISIONS, child
from serving.openapi import NO_ROUTE, ProblemOperation, answers
from serving.routes.types import FlatMap, Id, Name
from serving.runtime import Runtime


class DecideBody(msgspec.Struct, forbid_unknown_fields=True):
    customer_id: Id
    channel: Name
    context: FlatMap = msgspec.field(default_factory=dict)
    candidates: Annotated[list[Id], msgspec.Meta(min_length=1, max_length=1000)] | None = None
    slots: Annotated[int, msgspec.Meta(ge=1, le=10)] = 1
    request_id: Id | None = None
    defer_activation: bool = False


class SlotOut(msgspec.Struct):
    slot: int
    action_id: str
    probability: float


class RankedOut(msgspec.Struct):
    action_id: str
    probability: float


class ExcludedOut(msgspec.Struct):
    action_id: str
    rule: str
    detail: str


class PolicyOut(msgspec.Struct):
    name: str
    version: str
    mode: str


class DecisionOut(msgspec.Struct):
    decision_id: str
    customer_id: str
    channel: str
    actions: list[SlotOut]
    ranking: list[RankedOut]
    excluded: list[ExcludedOut]
    policy: PolicyOut
    created_at: str
    deferred: bool = False


def decision_out(decision: Decision) -> DecisionOut:
    return DecisionOut(
        decision_id=decision.decision_id,
        customer_id=decision.customer_id,
        channel=decision.channel,
        actions=[SlotOut(c.slot, c.action_id, c.probability) for c in decision.actions],
        ranking=[RankedOut(a, p) for a, p in decision.ranking],
        excluded=[ExcludedOut(e.action_id, e.rule, e.detail) for e in decision.excluded],
        policy=PolicyOut(decision.policy.name, str(decision.policy.version), decision.policy.mode),
        created_at=to_rfc3339(decision.created_at),
        deferred=decision.deferred,
    )


def _check_finite(context: dict[str, Any]) -> None:
    for key, value in context.items():
        if is_unusable_number(value):
            raise InvalidInput(f"context value {key!r} must be a finite number", field=f"context.{key}")


def _body_hash(body: DecideBody) -> str:
    canonical = json.dumps(msgspec.to_builtins(body), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


async def _decide(runtime: Runtime, body: DecideBody) -> DecisionOut:
    _check_finite(body.context)
    request = DecideRequest(
        customer_id=body.customer_id,
        channel=body.channel,
        context=dict(body.context),
        candidates=body.candidates,
        slots=body.slots,
        request_id=body.request_id,
        defer_activation=body.defer_activation,
        body_hash=_body_hash(body) if body.request_id else None,
    )
    with DECIDE_LATENCY.time():
        result = await runtime.engine.decide_async(request)
    if not result.replayed:
        child(DECISIONS, result.decision.channel, result.decision.policy.mode).inc()
    return decision_out(result.decision)


# Handlers run in the event loop: the decision's CPU work is short, and the request awaits its group commit
# rather than holding a worker thread (see DecisionEngine.decide_async).
@post("/v1/decide", status_code=200, opt={"role": "channel", "body": DecideBody}, tags=["decide"],
      summary="Decide the next best action(s) for a customer on a channel",
      responses=answers(400, 401, 403, (409, "The request_id was used with a different body within 24 h"), 413,
                        422, 503))
async def decide(request: Request[Any, Any, Any], data: DecideBody) -> DecisionOut:
    return await _decide(request.app.state.runtime, data)


@get("/v1/customers/{customer_id:str}/next", opt={"role": "channel", "head": False}, tags=["decide"],
     summary="The current next best action for a channel that polls (logged like any decision)",
     operation_class=ProblemOperation,
     responses=answers(401, 403, NO_ROUTE, 422, 503))
async def next_action(
    request: Request[Any, Any, Any],
    customer_id: Annotated[str, Parameter(pattern=ID_REGEX)],
    channel: Annotated[str, Parameter(query="channel", pattern=NAME_REGEX)],
) -> DecisionOut:
    return await _decide(request.app.state.runtime, DecideBody(customer_id=customer_id, channel=channel))
