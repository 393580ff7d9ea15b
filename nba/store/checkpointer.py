"""SQLite WAL checkpoints off the commit path.

By default SQLite checkpoints inside the COMMIT that pushes the write-ahead log past 1,000 pages: that COMMIT
copies the log into the database file and syncs it, and every decision waiting on that group commit waits
for the copy too. The writer's connections therefore do not checkpoint (`wal_autocheckpoint=0`, set in
engine.py). Instead:
- this thread runs a PASSIVE checkpoint every `interval` seconds (50 ms), copying the log into the database
  beside the writer, never blocking it or readers;
- the log only starts over once a checkpoint has copied all of it, which under continuous writes a checkpoint
  running beside the writer never does. So once the log file outgrows `limit_bytes`, this thread copies pass
  after pass until a pass finds little new to copy, and then signals the writer, which finishes the
  checkpoint between two group commits (`between_batches`), holding the writers' cross-process lock so that
  no other worker appends meanwhile. With no writes in flight that last pass copies
  only what the previous one missed (a few milliseconds of writes, not the whole log); the next transaction
  starts the log from the beginning and SQLite truncates the file back to the limit (`journal_size_limit`,
  set on the writer's connections).
- should this thread fall behind or stop, the writer finishes a checkpoint itself once the log reaches
  `HARD_FACTOR` times the limit, so the file stays bounded whatever happens. There it waits for a pass this
  thread is in (which then stops its catch-up): when it gave up after 20 ms instead, a thread slowed by a
  loaded machine kept it from ever checkpointing, and in one test run the log reached 3.3 times the limit.

Measured (bench, 1,000 decisions/s, 1 worker on 2 cores): with the writer copying the whole 8 MiB log itself,
each group commit after a restart waited 13-19 ms, five times a second. With that fixed, slow requests still
came in bursts every ~0.6 s, in step with this thread's passes (0.5 s apart, ~20 ms each): the pass takes a
core in one burst. Passes every 50 ms cut decide's p99 at 1,000 req/s from a median of 13.6 ms (6 runs of 20 s)
to 7.8 ms (7 runs, interleaved with those; README, Benchmarks).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from sqlalchemy import Connection, Engine

log = logging.getLogger(__name__)
WAL_LIMIT_BYTES = 32 * 1024 * 1024
# Short, frequent passes: each copies ~50 ms of writes (a few milliseconds of work) instead of ~0.5 s of them
# (~20 ms of a core in one burst, which on two cores stalled the event loop: see the module docstring).
CHECKPOINT_SECONDS = 0.05
HARD_FACTOR = 3  # the writer checkpoints by itself at this multiple of the limit
FEW_FRAMES = 256  # a pass copying fewer new frames has caught up (1 MiB of 4 KiB pages, or an 8th of the limit)
# How often an inline commit looks at the log's size. Each look is a `stat`, a system call that lets go of the
# GIL: asked after every commit it cost 12 us per commit of one decision (in process, cProfile). The log grows by
# about 50 MB/s at the busiest, so a look every 5 ms lets it pass the limit by a quarter of a megabyte at most.
SIZE_CHECK_SECONDS = 0.005
MAX_PASSES = 20  # catch-up passes before signalling the writer anyway
# How long the writer at the hard limit keeps trying while another process's checkpoint runs (this process's own
# thread makes way for it: see `between_batches`).
HARD_WAIT_SECONDS = 2.0


class WalCheckpointer:
    def __init__(self, engine: Engine, interval: float = CHECKPOINT_SECONDS, limit_bytes: int = WAL_LIMIT_BYTES,
                 process_lock: AbstractContextManager[object] | None = None) -> None:
        """`process_lock` is the writers' cross-process lock: the writer's final pass holds it, so no other
        process appends to the log while it may start over."""
        self._engine = engine
        self._interval = interval
        self._limit = limit_bytes
        self._lock = process_lock if process_lock is not None else nullcontext()
        self._few = max(16, min(FEW_FRAMES, limit_bytes // 4096 // 8))  # caught up: less than this left to copy
        self._wal_path = f"{engine.url.database}-wal"
        self._stop = threading.Event()
        self._wake = threading.Event()  # the writer saw the log past the limit: catch up now
        self._caught_up = threading.Event()  # little is left to copy: the writer may finish the checkpoint
        self._pass = threading.Lock()  # held through each checkpoint pass of this process (thread or writer)
        self._writer_waits = threading.Event()  # the writer at the hard limit waits for the pass lock
        self.writer_checkpoints = 0  # final passes the writer ran (on a signal or at the hard limit)
        self._thread_copied = 0  # frames checkpointed as of this thread's last pass on the current log
        self.last_writer_pass: tuple[int, int] | None = None  # (frames in the log, frames the writer copied)
        self._next_size_check = 0.0  # monotonic time before which `writer_due` does not look at the log again
        self._thread = threading.Thread(target=self._run, name="nba-wal-checkpoint", daemon=True)
        self._thread.start()

    def checkpoint(self) -> tuple[int, int, int]:
        """Run one passive checkpoint: (busy, frames in the log, frames checkpointed); -1 frames when another
        connection's checkpoint was running."""
        raw = self._engine.raw_connection()
        try:
            with self._pass:
                cursor = raw.cursor()
                row = cursor.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                cursor.close()
            busy, logged, copied = int(row[0]), int(row[1]), int(row[2])
            if copied >= 0:
                self._thread_copied = copied
            return busy, logged, copied
        finally:
            raw.close()

    def _wal_size(self) -> int:
        try:
            return os.stat(self._wal_path).st_size
        except OSError:
            return 0

    def catch_up(self) -> int:
        """Copy the log pass after pass until a pass finds little new, then let the writer finish.

        Even a pass that copied the whole log signals: a write transaction that began before it keeps the log
        from starting over, and under continuous writes one always has. Returns the number of passes run.
        """
        copied = -1
        passes = 0
        while passes < MAX_PASSES and not self._stop.is_set():
            if self._writer_waits.is_set():
                return passes  # the writer finishes it now
            _, logged, now_copied = self.checkpoint()
            passes += 1
            if now_copied < 0:  # another process's checkpoint is running: try again shortly
                self._stop.wait(0.005)
                continue
            if 0 <= now_copied < copied:
                return passes  # the log started over meanwhile: nothing to finish
            if copied >= 0 and (now_copied - copied < self._few or logged - now_copied < self._few):
                break  # this pass had little to do: what is left is a few milliseconds of writes
            copied = now_copied
        self._caught_up.set()
        return passes

    def writer_due(self) -> bool:
        """Whether the writer has a final pass to run now; asked after the batches that event loops commit
        inline (they never run one), so the writer thread is woken only when there is one. It looks at the log
        at most every `SIZE_CHECK_SECONDS`; between two looks nothing is due."""
        now = time.monotonic()
        if now < self._next_size_check:
            return False
        self._next_size_check = now + SIZE_CHECK_SECONDS
        return self._due(self._wal_size())

    def _due(self, size: int) -> bool:
        """A final pass is due: the log is past the limit and this thread has caught up (or cannot)."""
        if size <= self._limit:
            self._caught_up.clear()  # a signal for a log that has since started over
            return False
        if not self._caught_up.is_set() and size < HARD_FACTOR * self._limit and self._thread.is_alive():
            self._wake.set()  # most of the copying happens beside the writer; it finishes on the next signal
            return False
        return True

    def between_batches(self, conn: Connection) -> None:
        """Run by the writer between group commits: finish the checkpoint once the log has grown long."""
        size = self._wal_size()
        if not self._due(size):
            return
        with self._lock:
            if self._wal_size() <= self._limit:  # another process's writer finished it meanwhile
                self._caught_up.clear()
                return
            raw = conn.connection.dbapi_connection  # autocommit: a checkpoint runs outside any transaction
            assert raw is not None
            hard = size >= HARD_FACTOR * self._limit
            logged, copied = self._writer_pass(raw, hard)
        if copied < 0:
            if hard:
                log.warning("WAL at %d bytes, %d times its limit: another process's checkpoint kept the writer "
                            "from finishing one for %g s", size, HARD_FACTOR, HARD_WAIT_SECONDS)
            return
        self._caught_up.clear()
        behind = self._thread_copied if 0 <= self._thread_copied <= copied else 0
        self.last_writer_pass = (int(logged), int(copied) - behind)
        self._thread_copied = 0  # the log starts over with the next transaction
        self.writer_checkpoints += 1

    def _writer_pass(self, raw: Any, hard: bool) -> tuple[int, int]:
        """The writer's checkpoint: (frames in the log, frames checkpointed), -1 if another checkpoint ran.

        Below the hard limit, one try, and none while this process's thread is in a pass: the writer tries
        again after the next batch. At the hard limit the file must not grow on, so the writer waits: this
        thread ends its catch-up and makes way after the pass it is in (however long a starved core makes that
        pass), and another process's checkpoint is waited for up to `HARD_WAIT_SECONDS`."""
        if not hard:
            if not self._pass.acquire(blocking=False):
                return -1, -1
            try:
                row = raw.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            finally:
                self._pass.release()
            return int(row[1]), int(row[2])
        self._writer_waits.set()
        deadline = time.monotonic() + HARD_WAIT_SECONDS
        try:
            with self._pass:
                while True:
                    row = raw.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if int(row[2]) >= 0 or time.monotonic() >= deadline:
                        return int(row[1]), int(row[2])
                    time.sleep(0.001)
        finally:
            self._writer_waits.clear()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            if self._caught_up.is_set():
                continue  # the writer runs the next checkpoint; one here would only collide with it
            try:
                if self._wal_size() > self._limit:
                    self.catch_up()
                else:
                    self.checkpoint()
            except Exception as exc:  # a locked or failing disk: the next round tries again
                log.warning("WAL checkpoint failed: %s", exc)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
