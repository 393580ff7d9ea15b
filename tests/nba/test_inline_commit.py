"""Event loops commit their writes inline on SQLite, one transaction per pass, and never wait for a lock."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Connection, event
from sqlalchemy.exc import OperationalError

from nba.errors import StoreUnavailable
from nba.store import Store
from nba.store import schema as t
from nba.store.batcher import MAX_LOCK_WAITS
from nba.store.store import INLINE_EVENTS, WriteJob
from nba.store.write_lock import ProcessWriteLock
from nba.types import CustomerState, Event


@pytest.fixture
def store_url(sqlite_url: str) -> str:
    """Inline commits are SQLite's: the project's `store` fixture, on SQLite only."""
    return sqlite_url


def _put(key: str) -> WriteJob[str]:
    def job(conn: Connection) -> str:
        conn.execute(t.meta_kv.insert().values(key=key, value=threading.current_thread().name))
        return threading.current_thread().name

    return WriteJob(job, [])


def _keys(store: Store) -> dict[str, str]:
    return store.read(lambda c: {r.key: r.value for r in c.execute(t.meta_kv.select()) if r.key.startswith("k")})


def _begins(store: Store) -> list[str]:
    seen: list[str] = []
    for engine in store.writer_engines:
        event.listen(engine, "begin", lambda conn: seen.append(threading.current_thread().name))
    return seen


def test_a_loops_writes_of_one_pass_commit_together_on_its_own_thread(store: Store) -> None:
    begins = _begins(store)

    async def main() -> list[str]:
        return list(await asyncio.gather(*(store.run_async(_put(f"k{i}")) for i in range(10))))

    ran_on = asyncio.run(main())
    assert set(ran_on) == {threading.current_thread().name}  # inline: not the writer thread
    assert len(begins) == 1  # one transaction for the ten
    assert sorted(_keys(store)) == sorted(f"k{i}" for i in range(10))


def test_while_the_writer_thread_holds_the_lock_the_loop_hands_its_writes_over(store: Store) -> None:
    """The loop goes on serving while the writer thread's long transaction holds the lock; its write then
    commits on the writer thread, with the writer's next batch."""
    holding, release = threading.Event(), threading.Event()

    def long_write(conn: Connection) -> None:
        conn.execute(t.meta_kv.insert().values(key="k-long", value="v"))
        holding.set()
        assert release.wait(30)

    blocker = threading.Thread(target=store.write, args=(long_write,))
    blocker.start()
    assert holding.wait(30)

    async def main() -> tuple[str, int]:
        write = asyncio.ensure_future(store.run_async(_put("k-async")))
        ticks = 0
        while not write.done():  # the loop is free: this coroutine keeps running while the write waits
            ticks += 1
            if ticks == 20:
                release.set()
            await asyncio.sleep(0.001)
        return write.result(), ticks

    try:
        ran_on, ticks = asyncio.run(main())
    finally:
        release.set()
        blocker.join(30)
    assert ran_on == "nba-writer" and ticks >= 20
    assert set(_keys(store)) == {"k-long", "k-async"}


def _holds(lock: ProcessWriteLock) -> bool:
    """Whether this test still holds `lock` (its thread lock is taken only while it is held)."""
    return lock._local.locked()


@pytest.fixture
def other(sqlite_url: str) -> Iterator[ProcessWriteLock]:
    """The write lock, held as another worker process holds it: a lock on its own open file, which `flock`
    keeps apart from the store's. Released (if the test has not) and closed afterwards."""
    lock = ProcessWriteLock(sqlite_url.removeprefix("sqlite:///"), timeout=30)
    lock.__enter__()
    yield lock
    if _holds(lock):
        lock.release()
    lock.close()


async def _serve_until_done(writes: list[asyncio.Future[Any]], at_tick: Callable[[int], None]) -> int:
    """Tick the loop (as its other requests would) until every write has its answer; `at_tick(n)` acts on the
    world at tick n. Returns the number of ticks; fails rather than hang if an answer never comes."""
    async def ticking() -> int:
        ticks = 0
        while not all(w.done() for w in writes):
            ticks += 1
            at_tick(ticks)
            await asyncio.sleep(0.001)
        return ticks

    return await asyncio.wait_for(ticking(), 60)


