"""A SQLite file gives the space retention frees back to the file system, a few pages a transaction, once enough
of it is free; a file from before incremental auto-vacuum says it cannot, until `nba compact` converts it."""

from __future__ import annotations

import os
import random
import sqlite3
from datetime import timedelta
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy import func, select

from nba.catalog import Action, Policy, RewardSpec
from nba.clock import ManualClock, SystemClock
from nba.decide import DecideRequest, DecisionEngine
from nba.errors import StoreUnavailable
from nba.store import Store
from nba.store import schema as t
from nba.store.engine import make_engine
from nba.store.free_space import FreeSpace, compact, free_space, release_pages
from nba.store.retention import CLOCK_MARGIN, Cursors, Horizons, PruneResult, Release, prune
from training.cli import main as nba

KEEP = timedelta(days=90)
# Small enough for a test's few megabytes; otherwise the defaults.
RELEASE = Release(min_bytes=64 * 1024, chunk_pages=64)
BLOB = "x" * 3000  # a context value: each decision record takes about a page


class NoModel:
    def scorer(self, name: str, version: int, policy: Policy) -> None:
        return None


def fill_decisions(store: Store, clock: ManualClock, old: int, young: int) -> list[str]:
    """`old` decisions past the retention period and closed, then `young` ones within it; the young ones' ids."""
    store.put_action("a", Action(channels=["web"]), clock.now())
    store.put_policy("p", Policy(channels=["web"], reward=RewardSpec(window="1h")), clock.now())
    engine = DecisionEngine(store, store.load_catalog, NoModel(), clock, rng=random.Random(0))

    def decide(i: int) -> str:
        return engine.decide(DecideRequest(f"c{i}", "web", {"blob": BLOB, "i": i})).decision.decision_id

    for i in range(old):
        decide(i)
    clock.advance(timedelta(hours=2))
    store.close_due(clock.now())
    clock.advance(KEEP + CLOCK_MARGIN)
    return [decide(i) for i in range(young)]


def _space(store: Store) -> FreeSpace:
    space = store.read(free_space)
    assert space is not None
    return space


def _horizons(clock: ManualClock) -> Horizons:
    return Horizons.at(clock.now(), KEEP, timedelta(0))


def _prune_all(store: Store, clock: ManualClock, release: Release) -> tuple[PruneResult, int]:
    """Passes until nothing is left to do, as the retention thread runs them: the last result and the bytes
    released over all."""
    cursors, released = Cursors(), 0
    while True:
        result = prune(store, _horizons(clock), cursors, max_chunks=5, release=release)
        released += result.released_bytes
        if not result.more:
            return result, released


def _decisions(store: Store) -> int:
    return int(store.read(lambda c: c.execute(select(func.count()).select_from(t.decisions)).scalar_one()))


def test_a_new_file_is_created_able_to_give_pages_back(sqlite_url: str) -> None:
    store = Store(sqlite_url)
    try:
        assert _space(store).releasable
    finally:
        store.close()


def test_opening_a_connection_takes_no_write_lock(tmp_path: Path) -> None:
    """Setting auto-vacuum runs a write transaction: done at every connect, a new connection queued behind the
    group commit holding the lock, and the inline engine's (busy timeout 0) failed at once, a 503."""
    path = tmp_path / "nba.db"
    Store(f"sqlite:///{path}").close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer's group commit, in progress
    try:
        for writer in (True, False):
            engine = make_engine(f"sqlite:///{path}", writer=writer, busy_timeout_ms=0)
            try:
                engine.raw_connection().close()
            finally:
                engine.dispose()
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_retention_gives_free_pages_back_down_to_the_stop_share(tmp_path: Path) -> None:
    path = tmp_path / "nba.db"
    store = Store(f"sqlite:///{path}")
    clock = ManualClock(SystemClock().now())
    try:
        young = fill_decisions(store, clock, old=1200, young=150)
        full = _space(store)
        result, released = _prune_all(store, clock, RELEASE)
        after = _space(store)
        assert result.unreleasable_bytes == 0
        assert released >= full.pages * full.page_size * 0.5  # most of the old decisions' pages went
        assert after.pages * after.page_size == full.pages * full.page_size - released
        assert RELEASE.stop - 0.02 < after.free_share <= RELEASE.stop  # the rest is kept for the rows to come
        # Everything kept is whole, and the store goes on deciding.
        assert _decisions(store) == len(young)
        assert all(store.get_decision(d) is not None for d in young)
        assert store.read(lambda c: c.exec_driver_sql("PRAGMA integrity_check").scalar()) == "ok"
        fill_decisions(store, clock, old=0, young=10)
        final = _space(store)
    finally:
        store.close()
    # The file itself shrank (its last connection checkpoints the log into it).
    assert os.path.getsize(path) <= final.pages * final.page_size < full.pages * full.page_size - released // 2


