"""Shared fixtures: temporary stores on both backends, an in-process app, and a real server process."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import settings
from sqlalchemy import create_engine, text

from nba.clock import ManualClock
from nba.store import Store

# Property tests assert behaviour, not speed: Hypothesis's per-example deadline (200 ms) would fail a correct
# example on a loaded machine. Speed lives in bench/.
settings.register_profile("nba", deadline=None)
settings.load_profile("nba")

POSTGRES_URL = os.environ.get("NBA_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
DEMO_CATALOG = Path(__file__).resolve().parents[1] / "serving" / "demo" / "catalog.yaml"
KEYS = "test-channel:channel,test-analyst:analyst,test-admin:admin"
CHANNEL = {"Authorization": "Bearer test-channel"}
ANALYST = {"Authorization": "Bearer test-analyst"}
ADMIN = {"Authorization": "Bearer test-admin"}


def _pg_url(schema: str | None = None) -> str:
    url = POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{url}?options=-csearch_path%3D{schema}" if schema else url


def postgres_available() -> str | None:
    """None when PostgreSQL answers, else the reason it does not."""
    try:
        engine = create_engine(_pg_url())
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:  # any failure to connect is a reason to skip outside CI
        return f"PostgreSQL at {POSTGRES_URL} is unreachable: {exc.__class__.__name__}"


@pytest.fixture(scope="session")
def postgres_server() -> str:
    reason = postgres_available()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; in CI the PostgreSQL tests must run")
        pytest.skip(reason)
    return POSTGRES_URL


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(_pg_url())
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield _pg_url(schema)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'nba.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store URL on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'nba.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store(store_url)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 11, 24, 10, 0, tzinfo=UTC))
