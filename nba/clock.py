"""Time sources. Everything time-dependent takes a clock so tests can move time without sleeping."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Something that tells the current time in UTC."""

    def now(self) -> datetime: ...


class SystemClock:
    """The wall clock, in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that only moves when told to; for tests and simulations.

    >>> clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    >>> clock.advance(timedelta(hours=1)).isoformat()
    '2026-01-01T01:00:00+00:00'
    """

    def __init__(self, start: datetime) -> None:
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta) -> datetime:
        with self._lock:
            self._now = self._now + delta
            return self._now

    def set(self, when: datetime) -> None:
        with self._lock:
            self._now = when


def to_rfc3339(when: datetime) -> str:
    """Format a UTC time as RFC 3339 with milliseconds and a `Z`.

    >>> to_rfc3339(datetime(2026, 11, 24, 10, 15, 2, 123456, tzinfo=UTC))
    '2026-11-24T10:15:02.123Z'
    >>> to_rfc3339(datetime(1, 1, 1, tzinfo=UTC))  # four-digit years, as RFC 3339 requires
    '0001-01-01T00:00:00.000Z'
    """
    return when.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def epoch_ms(when: datetime) -> int:
    """Milliseconds since the Unix epoch; the store keeps times in this form for portable comparisons."""
    return int(when.timestamp() * 1000)


def from_epoch_ms(ms: int) -> datetime:
    """The inverse of `epoch_ms`."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)
