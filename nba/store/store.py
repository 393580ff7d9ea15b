"""The store facade: reads on a pooled engine, writes through one group-commit writer per process."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from nba.catalog import Action, CatalogFile, EventType, Policy, RewardSpec
from nba.catalog_view import CatalogView
from nba.clock import epoch_ms
from nba.constraints import CounterState
from nba.errors import CatalogChanged, LocksHeld, StoreUnavailable
from nba.store import catalog_repo, customer_repo, decision_repo, learning_repo, outcome_repo
from nba.store.batcher import WriteBatcher, store_errors
from nba.store.budget_reads import BudgetReads
from nba.store.checkpointer import CHECKPOINT_SECONDS, WAL_LIMIT_BYTES, WalCheckpointer
from nba.store.customer_repo import Reducer
from nba.store.decide_reads import customer_inputs
from nba.store.engine import SHARED, WRITER_LOCK_TIMEOUT_MS, lock_id, lock_keys, lock_namespace, make_engine
from nba.store.online_indexes import MIGRATION_LOCK, build_online_indexes, store_schema
from nba.store.prepared import AUTOCOMMIT_READS
from nba.store.schema import migrate
from nba.store.write_lock import ProcessWriteLock
from nba.types import CustomerState, Decision, Event, EventOutcome

T = TypeVar("T")
INLINE_EVENTS = 50  # event batches up to this size (about 1 ms of work) may be committed by the event loop
MAX_UNCLOSABLE = 1000  # decisions a process remembers as impossible to close (beyond that, each is tried again)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WriteJob(Generic[T]):
    """A write for the group-commit writer: `fn` runs in the shared transaction under the advisory `keys`.

    `inline` says an event loop may commit it itself (see batcher.py); a long one (a large event batch, ~20 ms
    of CPU per 1,000 events) goes to the writer thread instead, so the loop keeps serving decisions meanwhile.
    """

    fn: Callable[[Connection], T]
    keys: Sequence[str]
    inline: bool = True
    # Keys (of `keys`) the write would rather do without than wait for while another session holds them: then it
    # raises `LocksHeld` instead (PostgreSQL; see `WriteBatcher.submit`).
    optional_keys: Sequence[str] = ()


def _change_ms(now: datetime, clock: Callable[[], datetime] | None) -> int:
    """The time of a catalog change, read inside its write transaction when a clock is given (never before `now`).

    An action saved with a new budget window carries the budget's use into the window current at this time
    (`catalog_repo.carry_budget_use`). Decisions under the old budget commit before the change does (they hold
    the catalog as they checked it), so this time is after every one of them: read before the change queued for
    the write lock instead, a window boundary passed while it waited left the decisions made since uncounted, and
    the new window was filled again (an adversarial run: 13 offers against a limit of 5)."""
    return max(epoch_ms(now), epoch_ms(clock())) if clock is not None else epoch_ms(now)


class Store:
    """Everything the service keeps: catalog, customers, events, decisions, outcomes, models."""

    def __init__(self, url: str, synchronous: str = "NORMAL", max_batch: int = 256,
                 checkpoint_seconds: float = CHECKPOINT_SECONDS, wal_limit_bytes: int = WAL_LIMIT_BYTES) -> None:
        self.url = url
        self.unclosable: dict[str, str] = {}  # decision id -> why its reward window could not be closed
        # Decision id -> (monotonic) time until which the sweep leaves it: another session held its lock.
        self._held_decisions: dict[str, float] = {}
        self._reader = make_engine(url, writer=False, synchronous=synchronous)
        self._writer_engine = make_engine(url, writer=True, synchronous=synchronous, wal_limit_bytes=wal_limit_bytes)
        self._thread_reader = threading.local()
        self._local_reader = make_engine(url, writer=False, synchronous=synchronous) if self.local else self._reader
        self._budgets = BudgetReads()
        self.lock_namespace = self._migrate()
        database = self._writer_engine.url.database
        self._write_lock = ProcessWriteLock(database) if self.local and database not in (None, "", ":memory:") else None
        self._checkpointer = (
            WalCheckpointer(self._reader, checkpoint_seconds, wal_limit_bytes, self._write_lock)
            if self.local else None
        )
        # Event loops commit their writes inline (batcher.py); they never wait for SQLite's lock, so their
        # connection gives up on it at once and hands the batch to the writer thread.
        self._inline_engine = (
            make_engine(url, writer=True, synchronous=synchronous, wal_limit_bytes=wal_limit_bytes, busy_timeout_ms=0)
            if self._write_lock is not None else None
        )
        self._batcher = WriteBatcher(
            self._writer_engine, max_batch=max_batch,
            between_batches=self._checkpointer.between_batches if self._checkpointer is not None else None,
            process_lock=self._write_lock,
            inline_engine=self._inline_engine,
            between_due=self._checkpointer.writer_due if self._checkpointer is not None else None,
            lock_namespace=self.lock_namespace,
        )

    @property
    def writer_engines(self) -> tuple[Engine, ...]:
        """The engines group commits write through: the writer thread's, and event loops' inline one."""
        return (self._writer_engine,) + ((self._inline_engine,) if self._inline_engine is not None else ())

    def _migrate(self) -> str:
        """Bring the schema up to date; returns the store's lock namespace (`engine.lock_namespace`)."""
        try:
            with self._writer_engine.connect() as conn:
                if conn.dialect.name != "postgresql":
                    with conn.begin():
                        migrate(conn)
                    return lock_namespace(conn)
                isolation = conn.get_isolation_level()
                conn.execution_options(isolation_level="AUTOCOMMIT")
                schema = store_schema(conn)
                built = build_online_indexes(conn, schema)
                if built:
                    log.info("built indexes %s concurrently, for the schema migration", ", ".join(built))
                conn.commit()  # ends the driver-less transaction autocommit mode still begins
                conn.execution_options(isolation_level=isolation)
                with conn.begin():
                    conn.exec_driver_sql("SET LOCAL lock_timeout = 0")  # another process may be migrating: wait
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
                    # New tables go beside the others, wherever the head of the search path is.
                    conn.exec_driver_sql(f'SET LOCAL search_path TO "{schema}"')
                    migrate(conn)
                return lock_namespace(conn)  # where the tables are, now that they are
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"cannot open the store: {exc.__class__.__name__}: {exc}") from exc

    def close(self) -> None:
        self._batcher.close()
        if self._checkpointer is not None:
            self._checkpointer.close()
        if self._write_lock is not None:
            self._write_lock.close()
        self._reader.dispose()
        self._local_reader.dispose()
        self._writer_engine.dispose()
        if self._inline_engine is not None:
            self._inline_engine.dispose()

    # -- plumbing --------------------------------------------------------------------------------------
    def read(self, fn: Callable[[Connection], T]) -> T:
        try:
            with self._reader.connect() as conn:
                return fn(conn)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"the store could not be read: {exc.__class__.__name__}") from exc

    def read_now(self, fn: Callable[[Connection], T]) -> T:
        """A read on the decide path: on SQLite, on this thread's own connection and without a transaction.

        A pool checkout and a BEGIN cost more than SQLite takes to answer the few statements a decision
        reads. Each statement then sees its own snapshot, which the decide path accepts: the statements
        it reads with are self-contained, and every counter rule is checked again when the decision is
        written. Elsewhere (PostgreSQL) this is `read`.
        """
        if not self.local:
            return self.read(fn)
        conn: Connection | None = getattr(self._thread_reader, "conn", None)
        try:
            if conn is None:
                # From an engine of its own: the flag stays with these connections, never reaches `read`'s pool.
                conn = self._local_reader.connect()
                conn.info[AUTOCOMMIT_READS] = True
                self._thread_reader.conn = conn
            try:
                return fn(conn)
            finally:
                if conn.in_transaction():  # a statement run through SQLAlchemy began one: do not pin a snapshot
                    conn.rollback()
        except SQLAlchemyError as exc:
            self._thread_reader.conn = None
            if conn is not None:
                conn.invalidate()
            raise StoreUnavailable(f"the store could not be read: {exc.__class__.__name__}") from exc

    def write(self, fn: Callable[[Connection], T], keys: Sequence[str] = (), wait_apart: bool = True) -> T:
        """Run `fn` in a group commit and return its result once committed; `wait_apart` as in
        `WriteBatcher.submit`."""
        return self._batcher.submit(fn, keys, wait_apart)

    def write_apart(self, fn: Callable[[Connection], T], keys: Sequence[str] = ()) -> T:
        """A small write in a transaction of its own beside the group commit, on PostgreSQL: a lease's renewal must
        not queue behind a batch that waits for a lock another host holds (a sweep round waited 10 s, the writer's
        lock timeout, for a customer lock of a host frozen mid-transaction; the learner lease, renewed behind it,
        ran out and passed to another host). On SQLite every write takes the one write lock: as `write`."""
        if self.local:
            return self.write(fn, keys)
        try:
            with self._writer_engine.begin() as conn:
                lock_keys(conn, list(keys), namespace=self.lock_namespace)
                return fn(conn)
        except (SQLAlchemyError, self._writer_engine.dialect.loaded_dbapi.Error) as exc:
            raise StoreUnavailable(f"the store could not commit: {exc!r}") from exc

    def run(self, job: WriteJob[T]) -> T:
        """Run a prepared write and return its result once committed."""
        return self._batcher.submit(job.fn, job.keys, optional_keys=job.optional_keys)

    def run_async(self, job: WriteJob[T]) -> asyncio.Future[T]:
        """`run` for a coroutine: await the committed result."""
        return self._batcher.submit_async(job.fn, job.keys, inline=job.inline, optional_keys=job.optional_keys)

    @property
    def local(self) -> bool:
        """Whether the database is a local file (SQLite): its reads take microseconds and may run inline."""
        return self._reader.dialect.name == "sqlite"

    def ping(self) -> None:
        self.read(lambda conn: conn.exec_driver_sql("SELECT 1").scalar())

    def check_writes(self) -> None:
        """Raise `StoreUnavailable` while the store cannot commit.

        Free while writes succeed. After a failed group commit, a probe transaction (take the write lock,
        read, commit) must succeed first, so a store that can be read but not written is not reported usable.
        """
        if not self._batcher.alive:
            raise StoreUnavailable("the store's writer has stopped")
        if self._batcher.failing_since is None:
            return
        self.write(catalog_repo.catalog_version)

    # -- catalog ---------------------------------------------------------------------------------------
    def catalog_version(self) -> int:
        return self.read(catalog_repo.catalog_version)

    def event_types_version(self) -> int:
        return self.read(catalog_repo.event_types_version)

    def load_catalog(self) -> CatalogView:
        return self.read(catalog_repo.load_view)

    def put_action(self, action_id: str, action: Action, now: datetime,
                   clock: Callable[[], datetime] | None = None) -> bool:
        """Create or replace an action; returns whether it was created. With `clock`, the change's time is read
        again inside its write transaction (`_change_ms`)."""
        return self._catalog_write(
            lambda c: catalog_repo.put_action(c, action_id, action, _change_ms(now, clock)), ["catalog"])

    def delete_action(self, action_id: str) -> bool:
        return self._catalog_write(lambda c: catalog_repo.delete_action(c, action_id), ["catalog"])

    def put_policy(self, name: str, policy: Policy, now: datetime) -> tuple[int, bool]:
        return self._catalog_write(lambda c: catalog_repo.put_policy(c, name, policy, epoch_ms(now)), ["catalog"])

    def put_event_type(self, name: str, spec: EventType, now: datetime) -> bool:
        return self._catalog_write(lambda c: catalog_repo.put_event_type(c, name, spec, epoch_ms(now)),
                                   ["catalog", "event-types"])

    def _catalog_write(self, fn: Callable[[Connection], T], keys: Sequence[str]) -> T:
        """A change of the catalog (the admin API), which does not wait for a lock another session holds.

        Every decision holds the catalog's lock in shared mode, and PostgreSQL queues new shared requests behind
        a waiting exclusive one: a change waiting for a host frozen mid-decision held up every decision of every
        host for the lock timeout (10 s, in a two-host review). It is refused instead (503, to retry) once the
        group commit's 200 ms have passed."""
        try:
            return self.write(fn, keys, wait_apart=False)
        except LocksHeld as exc:
            raise StoreUnavailable("the catalog is in use by a write of another session that has not ended (a "
                                   "host frozen mid-transaction?); try again") from exc

    def seed_catalog(self, catalog: CatalogFile, now: datetime, digest: str | None = None,
                     clock: Callable[[], datetime] | None = None) -> bool:
        """Apply a catalog file: every entry it names is created or updated; nothing else is touched.

        With `digest` (`nba.catalog.catalog_digest`), only if the store has not applied that very content yet:
        returns whether it applied it. A restart with the same file then leaves the admin API's changes alone
        (a deactivated action stays deactivated); a changed file is applied, all or nothing. `clock` as in
        `put_action`.
        """

        def job(conn: Connection) -> bool:
            ms = _change_ms(now, clock)
            if digest is not None and catalog_repo.applied_file_digest(conn) == digest:
                return False
            for name, spec in catalog.event_types.items():
                catalog_repo.put_event_type(conn, name, spec, ms)
            for action_id, action in catalog.actions.items():
                catalog_repo.put_action(conn, action_id, action, ms)
            for name, policy in catalog.policies.items():
                catalog_repo.put_policy(conn, name, policy, ms, check_channels=False)
            catalog_repo.check_channel_owners(conn)  # as the file leaves them, whatever order it lists policies in
            if digest is not None:
                catalog_repo.record_file_digest(conn, digest)
            return True

        return self.write(job, ["catalog", "event-types"])

    def applied_catalog_digest(self) -> str | None:
        """The digest of the catalog file last applied to this store (None: none was)."""
        return self.read(catalog_repo.applied_file_digest)

    def adopt_catalog_digest(self, digest: str) -> bool:
        """Record `digest` as applied without applying it, if the store has a catalog but no digest (it predates
        them: its catalog, admin changes included, stands); returns whether it did."""
        def job(conn: Connection) -> bool:
            if catalog_repo.applied_file_digest(conn) is not None or catalog_repo.catalog_version(conn) == 0:
                return False
            catalog_repo.record_file_digest(conn, digest)
            return True

        return self.write(job, ["catalog"])

    # -- customers and events --------------------------------------------------------------------------
    def resolve_customer(self, customer_id: str) -> str:
        return self.read(lambda c: customer_repo.resolve(c, customer_id))

    def load_customer(self, customer_id: str) -> CustomerState | None:
        return self.read(lambda c: customer_repo.load_state(c, customer_id))

    def customer_aliases(self, customer_id: str) -> list[str]:
        return self.read(lambda c: customer_repo.aliases_of(c, customer_id))

    def events_write(self, batch: Sequence[Event], reducer: Reducer, now: datetime,
                     event_types_version: int | None = None) -> WriteJob[list[EventOutcome]]:
        """Store events and fold them into state; with `event_types_version`, only while the event types that
        validated them are still that version, else `CatalogChanged`, so they are validated again."""
        keys = [f"customer:{e.customer_id}" for e in batch] + [f"event:{e.event_id}" for e in batch]

        def job(conn: Connection) -> list[EventOutcome]:
            if (event_types_version is not None
                    and catalog_repo.event_types_version_in_transaction(conn) != event_types_version):
                raise CatalogChanged("the event types changed since these events were validated")
            return customer_repo.ingest_events(conn, batch, reducer, epoch_ms(now))

        if event_types_version is not None:
            keys.append(f"{SHARED}event-types")  # they stay as checked until the commit
        return WriteJob(job, keys, inline=len(batch) <= INLINE_EVENTS)

    def ingest_events(self, batch: Sequence[Event], reducer: Reducer, now: datetime) -> list[EventOutcome]:
        return self.run(self.events_write(batch, reducer, now))

    # -- decisions -------------------------------------------------------------------------------------
    def decision_inputs(
        self,
        customer_id: str,
        channel: str,
        request_id: str | None,
        actions: Mapping[str, Action],
        now: datetime,
        lookback: timedelta,
    ) -> tuple[str, tuple[str, str] | None, CustomerState | None, CounterState]:
        """Everything a decision reads, in one round trip: canonical id, idempotency hit, state and counters."""
        ms = epoch_ms(now)

        since_ms = decision_repo.contacts_since(ms, lookback)

        def read(conn: Connection) -> tuple[str, tuple[str, str] | None, CustomerState | None, CounterState]:
            canonical, state, contacts = customer_inputs(conn, customer_id, since_ms)
            hit = decision_repo.find_idempotent(conn, channel, request_id, ms) if request_id else None
            return canonical, hit, state, CounterState(contacts, self._budgets.used(conn, actions, ms))

        return self.read_now(read)

    def find_idempotent(self, channel: str, request_id: str, now: datetime) -> tuple[str, str] | None:
        return self.read(lambda c: decision_repo.find_idempotent(c, channel, request_id, epoch_ms(now)))

    def decision_write(
        self,
        decision: Decision,
        actions: Mapping[str, Action],
        reward: RewardSpec,
        lookback: timedelta,
        body_hash: str | None,
        catalog_version: int | None = None,
    ) -> WriteJob[Decision]:
        """The write that reserves a decision's units and logs it (run it with `run` or `run_async`)."""
        keys = [f"customer:{decision.customer_id}", f"{SHARED}catalog"]  # the catalog stays as checked
        budgets = [f"budget:{c.action_id}" for c in decision.actions if actions[c.action_id].budget is not None]
        keys += budgets
        if decision.request_id is not None:
            keys.append(f"idem:{decision.channel}:{decision.request_id}")

        def job(conn: Connection) -> Decision:
            try:
                return decision_repo.insert_decision(conn, decision, actions, reward, lookback, body_hash,
                                                     catalog_version)
            except decision_repo.ReservationFailed as failed:
                if failed.exclusion.rule.startswith("budget:"):  # read it afresh: it ran out
                    self._budgets.forget(failed.exclusion.action_id)
                raise

        return WriteJob(job, keys, optional_keys=budgets)

    def lock_id(self, key: str) -> int:
        """The advisory lock id of a write key (not `shared:`) in this store's namespace."""
        return lock_id(key, self.lock_namespace)

    def budgets_held(self, held: LocksHeld, action_ids: Sequence[str]) -> list[str]:
        """Which of these actions' budgets another session's unfinished write holds (a decision write's `LocksHeld`):
        the decision leaves them out rather than wait, since their use cannot be checked meanwhile."""
        return [aid for aid in action_ids if self.lock_id(f"budget:{aid}") in held.key_ids]

    def get_decision(self, decision_id: str, with_rewards: bool = True) -> Decision | None:
        return self.read(lambda c: decision_repo.get_decision(c, decision_id, with_rewards))

    def recent_decisions(self, customer_id: str, limit: int = 50) -> list[Decision]:
        return self.read(lambda c: decision_repo.recent_decisions(c, customer_id, limit))

    def count_decisions(self) -> int:
        return self.read(decision_repo.count_decisions)

    # -- outcomes --------------------------------------------------------------------------------------
    def reward_write(self, decision_id: str, slot: int, value: float, now: datetime) -> WriteJob[str]:
        return WriteJob(lambda c: outcome_repo.add_reward(c, decision_id, slot, value, epoch_ms(now)),
                        [f"decision:{decision_id}"])

    def add_reward(self, decision_id: str, slot: int, value: float, now: datetime) -> str:
        return self.run(self.reward_write(decision_id, slot, value, now))

    def activation_write(self, decision_id: str, now: datetime) -> WriteJob[str]:
        return WriteJob(lambda c: outcome_repo.activate(c, decision_id, epoch_ms(now)), [f"decision:{decision_id}"])

    def activate(self, decision_id: str, now: datetime) -> str:
        return self.run(self.activation_write(decision_id, now))

    def close_due(self, now: datetime, limit: int = 100, rounds: int = 200,
                  rest: Callable[[float], bool] | None = None,
                  round_turn: AbstractContextManager[object] | None = None) -> int:
        """Finalise closed reward windows and release expired reservations; returns how many changed.

        In transactions of up to `limit` decisions, until none is due or after `rounds` of them: a sweep a second
        keeps up with 20,000 decisions a second (one round a sweep fell behind from 500 on). A round holds the
        write lock, and decisions' commits wait for it: 100 decisions take about 7 ms (500 took 25 ms). With
        `rest`, each round is followed by a rest as long as it took (`rest(seconds)`, true to stop), so that a
        sweep takes at most half the writer and the GIL from requests: it then closes about 7,000 decisions a
        second, and a sweep through a backlog of 20,000 takes about 3 s.

        `round_turn` (a lock the process's other CPU-heavy threads take in turns with it) is held around each
        round: a round holds the write lock that every worker's commits wait for, and one that had to win the GIL
        from the learner thread at every statement took 30-190 ms instead of 8.
        """
        total = 0
        turn = round_turn if round_turn is not None else nullcontext()
        for _ in range(rounds):
            started = time.monotonic()
            with turn:
                changed, full = self._close_due_round(now, limit)
            total += changed
            if not full:
                break
            if rest is not None and rest(time.monotonic() - started):
                break  # a rest that says so ends the sweep (the process is stopping)
        return total

    def _close_due_round(self, now: datetime, limit: int) -> tuple[int, bool]:
        """Close up to `limit` due decisions in one transaction; returns (how many changed, whether more may be due).

        A decision that cannot be closed for a reason other than the store failing (its stored record unreadable,
        say one written by a newer version of this service) is rolled back alone, logged and skipped from then on
        in this process (`unclosable`), so that it does not hold up every other decision's close.
        """
        ms = epoch_ms(now)
        skipped = self.unclosable
        held = self._held_decisions
        for decision_id, until in list(held.items()):
            if until <= time.monotonic():
                del held[decision_id]
        due = [d for d in self.read(lambda c: outcome_repo.due_decisions(c, ms, limit + len(skipped) + len(held)))
               if d not in skipped and d not in held][:limit]
        if not due:
            return 0, False
        failed: dict[str, Exception] = {}

        def job(isolate: bool) -> Callable[[Connection], int]:
            """Close the due decisions together; with `isolate`, each in a savepoint of its own (many times the
            writer time per round, so only once a round without has failed)."""
            def close(conn: Connection) -> int:
                store_failed: tuple[type[Exception], ...] = (*store_errors(conn), StoreUnavailable)
                failed.clear()  # the batch may run again (on a new connection): only the last run counts
                if not isolate:
                    return len(outcome_repo.close_decisions(conn, due, ms))
                changed = 0
                for decision_id in due:
                    savepoint = conn.begin_nested()
                    try:
                        closed = outcome_repo.close_decisions(conn, [decision_id], ms)
                    except store_failed:
                        raise
                    except Exception as exc:
                        savepoint.rollback()
                        failed[decision_id] = exc
                        continue
                    savepoint.commit()
                    changed += len(closed)
                return changed

            return close

        keys = [f"decision:{d}" for d in due]
        try:
            try:
                changed = self.write(job(isolate=False), keys, wait_apart=False)
            except (StoreUnavailable, SQLAlchemyError, LocksHeld):
                raise
            except Exception:  # one decision could not be closed: the round again, each decision on its own
                changed = self.write(job(isolate=True), keys, wait_apart=False)
        except LocksHeld as locked:
            # Another host holds some of these decisions (a reward being stored, or a host frozen mid-transaction):
            # the sweep goes on without them for a lock timeout rather than wait, since a sweep that waits lets its
            # lease run out, and the next holder would wait for the same locks.
            until = time.monotonic() + WRITER_LOCK_TIMEOUT_MS / 1000
            recorded = 0
            for decision_id in due:
                if self.lock_id(f"decision:{decision_id}") in locked.key_ids and len(held) < MAX_UNCLOSABLE:
                    held[decision_id] = until
                    recorded += 1
            log.warning("sweep: %d due decisions locked by another session; closing the others first",
                        len(locked.key_ids))
            return 0, recorded > 0  # none left aside (too many already): this sweep ends, the next tries again
        for decision_id, exc in failed.items():
            log.error("decision %s cannot be closed (%s: %s); this process skips it until it restarts",
                      decision_id, exc.__class__.__name__, exc)
            if len(skipped) < MAX_UNCLOSABLE:
                skipped[decision_id] = f"{exc.__class__.__name__}: {exc}"
        return changed, len(due) == limit

    # -- learning --------------------------------------------------------------------------------------
    def pending_examples(
        self, policy: str, version: int, after_seq: int, limit: int = 1000
    ) -> list[learning_repo.JoinedExample]:
        return self.read(lambda c: learning_repo.pending_examples(c, policy, version, after_seq, limit))

    def unlearned_examples(
        self, policy: str, version: int, learned: AbstractSet[int], limit: int = 1000
    ) -> list[learning_repo.JoinedExample]:
        """Pending examples not among `learned` (see `learning_repo.unlearned_examples`)."""
        return self.read(lambda c: learning_repo.unlearned_examples(c, policy, version, learned, limit))

    def save_snapshot(
        self, policy: str, version: int, model: bytes, examples: int, seqs: Sequence[int], now: datetime, *,
        checksum: str | None = None, fingerprint: str | None = None, lease: tuple[str, str] | None = None,
    ) -> int:
        """Store a model; `checksum` and `fingerprint` come from the learner that serialized it (None: legacy);
        with `lease` (name, holder), only while that holder holds the lease (else `LeaseLost`)."""
        keys = [f"snapshot:{policy}"] + ([f"lease:{lease[0]}"] if lease is not None else [])
        return self.write(
            lambda c: learning_repo.save_snapshot(c, policy, version, model, examples, seqs, epoch_ms(now),
                                                  checksum=checksum, fingerprint=fingerprint, lease=lease),
            keys,
        )

    def latest_snapshot(
        self, policy: str, version: int, newer_than: int = 0, older_than: int | None = None
    ) -> learning_repo.Snapshot | None:
        return self.read(lambda c: learning_repo.latest_snapshot(c, policy, version, newer_than, older_than))

    def latest_earlier_snapshot(self, policy: str, version: int) -> learning_repo.Snapshot | None:
        return self.read(lambda c: learning_repo.latest_earlier_snapshot(c, policy, version))

    def try_lease(self, name: str, holder: str, now: datetime, ttl: timedelta) -> bool:
        return self.write_apart(
            lambda c: learning_repo.try_lease(c, name, holder, epoch_ms(now), int(ttl.total_seconds() * 1000)),
            [f"lease:{name}"],
        )

    def lease_held(self, name: str, now: datetime) -> bool:
        """Whether anyone holds the named lease now (a read: no write lock taken)."""
        return self.read(lambda c: learning_repo.lease_held(c, name, epoch_ms(now)))

    def release_lease(self, name: str, holder: str) -> None:
        self.write_apart(lambda c: learning_repo.release_lease(c, name, holder), [f"lease:{name}"])
