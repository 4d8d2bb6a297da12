"""Database engine set-up: SQLite tuned for concurrent writers, PostgreSQL by URL, migrations at start.

Durability: a COMMIT that has returned survives a crash of the process or of the machine, power loss included
(on storage that honours fsync). SQLite runs in WAL mode with synchronous=FULL, so every COMMIT fsyncs the
write-ahead log before it returns. With NORMAL it would return after write() alone and fsync only at checkpoints:
the database would stay consistent after a power loss, but the last commits could be gone, and a code answered
as used could be valid again. The group commit (core.db.groupcommit) shares one fsync among the requests of a
batch and runs it off the event loop; bench/engine.py --synchronous FULL,NORMAL measures what FULL costs
(README). PostgreSQL keeps its default synchronous_commit=on, which promises the same.
"""
from __future__ import annotations

import fcntl
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError

from core.settings import ROOT, get_settings

MIGRATIONS_DIR = ROOT / "migrations"
# SQLite's synchronous pragma on every connection: the durability promise above rests on FULL. A constant, not
# a setting: the service offers no less durable mode (bench/sync_app.py changes it only to compare).
SQLITE_SYNCHRONOUS = "FULL"
# Execution option marking a connection whose transactions only read, so SQLite need not take the write lock.
READ_ONLY = "otp_read_only"


class _NoResultRows(logging.Filter):
    """SQL echo at DEBUG prints result rows, and an outbox row holds a readable code: drop rows, keep SQL."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(("Row ", "Col ")))


logging.getLogger("sqlalchemy.engine.Engine").addFilter(_NoResultRows())


class _WriteGuard(threading.local):
    """Per thread and SQLite engine, the connection holding an open group commit (core.db.groupcommit)."""

    def __init__(self) -> None:
        self.owners: dict[Engine, object] = {}


write_guard = _WriteGuard()


def make_engine(url: str, *, write_lock_timeout: float | None = None) -> Engine:
    """An engine whose write transactions serialise correctly on SQLite and run as usual on PostgreSQL.

    hide_parameters keeps bound values (an outbox body holds the code) out of SQL logs at every level.
    write_lock_timeout (default: the OTP_WRITE_LOCK_TIMEOUT_SECONDS setting) is SQLite's busy timeout: how long
    a connection waits for the write lock another one holds before it fails with "database is locked". The
    group commit (core.db.groupcommit) waits that same time, but without blocking the event loop.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        if write_lock_timeout is None:
            write_lock_timeout = get_settings().write_lock_timeout_seconds
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": write_lock_timeout},
                               pool_size=20, max_overflow=40, hide_parameters=True)
        _tune_sqlite(engine)
        return engine
    engine = create_engine(url, pool_size=10, max_overflow=20, hide_parameters=True)
    if parsed.get_backend_name() == "postgresql":
        _tune_postgresql(engine)
    return engine


# The SQLAlchemy connection's info key holding the psycopg Pipeline of the unit of work running on it.
_PIPELINE = "otp_pipeline"
_IDLE, _UNKNOWN = 0, 4  # libpq's PQTRANS_IDLE and PQTRANS_UNKNOWN (a broken connection: the pool discards it)
# A pooled connection unused for longer than this is pinged before use (a round trip): one used a moment ago is not.
PING_AFTER_IDLE_SECONDS = 1.0


@contextmanager
def pipelined_transaction(conn) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """One transaction on conn, committed when the block ends, rolled back if it raises.

    On PostgreSQL it runs in psycopg's pipeline mode, with BEGIN and COMMIT sent as statements of the pipeline
    (the driver's connection in autocommit mode for the while, so that psycopg neither starts the transaction
    itself nor waits for it: in pipeline mode it syncs after its own BEGIN and COMMIT). core.db.prepared.Prepared
    statements are queued and their results awaited only when read, so BEGIN travels with the first statement
    read, unread statements with the next, and the last ones with COMMIT: a generate is five round trips (was
    eight with pool_pre_ping), a validate four. Statements run through SQLAlchemy's own execute are synchronised
    at once (_sync_pipeline), as its result handling reads the cursor right after execute. An error of a queued
    statement surfaces at the next read or at COMMIT; either way the whole unit fails and nothing of it stays.
    """
    driver = conn.connection.driver_connection
    if conn.dialect.name != "postgresql" or not hasattr(driver, "pipeline"):
        with conn.begin():
            yield
        return
    error = conn.dialect.loaded_dbapi.Error
    conn.execution_options(isolation_level="AUTOCOMMIT")  # this checkout only: the pool restores it on return
    cursor = driver.cursor()
    try:
        with driver.pipeline() as pipeline:
            conn.info[_PIPELINE] = pipeline
            cursor.execute(b"BEGIN")
            try:
                yield
            except BaseException:
                try:
                    cursor.execute(b"ROLLBACK")
                except Exception:  # the pipeline is aborted (a failed statement): ROLLBACK after its sync below
                    pass
                raise
            cursor.execute(b"COMMIT")  # sent with the last statements, and awaited with them as the block ends
    except error as exc:
        raise DBAPIError.instance("COMMIT", None, exc, error, hide_parameters=True, dialect=conn.dialect) from exc
    finally:
        conn.info.pop(_PIPELINE, None)
        if driver.pgconn.transaction_status not in (_IDLE, _UNKNOWN):
            driver.rollback()  # a failed statement left the transaction aborted: end it before the pool has it


