"""Numbers from clients: JSON allows integers of any size, the service only those finite as a float."""

from __future__ import annotations

import math
from typing import Any


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


def is_unusable_number(value: Any) -> bool:
    """Whether a decoded JSON value is a number (a bool is not one) that is not finite as a float: what every
    input check refuses.

    >>> is_unusable_number(10**400), is_unusable_number(1.5), is_unusable_number(True), is_unusable_number("1e999")
    (True, False, False, False)
    """
    return isinstance(value, int | float) and not isinstance(value, bool) and not is_finite_number(value)
