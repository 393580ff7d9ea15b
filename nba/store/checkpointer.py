"""SQLite WAL checkpoints off the commit path.

By default SQLite checkpoints inside the COMMIT that pushes the write-ahead log past 1,000 pages: that COMMIT
copies the log into the database file and syncs it, and every decision waiting on that group commit waits
for the disk too. The writer's connections therefore do not checkpoint (`wal_autocheckpoint=0`, set in
engine.py); this thread runs a PASSIVE checkpoint every `interval` seconds instead, which never blocks the
writer or readers. Each process runs one; concurrent passive checkpoints are safe.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Engine

log = logging.getLogger(__name__)


class WalCheckpointer:
    def __init__(self, engine: Engine, interval: float = 0.5) -> None:
        self._engine = engine
        self._interval = interval
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

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.checkpoint()
            except Exception as exc:  # a locked or failing disk: the next round tries again
                log.warning("WAL checkpoint failed: %s", exc)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