def test_while_another_process_commits_the_loops_writes_wait_together_then_commit_inline(
    store: Store, other: ProcessWriteLock
) -> None:
    """Writes of several passes made while another worker holds the lock share one transaction on the loop's
    thread once it is free; meanwhile the loop keeps serving."""
    begins = _begins(store)
    seen_waiting: list[bool] = []

    async def main() -> tuple[list[str], int]:
        writes = [asyncio.ensure_future(store.run_async(_put("k0")))]

        def act(tick: int) -> None:
            if tick < 5:  # later passes of the loop: these join the waiting write
                writes.append(asyncio.ensure_future(store.run_async(_put(f"k{tick}"))))
            if tick == 20:
                seen_waiting.append(bool(store._batcher._inline_waiting))
                other.release()

        ticks = await _serve_until_done(writes, act)
        return [w.result() for w in writes], ticks

    ran_on, ticks = asyncio.run(main())
    assert seen_waiting == [True] and ticks >= 20
    assert set(ran_on) == {threading.current_thread().name}
    assert begins == [threading.current_thread().name]  # one transaction for all five
    assert sorted(_keys(store)) == [f"k{i}" for i in range(5)]


def test_a_waiting_backlog_commits_a_chunk_per_pass_and_a_failing_job_alone(
    store: Store, other: ProcessWriteLock
) -> None:
    """What piled up during a wait is not committed in one go (that would hold up the loop's requests): a chunk
    commits, its requests resume, then the next chunk commits. A job that fails in it is refused alone."""
    store._batcher._max_batch = 2
    begins = _begins(store)
    resumed: list[int] = []  # writes whose requests went on after their answer
    seen: dict[int, list[int]] = {}  # per write: which requests had resumed when it ran

    def put(i: int) -> WriteJob[str]:
        def job(conn: Connection) -> str:
            seen[i] = list(resumed)
            conn.execute(t.meta_kv.insert().values(key=f"k{i}", value="v"))
            return threading.current_thread().name

        return WriteJob(job, [])

    def bad(conn: Connection) -> None:
        conn.execute(t.meta_kv.insert().values(key="k-bad", value="v"))
        raise StoreUnavailable("refused")

    async def request(job: WriteJob[Any], i: int) -> Any:
        result = await store.run_async(job)
        resumed.append(i)
        return result

    async def main() -> list[Any]:
        writes = [asyncio.ensure_future(request(put(i), i)) for i in range(4)]
        writes.append(asyncio.ensure_future(request(WriteJob(bad, []), 4)))
        await _serve_until_done(writes, lambda tick: other.release() if tick == 10 else None)
        return [w.exception() or w.result() for w in writes]

    outcomes = asyncio.run(main())
    assert outcomes[:4] == [threading.current_thread().name] * 4 and isinstance(outcomes[4], StoreUnavailable)
    assert seen[0] == seen[1] == [] and seen[2] == seen[3] == [0, 1]  # the second chunk after the first resumed
    # Chunks of two, two and the failing job; the failing chunk runs twice (without savepoints, then with): four
    # transactions, all on the loop's thread.
    assert begins == [threading.current_thread().name] * 4
    assert sorted(_keys(store)) == [f"k{i}" for i in range(4)]


def test_if_the_other_process_takes_the_lock_again_first_the_writer_thread_queues_for_it(
    store: Store, other: ProcessWriteLock
) -> None:
    """A batch waits through the helper a bounded number of times: if the other worker has the lock again each
    time the loop tries, the writer thread, which queues in the kernel, takes the batch (retrying from the loop
    could go on for ever)."""
    batcher = store._batcher
    original = batcher._lock_freed
    retook: list[int] = []

    def lock_freed(loop: asyncio.AbstractEventLoop, error: Exception | None) -> None:
        other.__enter__()  # the other worker wins the race for the lock it had just let go
        retook.append(1)
        original(loop, error)

    batcher._lock_freed = lock_freed  # type: ignore[method-assign]

    async def main() -> tuple[str, int]:
        write = asyncio.ensure_future(store.run_async(_put("k1")))

        def act(tick: int) -> None:
            if tick == 5 or (retook and tick > 5 and _holds(other)):
                other.release()

        ticks = await _serve_until_done([write], act)
        return write.result(), ticks

    ran_on, ticks = asyncio.run(main())
    assert len(retook) == MAX_LOCK_WAITS and ran_on == "nba-writer" and ticks > 5
    assert set(_keys(store)) == {"k1"}


