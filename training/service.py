"""The composition root of a server process: runtime, online learner and HTTP app, from settings."""

from __future__ import annotations

import sys

from litestar import Litestar

from nba.clock import Clock
from nba.store import Store
from serving.app import create_app
from serving.retention import RetentionService
from serving.runtime import Runtime, Service, ServiceFactory
from serving.settings import Settings
from training.online import OnlineLearner


def learner_factory(settings: Settings) -> list:
    """The online learner, if the settings run one."""
    if not settings.learner:
        return []

    def make(runtime: Runtime) -> Service:
        return OnlineLearner(
            runtime.store, runtime.models, runtime.featurizer, runtime.catalog, runtime.clock,
            snapshot_every=settings.snapshot_seconds,
        )

    return [make]


def retention_factory(settings: Settings) -> ServiceFactory:
    def make(runtime: Runtime) -> Service:
        return RetentionService(runtime.store, runtime.current_catalog, runtime.clock, settings.retention(),
                                idle_every=settings.retention_seconds)

    return make


def build_runtime(settings: Settings, store: Store | None = None, clock: Clock | None = None) -> Runtime:
    """A runtime with the background services a server process runs besides answering requests."""
    services = [*learner_factory(settings), retention_factory(settings)]
    return Runtime(settings, store=store, clock=clock, services=services)


def build_app(settings: Settings | None = None, store: Store | None = None, clock: Clock | None = None) -> Litestar:
    return create_app(build_runtime(settings or Settings(), store=store, clock=clock))


def app_from_env() -> Litestar:
    """The ASGI app factory that `nba serve` hands to the server (one call per worker process)."""
    settings = Settings()
    sys.setswitchinterval(settings.switch_interval_ms / 1000)
    return build_app(settings)
