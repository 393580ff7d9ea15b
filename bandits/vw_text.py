"""Vowpal Wabbit's text format for namespaced features, escaped so no value can break the syntax."""

from __future__ import annotations

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


_FLOAT32_MAX = 3.4028234e38


def _format_value(value: float) -> str:
    """VW reads values as 32-bit floats: clamp to their range and write 9 significant digits."""
    return f"{max(-_FLOAT32_MAX, min(_FLOAT32_MAX, value)):.9g}"


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
        for name, value in features.items():
            if value == 0.0:
                continue
            items.append(escape(name) if value == 1.0 else f"{escape(name)}:{_format_value(value)}")
        parts.append(" ".join(items))
    return " ".join(parts)


def namespace_header(namespace: str) -> str:
    """VW keys a namespace by its first byte, so a namespace is one ASCII letter or digit."""
    if len(namespace) != 1 or not namespace.isascii() or not namespace.isalnum():
        raise ValueError(f"namespace {namespace!r} must be alphanumeric: a single ASCII letter or digit")
    return "|" + namespace
