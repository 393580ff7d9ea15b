"""The catalog over HTTP (admin writes, analyst reads): actions, policies and event types."""

from __future__ import annotations

from typing import Annotated, Any

from anyio import to_thread
from litestar import Request, Response, delete, get, put
from litestar.params import Parameter

from bandits.vw_policy import check_learner
from features.events import BUILTIN_TYPES, changed_builtin_properties
from nba.catalog import Action, EventType, Policy
from nba.errors import ActionNotFound, InvalidInput, PolicyNotFound
from nba.ids import ID_REGEX, NAME_REGEX
from serving.answer_types import ActionList, EventTypeList, PolicyList, StoredAction, StoredEventType, StoredPolicy
from serving.openapi import NO_ROUTE, ProblemOperation, answers
from serving.runtime import Runtime

ActionId = Annotated[str, Parameter(pattern=ID_REGEX)]
PolicyName = Annotated[str, Parameter(pattern=NAME_REGEX)]


def _runtime(request: Request[Any, Any, Any]) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _dump(model: Any, **extra: Any) -> dict[str, Any]:
    return {**extra, **model.model_dump(mode="json", by_alias=True)}


@put("/v1/actions/{action_id:str}", opt={"role": "admin", "body": Action}, tags=["catalog"],
     summary="Create or replace an action",
     responses=answers(200, 201, 400, 401, 403, NO_ROUTE, 413, 422, 503, body=StoredAction))
async def put_action(request: Request[Any, Any, Any], action_id: ActionId, data: Action) -> Response[dict[str, Any]]:
    runtime = _runtime(request)
    created = await to_thread.run_sync(runtime.store.put_action, action_id, data, runtime.clock.now(),
                                       runtime.clock.now)
    await to_thread.run_sync(runtime.refresh_catalog)
    return Response(_dump(data, action_id=action_id), status_code=201 if created else 200)


@get("/v1/actions", opt={"role": "analyst"}, sync_to_thread=True, tags=["catalog"], summary="The catalog",
     responses=answers(200, 401, 403, body=ActionList))
def list_actions(request: Request[Any, Any, Any]) -> dict[str, Any]:
    view = _runtime(request).current_catalog()
    return {"items": [_dump(a, action_id=aid) for aid, a in sorted(view.actions.items())]}


@get("/v1/actions/{action_id:str}", opt={"role": "analyst"}, sync_to_thread=True, tags=["catalog"],
     summary="One action", operation_class=ProblemOperation,
     responses=answers(200, 401, 403, (404, "No action with this id"), 422, body=StoredAction))
def get_action(request: Request[Any, Any, Any], action_id: ActionId) -> dict[str, Any]:
    action = _runtime(request).current_catalog().actions.get(action_id)
    if action is None:
        raise ActionNotFound(f"action {action_id!r} not found")
    return _dump(action, action_id=action_id)


@delete("/v1/actions/{action_id:str}", opt={"role": "admin"}, tags=["catalog"],
        summary="Remove an action (its counters are kept)", operation_class=ProblemOperation,
        responses=answers(401, 403, (404, "No action with this id"), 422, 503))
async def delete_action(request: Request[Any, Any, Any], action_id: ActionId) -> None:
    runtime = _runtime(request)
    if not await to_thread.run_sync(runtime.store.delete_action, action_id):
        raise ActionNotFound(f"action {action_id!r} not found")
    await to_thread.run_sync(runtime.refresh_catalog)


@put("/v1/policies/{name:str}", opt={"role": "admin", "body": Policy}, tags=["policies"],
     summary="Create or replace a policy; a changed policy gets a new version",
     responses=answers(200, 201, 400, 401, 403, NO_ROUTE, (409, "A channel it names is served by another policy"),
                       413, 422, 503, body=StoredPolicy))
async def put_policy(request: Request[Any, Any, Any], name: PolicyName, data: Policy) -> Response[dict[str, Any]]:
    runtime = _runtime(request)
    check_learner(data)
    version, created = await to_thread.run_sync(runtime.store.put_policy, name, data, runtime.clock.now())
    await to_thread.run_sync(runtime.refresh_catalog)
    return Response(_dump(data, name=name, version=str(version)), status_code=201 if created else 200)


@get("/v1/policies", opt={"role": "analyst"}, sync_to_thread=True, tags=["policies"], summary="All policies",
     responses=answers(200, 401, 403, body=PolicyList))
def list_policies(request: Request[Any, Any, Any]) -> dict[str, Any]:
    view = _runtime(request).current_catalog()
    return {"items": [_dump(p, name=n, version=str(v)) for n, (v, p) in sorted(view.policies.items())]}


@get("/v1/policies/{name:str}", opt={"role": "analyst"}, sync_to_thread=True, tags=["policies"],
     summary="One policy", operation_class=ProblemOperation,
     responses=answers(200, 401, 403, (404, "No policy with this name"), 422, body=StoredPolicy))
def get_policy(request: Request[Any, Any, Any], name: PolicyName) -> dict[str, Any]:
    entry = _runtime(request).current_catalog().policies.get(name)
    if entry is None:
        raise PolicyNotFound(f"policy {name!r} not found")
    return _dump(entry[1], name=name, version=str(entry[0]))


@put("/v1/event-types/{type:str}", opt={"role": "admin", "body": EventType}, tags=["events"],
     summary="Register or replace an event type's schema",
     responses=answers(200, 201, 400, 401, 403, NO_ROUTE, 413, 422, 503, body=StoredEventType))
async def put_event_type(
    request: Request[Any, Any, Any], type: PolicyName, data: EventType  # noqa: A002 - the API names it `type`
) -> Response[dict[str, Any]]:
    changed = changed_builtin_properties(type, data)
    if changed:  # a built-in type may be extended; what the service reads of it keeps its meaning
        raise InvalidInput(f"{type!r} is a built-in event type: its property {changed[0]!r} must stay "
                           f"{BUILTIN_TYPES[type].properties[changed[0]]!r}", field=f"properties.{changed[0]}")
    runtime = _runtime(request)
    created = await to_thread.run_sync(runtime.store.put_event_type, type, data, runtime.clock.now())
    await to_thread.run_sync(runtime.refresh_catalog)
    return Response(_dump(data, type=type), status_code=201 if created else 200)


@get("/v1/event-types", opt={"role": "analyst"}, sync_to_thread=True, tags=["events"],
     summary="The event-type registry", responses=answers(200, 401, 403, body=EventTypeList))
def list_event_types(request: Request[Any, Any, Any]) -> dict[str, Any]:
    view = _runtime(request).current_catalog()
    return {"items": [_dump(e, type=n) for n, e in sorted(view.event_types.items())]}