def test_a_lock_held_past_its_timeout_refuses_the_waiting_writes_and_the_loop_keeps_serving(
    store: Store, other: ProcessWriteLock
) -> None:
    begins = _begins(store)
    lock = store._batcher._inline_lock
    assert lock is not None
    lock.timeout = 0.2
    seen_waiting: list[bool] = []

    async def main() -> tuple[BaseException | None, int]:
        write = asyncio.ensure_future(store.run_async(_put("k1")))
        ticks = await _serve_until_done([write], lambda tick: seen_waiting.append(bool(store._batcher._inline_waiting)))
        return write.exception(), ticks

    error, ticks = asyncio.run(main())
    other.release()
    assert any(seen_waiting)  # the helper waited, not the writer thread
    assert isinstance(error, StoreUnavailable) and ticks > 2 and begins == []
    assert _keys(store) == {}
    lock.timeout = 30
    assert asyncio.run(_run(store, _put("k2"))) == threading.current_thread().name  # and writes again after


def test_a_batch_that_takes_the_lock_as_the_store_closes_commits_nothing_and_lets_go(sqlite_url: str) -> None:
    """Closing can start between the check for it and taking the lock; once the lock's file is gone a commit
    would run without the cross-process lock, so the batch is refused and the lock released."""
    store = Store(sqlite_url)
    batcher = store._batcher
    lock = batcher._inline_lock
    assert lock is not None
    begins = _begins(store)
    original = lock.try_acquire

    def closing_meanwhile() -> bool:
        taken = original()
        batcher._closed = True  # what close() does first
        return taken

    lock.try_acquire = closing_meanwhile  # type: ignore[method-assign]
    try:
        with pytest.raises(StoreUnavailable, match="shutting down"):
            asyncio.run(asyncio.wait_for(_run(store, _put("k1")), 60))
        assert begins == [] and not lock.held_in_this_process()
    finally:
        lock.try_acquire = original  # type: ignore[method-assign]
        batcher._closed = False
        store.close()


def test_a_write_waiting_for_the_lock_as_the_store_closes_is_refused_not_left_waiting(
    sqlite_url: str, other: ProcessWriteLock
) -> None:
    store = Store(sqlite_url)
    closing = threading.Thread(target=store.close)

    async def main() -> None:
        write = asyncio.ensure_future(store.run_async(_put("k1")))
        while not store._batcher._inline_waiting:  # the pass ends: the write waits for the lock
            await asyncio.sleep(0.001)
        closing.start()
        while not store._batcher._closed:
            await asyncio.sleep(0.001)
        other.release()  # the waiting helper gets the lock, and the loop finds the store closed
        await write

    try:
        with pytest.raises(StoreUnavailable, match="shutting down"):
            asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        if _holds(other):
            other.release()  # before waiting for close(), which waits for the lock
        closing.join(30)
    assert not closing.is_alive()


def test_a_foreign_writer_holding_sqlites_lock_does_not_stall_the_loop(store: Store, sqlite_url: str) -> None:
    """A program outside the group commit (no flock) holds SQLite's write lock: the inline attempt gives up at
    once, the writer thread waits for the lock, and the loop keeps running meanwhile."""
    foreign = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    foreign.execute("BEGIN IMMEDIATE")

    async def main() -> tuple[str, int]:
        write = asyncio.ensure_future(store.run_async(_put("k-async")))
        ticks = 0
        while not write.done():
            ticks += 1
            if ticks == 20:
                foreign.execute("COMMIT")
            await asyncio.sleep(0.001)
        return write.result(), ticks

    try:
        ran_on, ticks = asyncio.run(main())
    finally:
        if foreign.in_transaction:
            foreign.execute("COMMIT")
        foreign.close()
    assert ran_on == "nba-writer" and ticks >= 20
    assert set(_keys(store)) == {"k-async"}
    # The next pass commits inline again.
    assert asyncio.run(_run(store, _put("k-next"))) != "nba-writer"


