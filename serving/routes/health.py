"""`/health` (store and models usable) and `/metrics` (Prometheus text); neither needs a key."""

from __future__ import annotations

from typing import Any

from litestar import MediaType, Request, Response, get
from litestar.openapi.datastructures import ResponseSpec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from nba.errors import StoreUnavailable
from serving.answer_types import Health, ModelHealth
from serving.runtime import Runtime


@get("/health", sync_to_thread=True, tags=["ops"], security=[{}],
     summary="200 when the store and the models are usable",
     responses={503: ResponseSpec(Health, generate_examples=False,
                                  description="The store is unusable; the body says so, as for 200")})
def health(request: Request[Any, Any, Any]) -> Response[Health]:
    runtime: Runtime = request.app.state.runtime
    store_ok, store_msg = True, "ok"
    try:
        runtime.store.ping()
        runtime.store.check_writes()
    except StoreUnavailable as exc:
        store_ok, store_msg = False, exc.message
    current = {(name, version) for name, (version, _) in runtime.catalog().policies.items()}
    models = [  # of the policies' current versions: a version an edit replaced no longer serves
        ModelHealth(policy=s.policy, version=str(s.version), healthy=s.healthy, snapshot_id=s.snapshot_id,
                    examples_learned=s.examples, message=s.message)
        for s in runtime.models.statuses() if (s.policy, s.version) in current
    ]
    # Decisions whose reward window this process could not close (their stored record unreadable): the rest close
    # all the same, but these are never learned from until someone looks (the log names each one).
    unclosable = len(runtime.store.unclosable)
    healthy = store_ok and unclosable == 0 and all(m["healthy"] for m in models)
    status = "ok" if healthy else ("degraded" if store_ok else "down")
    body = Health(status=status, store=store_msg, catalog_version=runtime.catalog().version, models=models,
                  unclosable_decisions=unclosable)
    return Response(body, status_code=200 if store_ok else 503)


@get("/metrics", sync_to_thread=False, tags=["ops"], security=[{}], summary="Prometheus metrics of this process",
     media_type=MediaType.TEXT)
def metrics() -> Response[bytes]:
    # As the header itself: Litestar would add a second `charset` to the text type, which has one.
    return Response(generate_latest(), headers={"content-type": CONTENT_TYPE_LATEST})
