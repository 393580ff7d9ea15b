"""Numbers from clients: JSON allows integers of any size, the service only those finite as a float."""

from __future__ import annotations

import math


def is_finite_number(value: int | float) -> bool:
    """Whether a number is finite as a float. An integer too large for a float is not: features, rules and the
    model all see numbers as floats, and converting one raises instead of giving a value.

    >>> is_finite_number(1e308), is_finite_number(2**70), is_finite_number(10**400), is_finite_number(math.nan)
    (True, True, False, False)
    """
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
