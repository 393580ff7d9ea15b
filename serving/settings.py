"""Service settings from the environment (prefix `NBA_`)."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Role = Literal["channel", "analyst", "admin"]


class Settings(BaseSettings):
    """Every knob of a running service; defaults give the embedded single-machine setup."""

    model_config = SettingsConfigDict(env_prefix="NBA_", extra="ignore")

    database_url: str = "sqlite:///nba.db"
    mlflow_tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    api_keys: str = ""
    catalog: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    # Seconds a stopping worker has to finish gracefully before granian kills it. Now and then (about 1 stop in
    # 25 with Ctrl-C, which signals every process of the group) a granian worker never finished stopping, and
    # `nba serve` waited for it for ever. A killed worker loses nothing answered (each answer follows its commit).
    worker_stop_seconds: int = Field(default=20, ge=1, le=3600)
    sqlite_synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = "NORMAL"
    max_body_bytes: int = Field(default=2_000_000, ge=1024)
    learner: bool = True
    # With `learner`, `nba serve` runs the learner in a process of its own beside the workers, which serve its
    # snapshots; false runs it in a worker's thread (one per deployment either way: a lease in the store).
    learner_process: bool = True
    # How often the learner snapshots its models: what a restart keeps, and what the workers serve when the
    # learner runs in a process of its own (a served model lagging the learner by 5 s let a learning transient
    # serve 1,400 decisions unopposed, and the e2e learning test's best-action share fell to 0.23 once).
    snapshot_seconds: float = Field(default=1.0, gt=0)
    sweep_seconds: float = Field(default=1.0, gt=0)
    # Close due reward windows in this process (one process of the deployment at a time: a lease). Under
    # `nba serve` with a learner process, the workers defer to that process while it is up (serving.sweeper).
    sweep: bool = True
    # Days the decision log, events and past budget windows are kept (0: for ever). Contacts stay as long as a
    # cap or cooldown counts them; customers' states are not a log and stay.
    retention_days: float = Field(default=90.0, ge=0, le=36_500)  # at most a century: a horizon past year 1 fails
    retention_seconds: float = Field(default=60.0, gt=0)  # between retention passes that left nothing behind
    log_level: str = "INFO"
    # How long a thread may hold the GIL while another waits (CPython's default is 5 ms). Requests run in the
    # event loop and their writes in the group-commit thread; each statement the writer runs hands the GIL
    # back and forth, so a short interval keeps a busy loop from stalling every commit by up to 5 ms.
    switch_interval_ms: float = Field(default=1.0, gt=0, le=100)

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in logging.getLevelNamesMapping():
            raise ValueError(f"NBA_LOG_LEVEL {value!r} is not a level: DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    def configure_logging(self) -> None:
        """Log to stderr at `log_level` (every process of the service: workers and the learner alike)."""
        logging.basicConfig(level=self.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    @field_validator("retention_days")
    @classmethod
    def _retention_days(cls, value: float) -> float:
        if 0 < value < 1:
            raise ValueError("NBA_RETENTION_DAYS is 0 (keep everything) or at least 1")
        return value

    def retention(self) -> timedelta | None:
        """How long the log is kept; None for ever."""
        return timedelta(days=self.retention_days) if self.retention_days else None

    @field_validator("api_keys")
    @classmethod
    def _keys_parse(cls, value: str) -> str:
        parse_api_keys(value)
        return value

    def keys(self) -> dict[str, Role]:
        return parse_api_keys(self.api_keys)


def parse_api_keys(text: str) -> dict[str, Role]:
    """Parse `key:role,key:role`.

    >>> parse_api_keys("k1:channel, k2:admin")
    {'k1': 'channel', 'k2': 'admin'}
    """
    keys: dict[str, Role] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, role = item.rpartition(":")
        if not sep or not key or role not in ("channel", "analyst", "admin"):
            raise ValueError(f"NBA_API_KEYS entry {item!r} must be key:role with role channel, analyst or admin")
        keys[key] = role  # type: ignore[assignment]
    return keys
