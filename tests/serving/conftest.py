"""Fixtures for the HTTP contract tests: the app in process, around a fresh store and a clock that tests move."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from litestar import Litestar
from litestar.testing import TestClient

from nba.clock import ManualClock
from serving.settings import Settings
from tests.conftest import DEMO_CATALOG, KEYS
from tests.serving.helpers import AppFactory
from training.service import build_app


@pytest.fixture
def make_app(store_url: str, clock: ManualClock, tmp_path: Path) -> AppFactory:
    """Build an app on a catalog: the demo catalog, or a dict written out as a YAML catalog file."""

    def make(catalog: dict[str, Any] | None = None) -> Litestar:
        path = DEMO_CATALOG
        if catalog is not None:
            path = tmp_path / "catalog.yaml"
            path.write_text(yaml.safe_dump(catalog))
        settings = Settings(
            database_url=store_url,
            api_keys=KEYS,
            catalog=str(path),
            # No background learner and no background sweeps: the tests close reward windows themselves with
            # `runtime.sweep()` after moving the clock, so what is learned when is decided by the test alone.
            learner=False,
            sweep_seconds=3600, retention_seconds=3600,
            log_level="WARNING",
        )
        return build_app(settings, clock=clock)

    return make


@pytest.fixture
def app(make_app: AppFactory) -> Litestar:
    return make_app()


@pytest.fixture
def client(app: Litestar) -> Iterator[TestClient[Litestar]]:
    with TestClient(app) as test_client:
        yield test_client