def _tune_postgresql(engine: Engine) -> None:
    @event.listens_for(engine, "after_cursor_execute")
    def _sync_pipeline(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        pipeline = conn.info.get(_PIPELINE)
        if pipeline is not None:
            pipeline.sync()  # SQLAlchemy reads description and rowcount next: they must be there

    # Instead of pool_pre_ping (a SELECT 1 round trip at every checkout, one in eight of a generate's): a
    # connection is pinged only when it sat in the pool for a while, so one lost while idle (a restarted server,
    # a dropped link) is replaced before use, while under load connections go straight back to work. One that
    # fails in use is a disconnect SQLAlchemy recognises: it invalidates the pool, and the next checkouts connect
    # afresh.
    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection, record) -> None:  # type: ignore[no-untyped-def]
        record.info["otp_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection, record, _proxy) -> None:  # type: ignore[no-untyped-def]
        since = record.info.get("otp_idle_since")
        if since is not None and time.monotonic() - since <= PING_AFTER_IDLE_SECONDS:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # the pool discards this connection and checks out (or opens) another
            raise DisconnectionError(f"connection lost while idle: {type(exc).__name__}") from exc
        if not alive:
            raise DisconnectionError("connection lost while idle")


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        # Let SQLAlchemy's "begin" event issue BEGIN itself instead of pysqlite's deferred BEGIN.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={SQLITE_SYNCHRONOUS}")
        # A checkpoint every 4000 pages (16 MiB of WAL) instead of 1000: a generate writes ~24 pages, and
        # each checkpoint copies the hot pages back once however often they changed (bench/engine.py).
        cursor.execute("PRAGMA wal_autocheckpoint=4000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:  # type: ignore[no-untyped-def]
        # IMMEDIATE takes the write lock up front, so two writers never deadlock upgrading read locks.
        # Straight to the driver: SQLAlchemy's execution path for this one statement costs more than BEGIN.
        read_only = connection.get_execution_options().get(READ_ONLY)
        owner = write_guard.owners.get(engine)
        if owner is not None and owner is not connection and not read_only:
            # This thread holds the write lock in a group commit that commits on its next loop turn: a
            # second writer here would wait for its own thread until busy_timeout. Fail loudly instead.
            raise RuntimeError("a write transaction was opened beside this thread's open group commit; "
                               "use Writer.run or Writer.within (core.db.groupcommit)")
        statement = "BEGIN" if read_only else "BEGIN IMMEDIATE"
        connection.connection.driver_connection.execute(statement)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def alembic_config(engine: Engine | None = None) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if engine is not None:
        cfg.attributes["engine"] = engine
    return cfg


# The first key of the PostgreSQL advisory lock that start-up holds while it migrates and seeds ("OTP" + "M").
_SCHEMA_LOCK_CLASS = 0x4F54504D


def schema_advisory_lock(conn: Connection, cls: int) -> None:
    """PostgreSQL: wait for the session advisory lock of class cls in the current schema. Advisory locks belong
    to the whole database; keyed by the schema too, services in two schemas of one database do not wait for each
    other. It stays until schema_advisory_unlock or the connection's end (returning it to a pool is no end)."""
    conn.execute(text("SELECT pg_advisory_lock(:cls, hashtext(coalesce(current_schema(), '')))"), {"cls": cls})


def schema_advisory_unlock(conn: Connection, cls: int) -> None:
    conn.execute(text("SELECT pg_advisory_unlock(:cls, hashtext(coalesce(current_schema(), '')))"), {"cls": cls})


@contextmanager
def schema_lock(engine: Engine) -> Iterator[None]:
    """Held while one process migrates and seeds, so that workers and hosts starting together take turns.

    Without it `serve.py --workers 4` on an empty PostgreSQL database had four processes create the same tables
    at once, and all but one died on a unique violation. The lock lives in the database, not in the launcher,
    because several hosts may start against one database: the first holder migrates, the others wait, then
    find the schema at head and do nothing. On PostgreSQL it is a session advisory lock keyed by the current
    schema (two services in two schemas of one database do not wait for each other); it goes with the
    connection if the process dies. On a SQLite file it is an flock on a file beside the database (one host by
    nature); an in-memory database has one process and needs none.
    """
    if not is_sqlite(engine):
        with engine.connect() as conn:
            schema_advisory_lock(conn, _SCHEMA_LOCK_CLASS)
            conn.commit()  # the session lock stays; no transaction is left idle while others migrate
            try:
                yield
            finally:
                schema_advisory_unlock(conn, _SCHEMA_LOCK_CLASS)
                conn.commit()
        return
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate-lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, or when the process dies
        yield


def upgrade(engine: Engine) -> None:
    """Apply every migration not yet applied; callers hold schema_lock (migrate does)."""
    command.upgrade(alembic_config(engine), "head")


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision; safe to call at every start, from any number of processes."""
    with schema_lock(engine):
        upgrade(engine)
