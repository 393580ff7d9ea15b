"""Fixtures that run the real server: `nba serve` in a subprocess, talking HTTP over loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import KEYS
from tests.servers import ServerProcess

ServerFactory = Callable[..., ServerProcess]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start `nba serve` with a catalog (a dict written as YAML) on a fresh SQLite file unless told otherwise."""
    started: list[ServerProcess] = []

    def start(catalog: dict[str, Any] | None = None, workers: int = 1, database_url: str | None = None,
              **env: str) -> ServerProcess:
        settings = {
            "NBA_DATABASE_URL": database_url or f"sqlite:///{tmp_path / 'nba.db'}",
            "NBA_API_KEYS": KEYS,
            "NBA_LOG_LEVEL": "WARNING",
            **env,
        }
        if catalog is not None:
            path = tmp_path / "catalog.yaml"
            path.write_text(yaml.safe_dump(catalog))
            settings["NBA_CATALOG"] = str(path)
        server = ServerProcess(settings, tmp_path / f"server-{len(started)}.log", workers=workers).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
