"""Outcomes and reads of logged decisions: reward, activate, and the whole logged decision."""

from __future__ import annotations

import math
from typing import Annotated, Any

import msgspec
from litestar import Request, get, post
from litestar.params import Parameter

from nba.catalog import REWARD_LIMIT
from nba.clock import to_rfc3339
from nba.errors import DecisionNotFound, InvalidInput
from nba.ids import ID_REGEX
from nba.store.outcome_repo import HELD
from serving.metrics import REWARDS, child
from serving.openapi import ProblemOperation, answers
from serving.routes.decide import DecisionOut, decision_out
from serving.runtime import Runtime

DecisionId = Annotated[str, Parameter(pattern=ID_REGEX)]


class RewardBody(msgspec.Struct, forbid_unknown_fields=True):
    value: Annotated[float, msgspec.Meta(ge=-REWARD_LIMIT, le=REWARD_LIMIT)]
    slot: Annotated[int, msgspec.Meta(ge=0, le=9)] = 0


class Accepted(msgspec.Struct):
    decision_id: str
    status: str


class RewardAccepted(msgspec.Struct, omit_defaults=True):
    """A reward's answer; `pending_activation` (added to API.md's fields) says an `accepted` reward is held for a
    deferred decision not yet activated: it is learned from only if the decision is activated in time, and turns
    `late` if its reservation is released instead."""

    decision_id: str
    status: str
    pending_activation: bool = False


class RewardOut(msgspec.Struct):
    value: float
    slot: int
    received_at: str
    status: str


class LoggedDecisionOut(DecisionOut, kw_only=True):
    context: dict[str, Any]
    customer: dict[str, Any]
    eligible: list[str]
    action_attributes: dict[str, Any]
    rules_fired: list[str]
    state: str
    request_id: str | None
    activated_at: str | None
    rewards: list[RewardOut]


@post("/v1/decisions/{decision_id:str}/reward", status_code=202, opt={"role": "channel", "body": RewardBody},
      tags=["outcomes"], summary="Report the outcome of a decision",
      responses=answers(400, 401, 403, (404, "No decision with this id"), 413, 422, 503))
async def reward(request: Request[Any, Any, Any], decision_id: DecisionId, data: RewardBody) -> RewardAccepted:
    runtime: Runtime = request.app.state.runtime
    if not math.isfinite(data.value):
        raise InvalidInput("value must be a finite number", field="value")
    status = await runtime.store.run_async(
        runtime.store.reward_write(decision_id, data.slot, data.value, runtime.clock.now()))
    held = status == HELD
    status = "accepted" if held else status
    child(REWARDS, status).inc()
    return RewardAccepted(decision_id, status, pending_activation=held)


@post("/v1/decisions/{decision_id:str}/activate", status_code=202, opt={"role": "channel"},
      tags=["outcomes"], summary="A deferred decision's action was shown after all",
      operation_class=ProblemOperation,
      responses=answers(401, 403, (404, "No decision with this id"),
                        (409, "The decision was not deferred, or its reservation was already released"), 422, 503))
async def activate(request: Request[Any, Any, Any], decision_id: DecisionId) -> Accepted:
    runtime: Runtime = request.app.state.runtime
    return Accepted(decision_id, await runtime.store.run_async(runtime.store.activation_write(decision_id,
                                                                                              runtime.clock.now())))


@get("/v1/decisions/{decision_id:str}", opt={"role": "analyst"}, sync_to_thread=True, tags=["read"],
     summary="The whole logged decision with its rewards", operation_class=ProblemOperation,
     responses=answers(401, 403, (404, "No decision with this id"), 422, 503))
def get_decision(request: Request[Any, Any, Any], decision_id: DecisionId) -> LoggedDecisionOut:
    runtime: Runtime = request.app.state.runtime
    decision = runtime.store.get_decision(decision_id)
    if decision is None:
        raise DecisionNotFound(f"decision {decision_id!r} not found")
    base = msgspec.structs.asdict(decision_out(decision))
    return LoggedDecisionOut(
        **base,
        context=decision.context,
        customer=decision.customer,
        eligible=[a for a, _ in decision.ranking],
        action_attributes=decision.action_attributes,
        rules_fired=sorted({e.rule for e in decision.excluded}),
        state=decision.state,
        request_id=decision.request_id,
        activated_at=to_rfc3339(decision.activated_at) if decision.activated_at else None,
        rewards=[RewardOut(**r) for r in decision.rewards],
    )
