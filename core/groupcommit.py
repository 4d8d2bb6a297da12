"""The engine's write transactions: on SQLite, the requests of one event-loop turn share one commit.

A generate's SQL takes SQLite a few tens of microseconds; its COMMIT (BEGIN IMMEDIATE, the WAL append of
every page touched, the lock hand-over) costs several times that. Under concurrent load many requests reach
their write in the same turn of the event loop, so they share one transaction (group commit): each runs its
statements inside its own SAVEPOINT (a refusal rolls back only its own work, as its own transaction would),
the transaction commits once at the start of the next turn, and every request waits for that commit before
it answers, so nothing is reported done before it is durable. The batch is synchronous work only, never
held across an await, so no gateway call or other I/O happens while it is open.

While a batch is open, another write transaction opened on the same thread would wait for a lock its own
thread holds; core.db refuses that at once (write_guard) instead of hanging. Engine writes therefore all go
through Writer.run (async code) or Writer.within (synchronous code on the loop's thread).

PostgreSQL takes concurrent transactions from several workers without a file lock: there, each call is its
own transaction.
"""
from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import Connection, Engine

from core.db import is_sqlite, write_guard

T = TypeVar("T")


@dataclass
class _Batch:
    conn: Connection
    done: asyncio.Future
    members: int = 0


class Writer:
    """Runs units of write work: work(conn) is synchronous and must not await."""

    def __init__(self, engine: Engine, *, group: bool | None = None) -> None:
        self._engine = engine
        self._group = is_sqlite(engine) if group is None else group
        self._open: dict[asyncio.AbstractEventLoop, _Batch] = {}

    async def run(self, work: Callable[[Connection], T]) -> T:
        """work's result once its writes are committed; its exception, with its writes undone, if it raises."""
        if not self._group:
            # Each unit its own transaction, in a worker thread: a worker's requests then overlap their round
            # trips and commit flushes instead of queueing behind one another on the event loop.
            return await asyncio.to_thread(self._transaction, work)
        batch = self._join()
        result = self._in_savepoint(batch.conn, work)
        batch.members += 1
        await asyncio.shield(batch.done)  # one request cancelled must not cancel the others' commit
        return result

    def _transaction(self, work: Callable[[Connection], T]) -> T:
        with self._engine.begin() as conn:
            return work(conn)

    @contextmanager
    def within(self) -> Iterator[Connection]:
        """A connection for synchronous writes on this thread: the open batch's (committed with it), if any."""
        owner = write_guard.owners.get(self._engine)
        if owner is None:
            with self._engine.begin() as conn:
                yield conn
            return
        driver = owner.connection.driver_connection
        driver.execute("SAVEPOINT within")
        try:
            yield owner
        except BaseException:
            driver.execute("ROLLBACK TO within")
            driver.execute("RELEASE within")
            raise
        driver.execute("RELEASE within")

    def _join(self) -> _Batch:
        loop = asyncio.get_running_loop()
        batch = self._open.get(loop)
        if batch is None:
            conn = self._engine.connect()
            try:
                conn.begin()  # BEGIN IMMEDIATE (core.db): the write lock, held until _commit
            except BaseException:
                conn.close()
                raise
            batch = self._open[loop] = _Batch(conn, loop.create_future())
            write_guard.owners[self._engine] = conn
            loop.call_soon(self._commit, loop, batch)  # runs after every task already scheduled this turn
        return batch

    @staticmethod
    def _in_savepoint(conn: Connection, work: Callable[[Connection], T]) -> T:
        driver = conn.connection.driver_connection
        driver.execute("SAVEPOINT work")
        try:
            result = work(conn)
        except BaseException:
            driver.execute("ROLLBACK TO work")
            driver.execute("RELEASE work")
            raise
        driver.execute("RELEASE work")
        return result

    def _commit(self, loop: asyncio.AbstractEventLoop, batch: _Batch) -> None:
        del self._open[loop]
        write_guard.owners.pop(self._engine, None)
        try:
            batch.conn.commit()
            batch.done.set_result(None)
        except Exception as exc:
            # SQLite keeps the transaction open after a failed COMMIT (a deferred constraint, a full disk):
            # end it here, or the pooled connection would carry it into its next use.
            try:
                batch.conn.connection.driver_connection.rollback()
            except Exception:  # the connection may be gone altogether; close() below discards it
                pass
            if batch.members:
                batch.done.set_exception(exc)
            else:  # nobody waits (every member's work raised): nothing was lost
                batch.done.cancel()
        finally:
            batch.conn.close()


_writers: weakref.WeakKeyDictionary[Engine, Writer] = weakref.WeakKeyDictionary()


def writer_for(engine: Engine) -> Writer:
    """The one Writer of an engine: runtimes sharing a database (the demo traffic's) share its batches."""
    writer = _writers.get(engine)
    if writer is None:
        writer = _writers[engine] = Writer(engine)
    return writer