async def _run(store: Store, job: WriteJob[Any]) -> Any:
    return await store.run_async(job)


def test_a_failing_job_is_refused_alone_inline(store: Store) -> None:
    def bad(conn: Connection) -> None:
        conn.execute(t.meta_kv.insert().values(key="k-bad", value="v"))
        raise StoreUnavailable("refused")

    async def main() -> list[Any]:
        return list(await asyncio.gather(store.run_async(_put("k1")), store.run_async(WriteJob(bad, [])),
                                         store.run_async(_put("k2")), return_exceptions=True))

    first, refused, second = asyncio.run(main())
    assert isinstance(refused, StoreUnavailable)
    assert first == second == threading.current_thread().name
    assert set(_keys(store)) == {"k1", "k2"}


def test_writes_submitted_after_close_are_refused(sqlite_url: str) -> None:
    store = Store(sqlite_url)
    store.close()

    async def main() -> None:
        await store.run_async(_put("k1"))

    with pytest.raises(StoreUnavailable, match="shutting down"):
        asyncio.run(main())


def test_after_a_failed_batch_the_writer_is_asked_again_for_its_work_between_batches(sqlite_url: str) -> None:
    """Inline batches never run the checkpoint's final pass: they wake the writer thread for it. A failure of
    that wake-up batch must not stop the next inline batch from asking again (the log would grow unbounded)."""
    store = Store(sqlite_url)
    batcher = store._batcher
    ran_between, failed = threading.Event(), threading.Event()
    batcher._between_due = lambda: True  # a final pass is due after every batch
    original = batcher._between_batches
    assert original is not None

    def between(conn: Connection) -> None:
        ran_between.set()
        original(conn)

    batcher._between_batches = between

    def fail_once(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("BEGIN") and not failed.is_set():
            failed.set()
            raise OperationalError(statement, None, sqlite3.OperationalError("disk I/O error"))

    event.listen(store.writer_engines[0], "before_cursor_execute", fail_once)  # the writer thread's engine
    try:
        asyncio.run(_run(store, _put("k1")))  # asks the writer thread, whose batch fails
        assert failed.wait(30)
        while batcher._between_requested:  # the failed batch is over once the request is cleared
            threading.Event().wait(0.001)
        assert not ran_between.is_set()
        asyncio.run(_run(store, _put("k2")))  # asks again
        assert ran_between.wait(30)
    finally:
        event.remove(store.writer_engines[0], "before_cursor_execute", fail_once)
        store.close()


def test_a_write_handed_over_as_the_store_closes_is_refused_not_left_waiting(sqlite_url: str) -> None:
    """Shutdown on another thread while a loop's inline attempt finds SQLite locked by a foreign writer: the
    writer thread is gone, so the hand-over must answer the write with an error."""
    store = Store(sqlite_url)
    foreign = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    foreign.execute("BEGIN IMMEDIATE")

    def close_meanwhile(*_: Any) -> None:  # as the inline connection opens
        closing = threading.Thread(target=store._batcher.close)
        closing.start()
        closing.join()

    event.listen(store.writer_engines[1], "connect", close_meanwhile)

    async def main() -> None:
        await asyncio.wait_for(store.run_async(_put("k1")), 30)

    try:
        with pytest.raises(StoreUnavailable, match="shutting down"):
            asyncio.run(main())
    finally:
        foreign.execute("COMMIT")
        foreign.close()
        store.close()


def test_long_writes_go_to_the_writer_thread_so_the_loop_keeps_serving(store: Store) -> None:
    """A large event batch takes ~20 ms of CPU per 1,000 events: committed inline it would hold every request of
    the loop up for that long."""
    put = _put("k-long")
    assert asyncio.run(_run(store, WriteJob(put.fn, [], inline=False))) == "nba-writer"
    events = [Event(event_id=f"e-{i}", customer_id="c-1", type="page_view", timestamp=datetime.now(UTC),
                    properties={})
              for i in range(INLINE_EVENTS + 1)]
    assert store.events_write(events[:INLINE_EVENTS], _keep, datetime.now(UTC)).inline
    assert not store.events_write(events, _keep, datetime.now(UTC)).inline


def _keep(state: CustomerState, _event: Event) -> CustomerState:
    return state
