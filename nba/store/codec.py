"""JSON encoding for the store's text columns."""

from __future__ import annotations

from typing import Any

import msgspec

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def dumps(value: Any) -> str:
    return _encoder.encode(value).decode()


def loads(text: str | bytes) -> Any:
    return _decoder.decode(text)


def encoded_size(value: Any) -> int:
    """Bytes of `value` as JSON (UTF-8), as the store keeps it."""
    return len(_encoder.encode(value))
