"""Settings that every process of the service reads the same way."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serving.settings import Settings


def test_the_log_level_is_read_in_any_case_and_checked_at_start() -> None:
    """`NBA_LOG_LEVEL=info` served, but stopped `nba learn` at every start (logging takes upper case only)."""
    assert Settings(log_level="info").log_level == "INFO"
    assert Settings(log_level=" Warning ").log_level == "WARNING"
    with pytest.raises(ValidationError, match="not a level"):
        Settings(log_level="verbose")
