"""What the OpenAPI document says about answers other than a route's success, and about strict bodies.

Each route names the statuses it can answer besides its success status with `responses=answers(...)`; every error
among them is described as the RFC 9457 problem that `serving/problems.py` writes. Litestar would otherwise
document only a 400 of its own shape, which this server never sends.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Annotated, Any, TypedDict

import msgspec
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.plugins import OpenAPIRenderPlugin
from litestar.openapi.spec import Operation
from litestar.params import KwargDefinition
from litestar.plugins import OpenAPISchemaPlugin
from pydantic import BaseModel

from serving.problems import PROBLEM_JSON

if TYPE_CHECKING:
    from litestar import Request
    from litestar._openapi.schema_generation import SchemaCreator
    from litestar.openapi import OpenAPIConfig
    from litestar.openapi.spec import Schema
    from litestar.typing import FieldDefinition


class FieldError(TypedDict):
    field: Annotated[str, KwargDefinition(description="The input at fault: a body path such as `context.device`, "
                                                      "`[2].type` or `body`, or a path or query parameter")]
    message: str


# `total=False` marks the optional members: `NotRequired[...]` is not seen under `from __future__ import annotations`.
class _Members(TypedDict):
    type: Annotated[str, KwargDefinition(description="`urn:nba:problem:<kind>`, for example "
                                                     "`urn:nba:problem:not-found`")]
    title: Annotated[str, KwargDefinition(description="The status's reason phrase")]
    status: Annotated[int, KwargDefinition(description="The HTTP status code")]
    detail: Annotated[str, KwargDefinition(description="What went wrong, for a person")]


class Problem(_Members, total=False):
    """An RFC 9457 problem, as `serving.problems.problem` writes it."""

    instance: str
    errors: list[FieldError]


class _ValidationMembers(_Members):
    errors: Annotated[list[FieldError], KwargDefinition(min_items=1)]


class ValidationProblem(_ValidationMembers, total=False):
    """A 422 problem: `errors` names each input at fault."""

    instance: str


_WHY = {
    201: "Created: nothing had this name before (replacing an existing one answers 200); the body is as for 200",
    400: "The body is not JSON: malformed, empty, NaN or nested too deeply",
    401: "No API key, or an unknown one (with `WWW-Authenticate: Bearer`)",
    403: "The key's role does not allow this call",
    404: "Not found",
    409: "The request conflicts with the stored state",
    413: "The body is larger than the server accepts (`NBA_MAX_BODY_BYTES`)",
    422: "Well-formed but invalid: `errors` names each input at fault",
    503: "The store is unavailable; retry after `Retry-After` seconds",
}
# The 404 of a route that would otherwise never answer one (a PUT creates what its path names): an encoded `/` in
# a path parameter leaves the path matching no route.
NO_ROUTE = (404, "The path names no route (an id holding an encoded `/`)")


def answers(*statuses: int | tuple[int, str], body: Any = None) -> dict[int, ResponseSpec]:
    """The `responses=` of a route: each status it answers besides its success status.

    An error status answers a problem (`application/problem+json`); a success status (201 for a create) answers
    `body`, the route's success type. A status may come with the route's own reason: `(404, "No such decision")`.

    >>> spec = answers(201, 401, (404, "No such decision"), 422, body=dict)
    >>> sorted(spec), spec[404].description, spec[404].media_type, spec[422].data_container.__name__
    ([201, 401, 404, 422], 'No such decision', 'application/problem+json', 'ValidationProblem')
    """
    responses = {}
    for item in statuses:
        status, why = item if isinstance(item, tuple) else (item, _WHY.get(item, HTTPStatus(item).phrase))
        if status < 400:
            assert body is not None, f"status {status} needs the route's success type as `body`"
            responses[status] = ResponseSpec(body, description=why, generate_examples=False)
        else:
            container = ValidationProblem if status == 422 else Problem
            responses[status] = ResponseSpec(container, description=why, media_type=PROBLEM_JSON,
                                             generate_examples=False)
    return responses


@dataclass
class ProblemOperation(Operation):
    """An operation whose error answers are only the problems its route declares.

    Litestar documents a 400 of its own shape for any route with parameters; a route that reads no body never
    answers 400 (a bad parameter is a 422), so that entry is dropped. Use it as such a route's `operation_class`.
    """

    def __post_init__(self) -> None:
        if self.responses:
            self.responses = {
                status: response for status, response in self.responses.items()
                if not status.isdigit() or int(status) < 400
                or PROBLEM_JSON in (getattr(response, "content", None) or {})
            }


class StrictBodies(OpenAPISchemaPlugin):
    """`additionalProperties: false` for the bodies that refuse unknown fields.

    Those are msgspec structs with `forbid_unknown_fields` and pydantic models with `extra="forbid"`; the schema
    is the one Litestar would make, with that one addition.
    """

    def is_plugin_supported_field(self, field_definition: FieldDefinition) -> bool:
        if field_definition.is_union:
            return False
        if field_definition.is_subclass_of(msgspec.Struct):
            return bool(field_definition.type_.__struct_config__.forbid_unknown_fields)
        if field_definition.is_subclass_of(BaseModel):
            return bool(field_definition.type_.model_config.get("extra") == "forbid")
        return False

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: SchemaCreator) -> Schema:
        plugin = next(p for p in schema_creator.plugins
                      if p is not self and schema_creator.plugin_supports_field(p, field_definition))
        schema = plugin.to_openapi_schema(field_definition, schema_creator)
        schema.additional_properties = False
        return schema


OPENAPI_PATH = "/schema"
RETRY_AFTER = {"description": "Seconds to wait before trying again", "schema": {"type": "integer", "minimum": 1}}
SELF = {"get": {
    "tags": ["ops"], "summary": "This document (OpenAPI 3.1)", "operationId": "GetOpenAPIDocument", "security": [{}],
    "responses": {"200": {"description": "The OpenAPI document",
                          "content": {"application/vnd.oai.openapi+json": {"schema": {"type": "object"}}}}},
}}


def complete(document: dict[str, Any]) -> dict[str, Any]:
    """Add to a rendered OpenAPI document what Litestar leaves out: the `Retry-After` header that comes with every
    problem 503 (`serving.problems`), and the document's own route (API.md: it "lists every route"); and say each
    union as `anyOf`, not `oneOf`, which a value of two of its types fails (JSON Schema counts 20.0 as an integer
    and as a number: every float attribute broke `bool | int | float | str`). Each render of the (cached)
    document passes through it; the first completes it."""
    paths: dict[str, Any] = document.setdefault("paths", {})
    if paths.get(f"{OPENAPI_PATH}/openapi.json") is SELF:  # completed by an earlier render
        return document
    _any_of(document)
    for item in paths.values():
        for operation in item.values():
            answer = operation.get("responses", {}).get("503") if isinstance(operation, dict) else None
            if answer is not None and PROBLEM_JSON in answer.get("content", {}):
                answer.setdefault("headers", {})["Retry-After"] = RETRY_AFTER
    paths.setdefault(f"{OPENAPI_PATH}/openapi.json", SELF)
    return document


def _any_of(node: Any) -> None:
    if isinstance(node, dict):
        if "oneOf" in node and "discriminator" not in node:
            node["anyOf"] = node.pop("oneOf")
        for value in node.values():
            _any_of(value)
    elif isinstance(node, list):
        for value in node:
            _any_of(value)


class _Completed(OpenAPIRenderPlugin):
    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return super().render(request, complete(openapi_schema))


@functools.cache
def _completing(plugin_type: type[OpenAPIRenderPlugin]) -> type[OpenAPIRenderPlugin]:
    return type(f"Completed{plugin_type.__name__}", (_Completed, plugin_type), {})


def completed(config: OpenAPIConfig) -> OpenAPIConfig:
    """`config`, each of whose renderings (JSON, YAML and the HTML pages, which embed the document) shows the
    document completed (`complete`), whichever of them a worker serves first."""
    for plugin in config.render_plugins:
        plugin.__class__ = _completing(type(plugin))
    return config
