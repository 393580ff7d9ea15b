"""Long IN lists, cut into pieces a statement can bind."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")
IN_LIST_MAX = 500  # values per IN list: under the 999 parameters SQLite bound per statement before 3.32


def in_chunks(values: Sequence[T]) -> Iterator[Sequence[T]]:
    """`values` in consecutive pieces of at most IN_LIST_MAX."""
    for start in range(0, len(values), IN_LIST_MAX):
        yield values[start:start + IN_LIST_MAX]