def test_free_space_below_the_start_share_is_kept_and_a_started_release_goes_on_to_the_stop(
    sqlite_url: str,
) -> None:
    store = Store(sqlite_url)
    clock = ManualClock(SystemClock().now())
    try:
        fill_decisions(store, clock, old=600, young=150)
        free = _space(store)
        assert free.free_share < 0.1  # nothing deleted yet
        pruned, released = _prune_all(store, clock, Release(start=0.99, min_bytes=64 * 1024, chunk_pages=64))
        assert released == 0 and pruned.released_bytes == 0 and _decisions(store) == 150
        share = _space(store).free_share
        assert share > 0.3  # freed by the deletes, but under the start share

        cursors = Cursors()
        first = prune(store, _horizons(clock), cursors, max_chunks=1, release=RELEASE)
        assert 0 < first.released_bytes <= RELEASE.chunk_pages * free.page_size  # a chunk, or what 5 ms allow
        assert first.more and cursors.releasing  # one chunk a pass here: the next pass goes on
        rest = prune(store, _horizons(clock), cursors, max_chunks=1000, release=RELEASE)
        assert rest.released_bytes > 0 and not rest.more and not cursors.releasing
        assert RELEASE.stop - 0.02 < _space(store).free_share <= RELEASE.stop
    finally:
        store.close()


def test_a_release_stops_when_its_time_is_up(sqlite_url: str) -> None:
    """Moving a page costs 10 to over 150 us: a chunk is bounded by time too, as the write lock is held meanwhile."""
    store = Store(sqlite_url)
    clock = ManualClock(SystemClock().now())
    try:
        fill_decisions(store, clock, old=300, young=10)
        prune(store, _horizons(clock), release=Release(start=1.0))  # deletes, releases nothing
        free = _space(store).free_pages
        assert free > 100
        assert store.write(partial(release_pages, pages=100, seconds=0.0)) == 1  # one page, then out of time
        assert store.write(partial(release_pages, pages=100, seconds=60.0)) == 100
        assert _space(store).free_pages == free - 101
    finally:
        store.close()


def test_a_file_from_before_auto_vacuum_says_so_until_compacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # as the store created files before: WAL, no auto-vacuum
        conn.execute("PRAGMA journal_mode=WAL")
    url = f"sqlite:///{path}"
    store = Store(url)
    clock = ManualClock(SystemClock().now())
    try:
        young = fill_decisions(store, clock, old=600, young=100)
        result, released = _prune_all(store, clock, RELEASE)
        assert not _space(store).releasable
        assert released == 0 and result.unreleasable_bytes >= 2**20
    finally:
        store.close()
    size = os.path.getsize(path)

    monkeypatch.setenv("NBA_DATABASE_URL", url)
    reader = sqlite3.connect(path, isolation_level=None)  # a running service's read, in progress
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM decisions").fetchone()
    try:
        with pytest.raises(StoreUnavailable, match="stop the service"):  # rewritten, but the reader kept it
            compact(url, checkpoint_wait=0.1)  # from being copied back: not smaller (`nba compact` exits 2)
        assert os.path.getsize(path) == size
    finally:
        reader.execute("ROLLBACK")
        reader.close()
    assert nba(["compact"]) == 0
    assert os.path.getsize(path) < size * 0.5
    said = capsys.readouterr().out
    assert f"-> {os.path.getsize(path) / 2**20:.1f} MiB" in said  # the file's real size

    store = Store(url)
    try:
        assert _space(store).releasable and _space(store).free_pages == 0
        assert _decisions(store) == len(young)
        assert store.read(lambda c: c.exec_driver_sql("PRAGMA integrity_check").scalar()) == "ok"
    finally:
        store.close()


def test_compact_refuses_what_is_not_a_sqlite_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NBA_DATABASE_URL", f"sqlite:///{tmp_path / 'missing.db'}")
    assert nba(["compact"]) == 2
    assert "missing.db" in capsys.readouterr().err
    assert not (tmp_path / "missing.db").exists()  # not created empty
    monkeypatch.setenv("NBA_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    assert nba(["compact"]) == 2
    assert "VACUUM FULL" in capsys.readouterr().err


@pytest.mark.postgres
def test_postgresql_leaves_its_free_space_to_autovacuum(postgres_url: str) -> None:
    store = Store(postgres_url)
    clock = ManualClock(SystemClock().now())
    try:
        fill_decisions(store, clock, old=20, young=5)
        result, released = _prune_all(store, clock, Release(start=0.0, stop=0.0, min_bytes=0))
        assert released == 0 and result.unreleasable_bytes == 0 and store.read(free_space) is None
        assert _decisions(store) == 5
    finally:
        store.close()
