"""The Litestar application: routes, auth, problem+json errors and the OpenAPI document."""

from __future__ import annotations

from typing import Any

from litestar import Litestar, Request
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.pydantic import PydanticPlugin

from serving.auth import authorize
from serving.body import check_body
from serving.head import HeadAsGet, refuse_head_with_effects
from serving.openapi import OPENAPI_PATH, StrictBodies, completed
from serving.problems import HANDLERS
from serving.routes import catalog, customers, decide, decisions, events, health
from serving.runtime import Runtime

ROUTES = [
    decide.decide,
    decide.next_action,
    decisions.reward,
    decisions.activate,
    decisions.get_decision,
    events.ingest,
    customers.get_customer,
    catalog.put_action,
    catalog.list_actions,
    catalog.get_action,
    catalog.delete_action,
    catalog.put_policy,
    catalog.list_policies,
    catalog.get_policy,
    catalog.put_event_type,
    catalog.list_event_types,
    health.health,
    health.metrics,
]


async def _before_request(request: Request[Any, Any, Any]) -> None:
    """Who may call (401/403 first, as a guard would), then whether the body is what the route takes."""
    await authorize(request)
    refuse_head_with_effects(request)
    await check_body(request)


def create_app(runtime: Runtime) -> Litestar:
    """Build the app around a runtime; the runtime's background work starts and stops with the app."""
    runtime.settings.configure_logging()
    app = HeadAsGet(
        route_handlers=ROUTES,
        exception_handlers=HANDLERS,
        before_request=_before_request,
        on_startup=[lambda: runtime.start()],
        on_shutdown=[lambda: runtime.stop()],
        request_max_body_size=runtime.settings.max_body_bytes,
        # Pydantic models are documented by their fields' aliases (`for`, `lambda`), the names clients send.
        plugins=[StrictBodies(), PydanticPlugin(prefer_alias=True)],
        openapi_config=completed(OpenAPIConfig(
            title="Next-best-action service",
            version="1",
            path=OPENAPI_PATH,
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer", description="API key")}
            ),
            security=[{"bearer": []}],
        )),
        debug=False,
    )
    app.state.runtime = runtime
    return app
