"""Fixtures for the fault and abuse tests: an in-process app on a temporary store, a switch that breaks the
store the way a failing disk or database server does, and a store that already holds a trained model."""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from litestar import Litestar
from sqlalchemy import Connection, event, func, select
from sqlalchemy.exc import OperationalError

from nba.clock import ManualClock
from nba.decide import DecideRequest
from nba.store import Store
from nba.store import schema as t
from serving.settings import Settings
from tests.conftest import KEYS
from tests.e2e.conftest import start_server  # noqa: F401 - the real-server fixture, shared with tests/e2e
from training.online import OnlineLearner
from training.service import build_app
from training.simulator import SegmentSimulator

AppFactory = Callable[..., Litestar]

# A small catalog whose policy learns from the first reward at once, so tests decide when models change.
SIM = SegmentSimulator(seed=11)
SIM_CATALOG: dict[str, Any] = {
    "actions": {a: {"channels": ["web"], "attributes": SIM.action_attributes(a)} for a in SIM.action_ids},
    "policies": {"web": {"channels": ["web"], "learner": {"exploration": "epsilon", "epsilon": 0.05},
                         "reward": {"window": "1h", "aggregation": "first"}}},
}


@pytest.fixture
def make_app(tmp_path: Path, clock: ManualClock) -> AppFactory:
    """Build an app on `database_url` with a catalog dict; no background learner (tests drive learning)."""

    def make(database_url: str, catalog: dict[str, Any], **settings: Any) -> Litestar:
        path = tmp_path / f"catalog-{len(list(tmp_path.glob('catalog-*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump(catalog, allow_unicode=True))
        options: dict[str, Any] = {"learner": False, "sweep_seconds": 3600, "retention_seconds": 3600,
                                   "log_level": "WARNING", **settings}
        return build_app(Settings(database_url=database_url, api_keys=KEYS, catalog=str(path), **options),
                         clock=clock)

    return make


def row_counts(store: Store) -> dict[str, int]:
    """Rows in every table of the store: what a failed call must leave exactly as it was."""

    def count(conn: Connection) -> dict[str, int]:
        return {name: int(conn.execute(select(func.count()).select_from(table)).scalar_one())
                for name, table in t.metadata.tables.items()}

    return store.read(count)


