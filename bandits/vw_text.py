"""Vowpal Wabbit's text format for namespaced features, escaped so no value can break the syntax.

Every feature value, whatever its namespace (context `C`, customer `U`, action `A`), goes through
`feature_value` before it is written, so any finite number can be scored:

- magnitudes up to `EXACT_LIMIT` (1e9) are written as they are (VW then reads them as 32-bit floats);
- magnitudes below `TINY` (1e-20) are written as 0, that is left out: VW's parser reads some tiny magnitudes
  (about 1e-217 to 1e-129) as infinity, and such a value carries nothing a linear model can use;
- larger magnitudes are compressed logarithmically, keeping sign and order:
  `sign(x) * EXACT_LIMIT * (1 + ln(|x| / EXACT_LIMIT))`, continuous and with slope 1 at the limit. The largest
  double becomes `VALUE_BOUND` (about 6.9e11), and the product of three features, the highest interaction order
  a policy may use, stays below 3.3e35, a thousandth of float32's maximum (3.4e38). Without the bound a context
  value times an action attribute overflowed to infinity under `-q CA` and the model scored NaN.

Infinities are written as the bound of their sign and NaN as 0, though the featurizer drops both before.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping

_UNSAFE = {"|": "%7C", ":": "%3A", "%": "%25", " ": "%20", "\t": "%09", "\n": "%0A", "\r": "%0D"}
_TRANSLATE = str.maketrans(_UNSAFE)


def escape(name: str) -> str:
    """Make a feature name safe for the text format: `|`, `:`, whitespace and `%` are percent-encoded.

    >>> escape("page=check out|x:1")
    'page=check%20out%7Cx%3A1'
    """
    escaped = name.translate(_TRANSLATE)
    if not escaped.isprintable():
        # Each UTF-8 byte of a non-printable character becomes %XX: fixed width, so distinct names stay distinct.
        escaped = "".join(
            ch if ch.isprintable() else "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
            for ch in escaped
        )
    return escaped or "%"  # a lone '%' is never produced by escaping a non-empty name


EXACT_LIMIT = 1e9
TINY = 1e-20
VALUE_BOUND = EXACT_LIMIT * (1.0 + math.log(sys.float_info.max / EXACT_LIMIT))


def feature_value(value: float) -> float:
    """The value written for a feature: exact up to 1e9 in magnitude, 0 below 1e-20, log-compressed above.

    >>> feature_value(84.5), feature_value(-1e9), feature_value(1e-21)
    (84.5, -1000000000.0, 0.0)
    >>> round(feature_value(1e10)), round(feature_value(-1e308))
    (3302585093, -689472942805)
    """
    magnitude = abs(value)
    if magnitude <= EXACT_LIMIT:
        return value if magnitude >= TINY else 0.0
    if math.isnan(value):
        return 0.0
    compressed = EXACT_LIMIT * (1.0 + math.log(min(magnitude, sys.float_info.max) / EXACT_LIMIT))
    return math.copysign(compressed, value)


def namespaces_line(namespaces: Mapping[str, Mapping[str, float]], prefix: str = "") -> str:
    """One text-format line: `prefix |N feature feature:value ...` for each namespace.

    >>> namespaces_line({"C": {"device=mobile": 1.0, "cart": 84.5}}, prefix="shared")
    'shared |C device=mobile cart:84.5'
    """
    parts = [prefix] if prefix else []
    if prefix and not namespaces:
        parts.append("|")  # a bare `shared` line would be read as one more action
    for namespace, features in namespaces.items():
        items = [namespace_header(namespace)]
        for name, raw in features.items():
            value = feature_value(raw)
            if value == 0.0:
                continue
            # 9 significant digits tell any two float32 values apart; VW reads values as float32.
            items.append(escape(name) if value == 1.0 else f"{escape(name)}:{value:.9g}")
        parts.append(" ".join(items))
    return " ".join(parts)


def namespace_header(namespace: str) -> str:
    """VW keys a namespace by its first byte, so a namespace is one ASCII letter or digit."""
    if len(namespace) != 1 or not namespace.isascii() or not namespace.isalnum():
        raise ValueError(f"namespace {namespace!r} must be alphanumeric: a single ASCII letter or digit")
    return "|" + namespace
