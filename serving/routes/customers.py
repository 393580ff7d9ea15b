"""`GET /v1/customers/{id}`: a customer's aliases, state and recent decisions."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from litestar import Request, get
from litestar.params import Parameter

from nba.clock import to_rfc3339
from nba.errors import CustomerNotFound
from nba.ids import ID_REGEX
from nba.types import CustomerState
from serving.answer_types import CustomerOut, CustomerStateOut
from serving.openapi import ProblemOperation, answers
from serving.runtime import Runtime


@get("/v1/customers/{customer_id:str}", opt={"role": "analyst"}, sync_to_thread=True, tags=["read"],
     summary="A customer's state and up to 50 recent decisions, newest first", operation_class=ProblemOperation,
     responses=answers(401, 403, (404, "No customer with this id or alias"), 422, 503))
def get_customer(
    request: Request[Any, Any, Any], customer_id: Annotated[str, Parameter(pattern=ID_REGEX)]
) -> CustomerOut:
    runtime: Runtime = request.app.state.runtime
    canonical = runtime.store.resolve_customer(customer_id)
    state = runtime.store.load_customer(canonical)
    decisions = runtime.store.recent_decisions(canonical, 50)
    if state is None and not decisions:
        raise CustomerNotFound(f"customer {customer_id!r} not found")
    return {
        "customer_id": canonical,
        "aliases": runtime.store.customer_aliases(canonical),
        "state": _state_out(state if state is not None else CustomerState(canonical)),  # one shape, events or not
        "recent_decisions": [
            {
                "decision_id": d.decision_id,
                "channel": d.channel,
                "actions": [{"slot": c.slot, "action_id": c.action_id, "probability": c.probability}
                            for c in d.actions],
                "created_at": to_rfc3339(d.created_at),
            }
            for d in decisions
        ],
    }


def _state_out(state: CustomerState) -> CustomerStateOut:
    """The stored state, with its times in the API's form (RFC 3339 in UTC, milliseconds and a `Z`)."""
    out = state.to_json()
    out["last_event_at"] = {name: to_rfc3339(datetime.fromisoformat(when))
                            for name, when in state.last_event_at.items()}
    return CustomerStateOut(**out)
