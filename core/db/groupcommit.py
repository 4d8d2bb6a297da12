"""The engine's write transactions: on SQLite, the requests of one event-loop turn share one commit.

A generate's SQL takes SQLite a few tens of microseconds; its COMMIT (BEGIN IMMEDIATE, the WAL append of
every page touched, the lock hand-over) costs several times that. Under concurrent load many requests reach
their write in the same turn of the event loop, so they share one transaction (group commit): each runs its
statements inside its own SAVEPOINT (a refusal rolls back only its own work, as its own transaction would),
the transaction commits once, from the start of the next turn, in a worker thread (the loop goes on reading
and parsing requests meanwhile; new writes wait for that commit, then open the next batch), and every request
waits for that commit before it answers, so nothing is reported done before it is durable. A unit of work is
synchronous and never awaits, and the batch commits on the next turn whatever else is pending: how long the
transaction stays open never depends on a gateway (another request's send may be in flight meanwhile, outside
any transaction of its own).

What "durable" means: an answer waits for COMMIT to return, and core.db.engine runs SQLite with synchronous=FULL, where
COMMIT returns only after the write-ahead log is fsynced. So once a request has its answer, its writes (a code
marked used, a counter bumped) survive a crash of the process or of the machine, power loss included, on
storage that honours fsync. A request answered 503/606 (a failed commit, the write lock not had in time) has
kept nothing. On PostgreSQL each request's COMMIT returns after its WAL flush (synchronous_commit=on, the
default), which promises the same.

While a batch is open, another write transaction opened on the same thread would wait for a lock its own
thread holds; core.db.engine refuses that at once (write_guard) instead of hanging. Engine writes therefore all go
through Writer.run (async code) or Writer.within (synchronous code on the loop's thread).

The write lock is never waited for on the event loop. Another connection may hold it for a while (the console
refreshing rollups or saving configuration, demo traffic, a receipt, another worker): a batch asks for it
without waiting (busy timeout 0), and when it is taken one task per loop asks again after short asyncio sleeps
while requests that need no lock (/health, reads) go on. Requests that need it wait for that task, at most the
connection's busy timeout (OTP_WRITE_LOCK_TIMEOUT_SECONDS), and then fail with "database is locked" (503/606)
having written nothing. (Writer.within outside a batch is synchronous: SQLite's busy handler waits there, on
the calling thread, bounded by the same timeout.)

PostgreSQL takes concurrent transactions without a file lock, but each COMMIT still costs it a WAL flush and
most of its CPU per request: there the units of work queue per event loop and go to worker threads in batches
(_PgQueue). A batch is one transaction on one connection in psycopg's pipeline mode, each unit inside its own
SAVEPOINT (released on success, rolled back to when the unit raises, as its own transaction would be), one
COMMIT for all; every unit answers after that commit. At most MAX_RUNNING batches of a loop run at once (one
more for each that has run longer than STALLED_AFTER, as one waiting for a row lock), so the units that arrive
while they run form the next batch (the busier the worker, the larger its batches; a
lone request goes at once, alone, as its own transaction). A batch that fails as a whole (a statement error,
which in pipeline mode cannot be pinned on one unit; a deadlock; a failed COMMIT the server reported, which
kept nothing) runs its units again one by one, each its own transaction: each then gets its own answer. A
batch whose connection broke during COMMIT may or may not have committed, so nothing is run again: every
unit fails (503), as a lone transaction would.
"""
from __future__ import annotations

import asyncio
import functools
import sqlite3
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from core.db.engine import is_sqlite, pipelined_transaction, write_guard

T = TypeVar("T")


@dataclass
class _Batch:
    conn: Connection
    done: asyncio.Future
    members: int = 0
    broken: BaseException | None = None  # an error after which SQLite had ended the transaction itself


@dataclass
class _PgQueue:
    """One event loop's PostgreSQL units of work: those waiting for a batch, and how many batches are running."""
    waiting: list[tuple[Callable[[Connection], object], asyncio.Future]] = field(default_factory=list)
    running: int = 0
    stalled: set[asyncio.Future] = field(default_factory=set)  # batches running for over STALLED_AFTER
    scheduled: bool = False


