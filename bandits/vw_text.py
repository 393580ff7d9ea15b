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
        escaped = "".join(ch if ch.isprintable() else f"%{ord(ch):02X}" for ch in escaped)
    return escaped or "%00"


def _format_value(value: float) -> str:
    return repr(value) if abs(value) < 1e15 else f"{value:.6e}"


def namespaces_line(namespaces: Mapping[str, Mapping[str, float]], prefix: str = "") -> str:
    """One text-format line: `prefix |N feature feature:value ...` for each namespace.

    >>> namespaces_line({"C": {"device=mobile": 1.0, "cart": 84.5}}, prefix="shared")
    'shared |C device=mobile cart:84.5'
    """
    parts = [prefix] if prefix else []
    for namespace, features in namespaces.items():
        items = [namespace_header(namespace)]
        for name, value in features.items():
            if value == 0.0:
                continue
            items.append(escape(name) if value == 1.0 else f"{escape(name)}:{_format_value(value)}")
        parts.append(" ".join(items))
    return " ".join(parts)


def namespace_header(namespace: str) -> str:
    if not namespace or not namespace.isalnum():
        raise ValueError(f"namespace {namespace!r} must be alphanumeric")
    return "|" + namespace
