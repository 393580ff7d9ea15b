"""Windows and durations written as `<n>s|m|h|d`."""

from __future__ import annotations

import re
from datetime import timedelta
from functools import lru_cache

_DURATION_RE = re.compile(r"^([1-9][0-9]{0,6})([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION = timedelta(days=3660)


@lru_cache(maxsize=4096)  # rules read their windows on every decision; the catalog has few distinct ones
def parse_duration(text: str) -> timedelta:
    """Parse a duration such as `30s`, `15m`, `24h` or `7d`.

    >>> parse_duration("7d")
    datetime.timedelta(days=7)
    >>> parse_duration("7 days")
    Traceback (most recent call last):
    ...
    ValueError: '7 days' is not a duration: use <n>s, <n>m, <n>h or <n>d, e.g. '24h'
    """
    match = _DURATION_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration: use <n>s, <n>m, <n>h or <n>d, e.g. '24h'")
    delta = timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    if delta > MAX_DURATION:
        raise ValueError(f"{text!r} is longer than the longest supported window (3660d)")
    return delta