class StoreFaults:
    """Makes a store's database calls fail, while switched on, the way a broken disk or database server does.

    Hooks SQLAlchemy's `before_cursor_execute` (every statement, `BEGIN IMMEDIATE` included) and `commit` events
    on both of the store's engines and raises `OperationalError` around the driver's own error class: what
    SQLAlchemy raises when the database itself fails. Nothing in the code under test is replaced.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._reads = self._writes = self._commits = False
        self._matching: str | None = None
        self._rate = 1.0
        self._rng = random.Random(0)
        self.raised = 0
        sqlite = store.writer_engines[0].dialect.name == "sqlite"
        self._driver_error: type[Exception] = sqlite3.OperationalError if sqlite else psycopg.OperationalError
        self._message = "disk I/O error" if sqlite else "server closed the connection unexpectedly"
        # Every engine of the store: pooled reads, the decide path's own reader connections, the writers.
        self._writers = store.writer_engines
        self._engines = tuple({id(e): e for e in (store._reader, store._local_reader, *self._writers)}.values())
        for engine in self._engines:
            event.listen(engine, "before_cursor_execute", self._on_execute)
            event.listen(engine, "commit", self._on_commit)

    def remove(self) -> None:
        for engine in self._engines:
            event.remove(engine, "before_cursor_execute", self._on_execute)
            event.remove(engine, "commit", self._on_commit)

    @contextmanager
    def broken(self, *, reads: bool = False, writes: bool = False, commits: bool = False,
               matching: str | None = None, rate: float = 1.0, seed: int = 0) -> Iterator[StoreFaults]:
        """Fail reads, writes (statements of the group-commit writer) and/or COMMITs inside the block.

        `matching` limits failures to statements that contain it; `rate` fails that share of them at random.
        """
        with self._lock:
            self._reads, self._writes, self._commits = reads, writes, commits
            self._matching, self._rate, self._rng = matching, rate, random.Random(seed)
        try:
            yield self
        finally:
            with self._lock:
                self._reads = self._writes = self._commits = False

    def _should_fail(self, enabled: bool, statement: str) -> bool:
        with self._lock:
            if not enabled or (self._matching is not None and self._matching not in statement):
                return False
            if self._rng.random() >= self._rate:
                return False
            self.raised += 1
            return True

    def _error(self, statement: str, params: Any) -> OperationalError:
        return OperationalError(statement, params, self._driver_error(self._message))

    def _on_execute(self, conn: Connection, _cursor: Any, statement: str, params: Any, _context: Any,
                    _many: bool) -> None:
        writer = conn.engine in self._writers
        if self._should_fail(self._writes if writer else self._reads, statement):
            raise self._error(statement, params)

    def _on_commit(self, conn: Connection) -> None:
        if self._should_fail(self._commits, "COMMIT"):
            raise self._error("COMMIT", None)


@pytest.fixture
def faults_for() -> Iterator[Callable[[Store], StoreFaults]]:
    """Attach a `StoreFaults` switch to a store; detached at the end of the test."""
    attached: list[StoreFaults] = []

    def attach(store: Store) -> StoreFaults:
        faults = StoreFaults(store)
        attached.append(faults)
        return faults

    yield attach
    for faults in attached:
        faults.remove()


class _Collect(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.WARNING)
        self._records = records

    def emit(self, record: logging.LogRecord) -> None:
        self._records.append(record)


@pytest.fixture
def service_log() -> Iterator[list[logging.LogRecord]]:
    """WARNING and above from the service's own packages.

    The handler sits on the package loggers, not the root: the app reconfigures the root logger when it
    starts, which drops pytest's `caplog` handler.
    """
    records: list[logging.LogRecord] = []
    handler = _Collect(records)
    loggers = [logging.getLogger(name) for name in ("nba", "bandits", "features", "serving", "training")]
    for logger in loggers:
        logger.addHandler(handler)
    yield records
    for logger in loggers:
        logger.removeHandler(handler)


def probe_context(segment: str) -> dict[str, Any]:
    return {"segment": segment, "device": "mobile"}


def train_snapshot(database_url: str, clock: ManualClock, make_app: AppFactory, rounds: int = 400) -> int:
    """Train the SIM_CATALOG policy from logged decisions and rewards and snapshot it; returns the snapshot id.

    The reward is deterministic (1 for the segment's best action), so the model learns the mapping quickly and
    the trained model's ranking is far from uniform: a lost or blank model is visible in any decision.
    """
    app = make_app(database_url, SIM_CATALOG)
    runtime = app.state.runtime
    learner = OnlineLearner(runtime.store, runtime.models, runtime.featurizer, runtime.catalog, runtime.clock)
    # The engine draws actions from an OS-seeded generator; a fixed seed makes the training, and so the learned
    # ranking the tests compare against, the same in every run (an unlucky draw once left s1's best action second).
    runtime.engine._rng = random.Random(11)
    sim = SegmentSimulator(seed=3)
    for index in range(rounds):
        customer = sim.customer()
        decision = runtime.engine.decide(
            DecideRequest(f"train-{index}", "web", probe_context(customer.segment))
        ).decision
        chosen = decision.actions[0].action_id
        runtime.store.add_reward(decision.decision_id, 0, float(chosen == sim.best_action(customer.segment)),
                                 clock.now())
        if index % 50 == 49:  # publish as the server's learner would, so later decisions exploit what it learned
            learner.learn_pending()
            learner.publish_all()
    learner.learn_pending()
    learner.snapshot_all()
    snapshot = runtime.store.latest_snapshot("web", 1)
    runtime.store.close()
    assert snapshot is not None and snapshot.examples == rounds
    return snapshot.snapshot_id


def top_action(decision: dict[str, Any]) -> tuple[str, float]:
    best = max(decision["ranking"], key=lambda r: r["probability"])
    return best["action_id"], best["probability"]


def assert_distribution(decision: dict[str, Any]) -> None:
    """`ranking` is a probability vector over the eligible actions, and each slot's propensity is in (0, 1]."""
    probabilities = [r["probability"] for r in decision["ranking"]]
    assert probabilities, decision
    assert all(0.0 <= p <= 1.0 for p in probabilities), probabilities
    assert abs(sum(probabilities) - 1.0) < 1e-6, probabilities
    assert all(0.0 < a["probability"] <= 1.0 for a in decision["actions"]), decision["actions"]


def now_iso(clock: ManualClock) -> str:
    now: datetime = clock.now()
    return now.isoformat().replace("+00:00", "Z")
