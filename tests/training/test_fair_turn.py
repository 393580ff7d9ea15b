"""The turn shared by the learner's CPU work and the sweep's rounds goes to whoever asked first."""

from __future__ import annotations

import threading
import time

from training.fair_turn import FairTurn


def _until(condition: object, what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        threading.Event().wait(0.0005)


def test_a_thread_that_gives_the_turn_up_and_asks_again_goes_after_one_already_waiting() -> None:
    """The learner, chunk after chunk, no longer wins the turn back before a waiting sweep round gets it."""
    turn = FairTurn()
    order: list[str] = []

    def sweep_round() -> None:
        with turn:
            order.append("round")

    waiter = threading.Thread(target=sweep_round)
    with turn:
        order.append("chunk 1")
        waiter.start()
        _until(lambda: turn.queued == 2, "the round never queued")
    with turn:  # at once, in the same thread: a plain lock would usually be had again here, first
        order.append("chunk 2")
    waiter.join(timeout=10)
    assert order == ["chunk 1", "round", "chunk 2"]
    assert turn.queued == 0


def test_many_threads_are_served_in_the_order_they_asked_and_one_at_a_time() -> None:
    turn = FairTurn()
    order: list[int] = []
    inside: list[int] = []
    most_inside = 0

    def worker(number: int) -> None:
        nonlocal most_inside
        with turn:
            inside.append(number)
            most_inside = max(most_inside, len(inside))
            order.append(number)
            inside.remove(number)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    with turn:
        for count, thread in enumerate(threads, start=2):
            thread.start()
            _until(lambda c=count: turn.queued == c, "a thread never queued")  # each asks after the one before
    for thread in threads:
        thread.join(timeout=10)
    assert order == list(range(8)) and most_inside == 1