@dataclass
class _LockWait:
    """The write lock asked for again and again by one task (per loop) until it is free or the deadline passes."""
    deadline: float  # loop.time()
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    failure: BaseException | None = None
    task: asyncio.Task | None = None  # held here: the loop keeps only a weak reference to a task


class Writer:
    """Runs units of write work: work(conn) is synchronous and must not await."""

    # PostgreSQL. Batches of one loop running at once: one makes the largest batches, the fewest commits and the
    # least switching between threads (bench/load.py, 2 workers: 1 did 671 and 660 generates/s, p99 91 and 81 ms;
    # 2 did 660 and 441, p99 98 and 164; 3 did 565, p99 149). A batch still running after STALLED_AFTER seconds
    # (its unit waits for a row another transaction holds, say) lets one more start, up to MAX_STALLED more, so
    # that a lock wait never holds up the worker's other writes. Units in one batch: PostgreSQL keeps the first
    # 64 subtransactions of a transaction in shared memory; more would spill to pg_subtrans.
    MAX_RUNNING = 1
    STALLED_AFTER = 0.05
    MAX_STALLED = 4
    MAX_BATCH = 32

    def __init__(self, engine: Engine, *, group: bool | None = None) -> None:
        """group: None for the engine's own way (SQLite: per loop turn; PostgreSQL: queued batches), False for
        every unit its own transaction in a worker thread, True for the SQLite way."""
        self._engine_ref = weakref.ref(engine)  # the registry below must not keep an engine alive
        self._group = is_sqlite(engine) if group is None else group
        self._batched = group is None and engine.dialect.name == "postgresql"
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _PgQueue] = weakref.WeakKeyDictionary()
        self._open: dict[asyncio.AbstractEventLoop, _Batch] = {}
        self._waits: dict[asyncio.AbstractEventLoop, _LockWait] = {}
        self._committing: dict[asyncio.AbstractEventLoop, asyncio.Future] = {}  # a batch's COMMIT in its thread
        self._patience_ms: int | None = None  # the connections' busy timeout: how long a write may wait

    @property
    def _engine(self) -> Engine:
        engine = self._engine_ref()
        if engine is None:
            raise RuntimeError("the engine of this Writer was disposed of")
        return engine

    async def run(self, work: Callable[[Connection], T]) -> T:
        """work's result once its writes are committed; its exception, with its writes undone, if it raises."""
        if self._batched:
            return await self._queued(work)
        if not self._group:
            # Each unit its own transaction, in a worker thread: a worker's requests then overlap their round
            # trips and commit flushes instead of queueing behind one another on the event loop.
            return await asyncio.to_thread(self._transaction, work)
        batch = await self._join()  # returns without suspending when a batch is open or the lock is free
        with self._savepoint(batch, "work") as conn:
            result = work(conn)
        batch.members += 1
        await asyncio.shield(batch.done)  # one request cancelled must not cancel the others' commit
        return result

    async def _queued(self, work: Callable[[Connection], T]) -> T:
        """work's result once the batch it ran in has committed (PostgreSQL)."""
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:
            queue = self._queues[loop] = _PgQueue()
        answer = loop.create_future()
        queue.waiting.append((work, answer))
        if not queue.scheduled and self._room(queue):
            queue.scheduled = True  # after every task already scheduled this turn: they join the same batch
            loop.call_soon(self._dispatch, loop, queue)
        return await asyncio.shield(answer)  # one request cancelled must not cancel its batch's other units

    def _room(self, queue: _PgQueue) -> bool:
        return queue.running < self.MAX_RUNNING + min(len(queue.stalled), self.MAX_STALLED)

    def _dispatch(self, loop: asyncio.AbstractEventLoop, queue: _PgQueue) -> None:
        """Start batches of the waiting units while there is room for them (_room)."""
        queue.scheduled = False
        while queue.waiting and self._room(queue):
            units, queue.waiting = queue.waiting[:self.MAX_BATCH], queue.waiting[self.MAX_BATCH:]
            queue.running += 1
            running = loop.run_in_executor(None, self._run_batch, [work for work, _answer in units])
            late = loop.call_later(self.STALLED_AFTER, self._stalled, loop, queue, running)
            running.add_done_callback(functools.partial(self._batch_done, loop, queue, units, late))

    def _stalled(self, loop: asyncio.AbstractEventLoop, queue: _PgQueue, running: asyncio.Future) -> None:
        """A batch has run for STALLED_AFTER seconds: let one more batch start beside it."""
        if not running.done():
            queue.stalled.add(running)
            if queue.waiting and not queue.scheduled:
                self._dispatch(loop, queue)

    def _batch_done(self, loop: asyncio.AbstractEventLoop, queue: _PgQueue,
                    units: list[tuple[Callable[[Connection], object], asyncio.Future]], late: asyncio.TimerHandle,
                    running: asyncio.Future) -> None:
        """On the loop: answer each unit of a finished batch, then start the next one with what waits."""
        queue.running -= 1
        queue.stalled.discard(running)
        late.cancel()
        failure = running.exception()
        outcomes = [(False, failure)] * len(units) if failure is not None else running.result()
        for (_work, answer), (ok, value) in zip(units, outcomes):
            if answer.done():
                continue
            if ok:
                answer.set_result(value)
            else:
                answer.set_exception(value)
        if queue.waiting and not queue.scheduled:
            self._dispatch(loop, queue)

    def _run_batch(self, works: list[Callable[[Connection], object]]) -> list[tuple[bool, object]]:
        """In a worker thread: every unit in one transaction, each in its own savepoint; (ok, result or error) each.

        A unit that raises a Python exception (a limit refusal, a lost race) is rolled back to its savepoint and
        gets its exception; the others go on. A statement error aborts the pipeline (psycopg reports it at the
        next read, possibly another unit's), so the batch is given up and its units run again one by one.
        """
        if len(works) == 1:
            return [self._alone(works[0])]
        outcomes: list[tuple[bool, object]] = []
        committing = False
        try:
            with self._engine.connect() as conn, pipelined_transaction(conn):
                cursor = conn.connection.driver_connection.cursor()
                for work in works:
                    cursor.execute(b"SAVEPOINT unit")  # queued: travels with the unit's first read
                    try:
                        result = work(conn)
                    except DBAPIError:
                        raise
                    except Exception as exc:
                        cursor.execute(b"ROLLBACK TO SAVEPOINT unit")
                        cursor.execute(b"RELEASE SAVEPOINT unit")
                        outcomes.append((False, exc))
                        continue
                    cursor.execute(b"RELEASE SAVEPOINT unit")
                    outcomes.append((True, result))
                committing = True  # COMMIT goes now
        except DBAPIError as exc:
            if committing and getattr(exc.orig, "sqlstate", None) is None:
                return [(False, exc)] * len(works)  # no answer from the server to COMMIT: it may have landed
            return [self._alone(work) for work in works]  # nothing of the batch was kept
        except Exception as exc:  # not the database's (a pool timeout): no unit ran
            return [(False, exc)] * len(works)
        return outcomes

    def _alone(self, work: Callable[[Connection], object]) -> tuple[bool, object]:
        """One unit as its own transaction: (True, its result) or (False, its exception)."""
        try:
            return True, self._transaction(work)
        except Exception as exc:
            return False, exc

    def _transaction(self, work: Callable[[Connection], T]) -> T:
        """One transaction; retried (twice at most) when PostgreSQL chose it as a deadlock or serialisation victim.

        On PostgreSQL it runs in psycopg's pipeline mode (core.db.engine.pipelined_transaction): BEGIN travels with the
        first statement, statements whose results are not read yet (core.db.prepared.Prepared.execute) with the next one
        that is read, and the last ones with the COMMIT, so a generate is five round trips instead of eight.

        The engine takes shared rows (counters) in one canonical order, so this should not happen; if it does, the
        victim was rolled back whole and running it again is the standard remedy.
        """
        for attempt in range(3):
            try:
                with self._engine.connect() as conn, pipelined_transaction(conn):
                    return work(conn)
            except DBAPIError as exc:
                if attempt == 2 or getattr(exc.orig, "sqlstate", None) not in _RETRYABLE:
                    raise
        raise AssertionError("unreachable")

    @contextmanager
    def within(self) -> Iterator[Connection]:
        """A connection for synchronous writes on this thread: the open batch's (committed with it), if any."""
        batch = self._current()
        if batch is None:
            with self._engine.begin() as conn:
                yield conn
            return
        with self._savepoint(batch, "within") as conn:
            yield conn

    def _current(self) -> _Batch | None:
        try:
            return self._open.get(asyncio.get_running_loop())
        except RuntimeError:  # no loop running on this thread: no batch either
            return None

    async def _join(self) -> _Batch:
        """This loop's open batch; else a new one, once the write lock is this loop's (never blocking the loop)."""
        loop = asyncio.get_running_loop()
        while True:
            batch = self._open.get(loop)
            if batch is not None:
                return batch
            wait = self._waits.get(loop)
            if wait is None:
                committing = self._committing.get(loop)
                if committing is not None:  # this loop's previous batch holds the lock until its commit ends
                    await asyncio.wait([committing])  # (a waiter cancelled here does not cancel the commit)
                    continue
                conn = self._begin_now()
                if conn is not None:
                    batch = self._start(loop, conn)
                    loop.call_soon(self._commit, loop, batch)  # runs after every task already scheduled this turn
                    return batch
                wait = self._waits[loop] = _LockWait(loop.time() + self._patience_ms / 1000)
                wait.task = loop.create_task(self._wait_for_lock(loop, wait))
            await wait.settled.wait()
            if wait.failure is not None:
                raise wait.failure
            # The lock came: the batch opened for it is in self._open (its commit is scheduled after us).

    async def _wait_for_lock(self, loop: asyncio.AbstractEventLoop, wait: _LockWait) -> None:
        """Ask for the write lock after sleeps of 1, 2, 4, 8, then 10 ms until wait.deadline; open a batch with it.

        A task of its own rather than one of the requests: a request cancelled while waiting must not leave the
        others waiting for nothing, nor a transaction open that no one commits.
        """
        batch = None
        delay = 0.001
        try:
            while True:
                remaining = wait.deadline - loop.time()
                if remaining <= 0:
                    raise OperationalError("BEGIN IMMEDIATE", None, sqlite3.OperationalError(
                        f"database is locked: another connection held the write lock for "
                        f"{self._patience_ms / 1000:g} s (OTP_WRITE_LOCK_TIMEOUT_SECONDS)"))
                await asyncio.sleep(min(delay, remaining))
                conn = self._begin_now()
                if conn is not None:
                    batch = self._start(loop, conn)
                    return
                delay = min(delay * 2, 0.01)
        except BaseException as exc:
            wait.failure = exc if isinstance(exc, Exception) else OperationalError(
                "BEGIN IMMEDIATE", None, RuntimeError("the wait for the write lock was cancelled"))
            if not isinstance(exc, Exception):
                raise
        finally:
            del self._waits[loop]
            wait.settled.set()  # wakes the waiters first: they join the batch before the commit scheduled below
            if batch is not None:
                loop.call_soon(self._commit, loop, batch)

    def _begin_now(self) -> Connection | None:
        """A connection in BEGIN IMMEDIATE (core.db.engine) when the write lock is free this instant, else None.

        The busy timeout is 0 for that one BEGIN only: statements inside the transaction never wait for a lock
        (WAL), and other users of the pooled connection (receipts, the console) keep the bounded wait.
        """
        conn = self._engine.connect()
        try:
            driver = conn.connection.driver_connection
            if self._patience_ms is None:
                self._patience_ms = int(driver.execute("PRAGMA busy_timeout").fetchone()[0])
            driver.execute("PRAGMA busy_timeout=0")
            try:
                conn.begin()
            finally:
                driver.execute(f"PRAGMA busy_timeout={self._patience_ms}")
        except (DBAPIError, sqlite3.Error) as exc:  # core.db.engine's BEGIN runs in an event: its error comes unwrapped
            conn.close()
            orig = exc.orig if isinstance(exc, DBAPIError) else exc
            if getattr(orig, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY:
                return None
            if isinstance(exc, DBAPIError):
                raise
            raise DBAPIError.instance("BEGIN IMMEDIATE", None, exc, sqlite3.Error, hide_parameters=True,
                                      dialect=self._engine.dialect) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _start(self, loop: asyncio.AbstractEventLoop, conn: Connection) -> _Batch:
        """Make conn, holding the write lock, this loop's open batch (the caller schedules its commit)."""
        batch = self._open[loop] = _Batch(conn, loop.create_future())
        write_guard.owners[self._engine] = conn
        return batch

    @contextmanager
    def _savepoint(self, batch: _Batch, name: str) -> Iterator[Connection]:
        """The batch's connection inside a SAVEPOINT: released on success, rolled back to on an error.

        Some errors (a full disk, an I/O error, an interrupt) make SQLite roll back the whole transaction, not
        only the savepoint. The batch is then broken: whoever joined it fails at commit time (their writes are
        gone), and later work opens a new batch rather than running outside any transaction.
        """
        driver = batch.conn.connection.driver_connection
        try:
            driver.execute(f"SAVEPOINT {name}")
        except Exception as exc:
            raise self._break(batch, exc) from exc
        try:
            yield batch.conn
        except BaseException as exc:
            try:
                driver.execute(f"ROLLBACK TO {name}")
                driver.execute(f"RELEASE {name}")
                undone = driver.in_transaction
            except Exception:
                undone = False
            if not undone:
                self._break(batch, exc)
            raise
        try:
            driver.execute(f"RELEASE {name}")
        except Exception as exc:
            raise self._break(batch, exc) from exc

    def _break(self, batch: _Batch, cause: BaseException) -> DBAPIError:
        """Take a batch whose transaction is gone out of service; the error its members will see."""
        if batch.broken is None:
            batch.broken = cause if isinstance(cause, DBAPIError) else OperationalError(
                "group commit", None, cause if isinstance(cause, Exception) else RuntimeError(str(cause)))
        self._release(batch)
        return batch.broken  # type: ignore[return-value]

    def _release(self, batch: _Batch) -> None:
        """Stop handing this batch to new work (it may already have been replaced by a newer one)."""
        for loop, current in list(self._open.items()):
            if current is batch:
                del self._open[loop]
        if write_guard.owners.get(self._engine) is batch.conn:
            del write_guard.owners[self._engine]

    def _commit(self, loop: asyncio.AbstractEventLoop, batch: _Batch) -> None:
        """Commit the batch in a worker thread, its members answered when that ends.

        With synchronous=FULL a COMMIT waits for an fsync (milliseconds): on the loop, that would be time
        in which no request is read, parsed or answered. Work arriving meanwhile waits for this commit (it
        holds the write lock) and then opens the next batch at once (_join).
        """
        self._release(batch)
        committing = loop.run_in_executor(None, self._finish, batch)
        self._committing[loop] = committing
        committing.add_done_callback(functools.partial(self._committed, loop, batch))

    @staticmethod
    def _finish(batch: _Batch) -> None:
        """COMMIT the batch's transaction and return its connection to the pool; raise what went wrong."""
        try:
            if batch.broken is not None:
                raise batch.broken
            if not batch.conn.connection.driver_connection.in_transaction:  # ended under us: nothing to commit
                raise OperationalError("COMMIT", None, RuntimeError("the batch's transaction had ended"))
            batch.conn.commit()
        except Exception:
            # SQLite keeps the transaction open after a failed COMMIT (a deferred constraint, a full disk):
            # end it here, or the pooled connection would carry it into its next use.
            try:
                batch.conn.connection.driver_connection.rollback()
            except Exception:  # the connection may be gone altogether; close() below discards it
                pass
            raise
        finally:
            batch.conn.close()

    def _committed(self, loop: asyncio.AbstractEventLoop, batch: _Batch, committing: asyncio.Future) -> None:
        """On the loop, once _finish has ended: answer the batch's members."""
        if self._committing.get(loop) is committing:
            del self._committing[loop]
        failure = committing.exception()
        if failure is None:
            batch.done.set_result(None)
        elif batch.members:
            batch.done.set_exception(failure)
        else:  # nobody waits (every member's work raised): nothing was lost
            batch.done.cancel()


# PostgreSQL's deadlock_detected and serialization_failure: the transaction was rolled back and may be re-run.
_RETRYABLE = frozenset({"40P01", "40001"})
_writers: weakref.WeakKeyDictionary[Engine, Writer] = weakref.WeakKeyDictionary()


def writer_for(engine: Engine) -> Writer:
    """The one Writer of an engine: runtimes sharing a database (the demo traffic's) share its batches."""
    writer = _writers.get(engine)
    if writer is None:
        writer = _writers[engine] = Writer(engine)
    return writer
