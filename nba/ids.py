"""Identifiers: the accepted shape of client ids and the server's own sortable ids."""

from __future__ import annotations

import os
import re
import threading
import time

# `$` for pydantic's Rust regex (end of text); `\Z` for Python's `re`, where `$` also matches before a newline.
ID_PATTERN = r"^[A-Za-z0-9._:\-]{1,128}$"
ID_REGEX = r"^[A-Za-z0-9._:\-]{1,128}\Z"
NAME_REGEX = r"^[A-Za-z0-9_][A-Za-z0-9_\-.]{0,63}\Z"
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_\-.]{0,63}$"
ID_MEANS = "1 to 128 characters, each a letter, a digit, '.', '_', ':' or '-'"
NAME_MEANS = "1 to 64 characters, each a letter, a digit, '_', '-' or '.', the first a letter, a digit or '_'"
_ID_RE = re.compile(ID_REGEX)
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def is_valid_id(value: str) -> bool:
    """Whether `value` is an acceptable opaque id (API.md: 1-128 of letters, digits, `-_.:`).

    >>> is_valid_id("c-1042"), is_valid_id("bad id"), is_valid_id(""), is_valid_id("c-1\\n")
    (True, False, False, False)
    """
    return _ID_RE.fullmatch(value) is not None


def new_id(prefix: str, epoch_ms: int | None = None) -> str:
    """A new ULID-style id: time-ordered (millisecond; now, or `epoch_ms`), 80 random bits, with a type prefix.

    >>> len(new_id("d-")), new_id("d-").startswith("d-"), new_id("d-", 0) < new_id("d-", 1)
    (28, True, True)
    """
    ms = int(time.time() * 1000) if epoch_ms is None else epoch_ms
    return _encode(prefix, (ms << 80) | int.from_bytes(_RANDOM.take(10), "big"))


_SHIFTS = tuple(range(125, -1, -5))  # 26 base-32 digits, most significant first


def id_floor(prefix: str, epoch_ms: int) -> str:
    """The lowest id `new_id(prefix)` can make at `epoch_ms`: every id made earlier sorts below it (bytewise).

    >>> earlier = new_id("d-")
    >>> earlier < id_floor("d-", int(time.time() * 1000) + 1) and id_floor("d-", 0) < earlier
    True
    """
    return _encode(prefix, epoch_ms << 80)


def _encode(prefix: str, value: int) -> str:
    return prefix + "".join([_CROCKFORD[(value >> shift) & 31] for shift in _SHIFTS])


class _RandomPool:
    """Bytes from the OS's random source, read 4 KiB at a time.

    Every `os.urandom` call is a system call that lets go of the GIL; on the decide path each one is a chance
    for another thread to take it and make the request wait. One read serves about 400 ids. A forked child
    (server workers are forked) empties its copy at once, so it never hands out its parent's bytes.
    """

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._buffer = b""
        self._offset = 0
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()  # the parent may have held it at the fork
        self._buffer, self._offset = b"", 0

    def take(self, count: int) -> bytes:
        with self._lock:
            if self._offset + count > len(self._buffer):
                self._buffer, self._offset = os.urandom(max(self._size, count)), 0
            start = self._offset
            self._offset += count
            return self._buffer[start:self._offset]


_RANDOM = _RandomPool()
