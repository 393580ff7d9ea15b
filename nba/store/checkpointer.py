"""SQLite WAL checkpoints off the commit path.

By default SQLite checkpoints inside the COMMIT that pushes the write-ahead log past 1,000 pages: that COMMIT
copies the log into the database file and syncs it, and every decision waiting on that group commit waits
for the disk too. The writer's connections therefore do not checkpoint (`wal_autocheckpoint=0`, set in
engine.py). Instead:
- this thread runs a PASSIVE checkpoint every `interval` seconds, copying the log into the database beside
  the writer, never blocking it or readers;
- under continuous writes such a checkpoint never catches up with the end of the log, and the log only starts
  over once one does: so once the log file outgrows `WAL_LIMIT_BYTES`, the group-commit writer finishes the
  checkpoint itself between two batches (`between_batches`), after the first batch's answers are out. Little
  is left to copy by then; the next transaction starts the log from the beginning, and SQLite truncates the
  file back to the limit (`journal_size_limit`, set on the writer's connections).
"""

from __future__ import annotations

import logging
import os
import threading

from sqlalchemy import Connection, Engine

log = logging.getLogger(__name__)
WAL_LIMIT_BYTES = 8 * 1024 * 1024


class WalCheckpointer:
    def __init__(self, engine: Engine, interval: float = 0.5) -> None:
        self._engine = engine
        self._interval = interval
        self._wal_path = f"{engine.url.database}-wal"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nba-wal-checkpoint", daemon=True)
        self._thread.start()

    def checkpoint(self) -> tuple[int, int, int]:
        """Run one passive checkpoint: (busy, frames in the log, frames checkpointed)."""
        raw = self._engine.raw_connection()
        try:
            cursor = raw.cursor()
            row = cursor.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            cursor.close()
            return int(row[0]), int(row[1]), int(row[2])
        finally:
            raw.close()

    def between_batches(self, conn: Connection) -> None:
        """Run by the writer between group commits: complete the checkpoint once the log has grown long."""
        try:
            size = os.stat(self._wal_path).st_size
        except OSError:
            return
        if size > WAL_LIMIT_BYTES:
            raw = conn.connection.dbapi_connection  # autocommit: a checkpoint runs outside any transaction
            assert raw is not None
            raw.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.checkpoint()
            except Exception as exc:  # a locked or failing disk: the next round tries again
                log.warning("WAL checkpoint failed: %s", exc)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
