"""A lock handed over in the order it was asked for: the turn the learner's CPU work and the sweep's rounds share.

With a plain lock, a thread that releases and at once takes it again (the learner, chunk after chunk) usually wins
it back before a waiting thread wakes: a sweep round waited up to a whole learner pass (76 ms in a review) to
start, and reward windows closed that much later. Here each entry takes a ticket, and the turn goes to the lowest
ticket waiting: a round waits for the chunk in progress at most.
"""

from __future__ import annotations

import threading


class FairTurn:
    """A first-come, first-served lock (a ticket lock); not reentrant."""

    def __init__(self) -> None:
        self._changed = threading.Condition(threading.Lock())
        self._next_ticket = 0
        self._serving = 0

    def __enter__(self) -> FairTurn:
        with self._changed:
            ticket = self._next_ticket
            self._next_ticket += 1
            while ticket != self._serving:
                self._changed.wait()
        return self

    def __exit__(self, *_exc: object) -> None:
        with self._changed:
            self._serving += 1
            self._changed.notify_all()

    @property
    def queued(self) -> int:
        """Threads holding or waiting for the turn."""
        with self._changed:
            return self._next_ticket - self._serving
