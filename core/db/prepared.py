"""Statements built once and reused: rebuilding a statement on every call costs more than running it.

SQLAlchemy caches compiled SQL, but a statement object built anew each time must still be constructed and
have its cache key computed; a module-level statement with bind parameters skips both. Upserts differ by
dialect in SQLAlchemy's API (not in the SQL), so Prepared builds them once per dialect.
"""
from __future__ import annotations

from typing import Callable

from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Executable


class Prepared:
    """A statement compiled once per dialect and run straight on the driver's cursor.

    For the few statements every generate runs: SQLAlchemy's execute, result and parameter machinery costs
    several times what SQLite spends on the statement itself. The statement is still built with SQLAlchemy
    (the SQL stays portable and readable), compiled once per dialect and set of parameter names, and its
    parameters go through the column types' own bind processors, so stored values are exactly those
    SQLAlchemy would write. It runs inside the caller's SQLAlchemy transaction, on its connection. Driver
    errors are re-raised as SQLAlchemy's (IntegrityError, OperationalError...) so callers handle one kind.
    Rows read with fetch (or scalar, first) go through the result columns' own result processors, so a timestamp
    comes back as the aware datetime SQLAlchemy would return.

    In psycopg's pipeline mode (core.db.groupcommit runs each PostgreSQL unit of work in it) execute only queues the
    statement: statements whose results nobody reads yet travel together, with the transaction's BEGIN and its
    COMMIT, and fetch waits for the results it needs (one round trip for everything queued before it).
    """

    def __init__(self, build: Callable[[Callable], Executable]) -> None:
        self._build = build  # called with the dialect's insert: upserts differ by dialect in SQLAlchemy's API
        self._compiled: dict[tuple[str, str, tuple[str, ...]], tuple[str, Callable[[dict], object]]] = {}
        self._results: dict[tuple[str, str], tuple[Callable | None, ...]] = {}  # per dialect: result processors

    def _compile(self, conn: Connection, keys: tuple[str, ...]) -> tuple[str, Callable[[dict], object]]:
        dialect = conn.dialect
        statement = self._build(sqlite_insert if dialect.name == "sqlite" else pg_insert)
        compiled = statement.compile(dialect=dialect, column_keys=list(keys))
        defaults = compiled.params
        processors = {name: bind.type.dialect_impl(dialect).bind_processor(dialect)
                      for bind, name in compiled.bind_names.items()}  # by rendered name (anonymous ones too)
        processors = {name: p for name, p in processors.items() if p is not None}
        order = compiled.positiontup
        self._results[(dialect.name, dialect.driver)] = tuple(
            column.type.dialect_impl(dialect).result_processor(dialect, None)
            for column in compiled._result_columns)  # (SQLAlchemy's own list of the statement's result columns)

        if order is not None:  # positional (SQLite): one pass in parameter order, no intermediate dict
            plan = [(name, defaults.get(name), processors.get(name)) for name in order]

            def arguments(params: dict) -> object:
                get = params.get
                return [get(name, default) if process is None else process(get(name, default))
                        for name, default, process in plan]
        else:
            def arguments(params: dict) -> object:
                values = {**defaults, **params}
                for name, process in processors.items():
                    values[name] = process(values[name])
                return values

        return compiled.string, arguments

    def execute(self, conn: Connection, params: dict):  # type: ignore[no-untyped-def]
        """Run with params; returns the driver cursor (its rows are plain tuples)."""
        key = (conn.dialect.name, conn.dialect.driver, tuple(params))  # the driver decides the paramstyle
        entry = self._compiled.get(key)
        if entry is None:
            entry = self._compiled[key] = self._compile(conn, key[2])
        sql, arguments = entry
        args = arguments(params)
        cursor = conn.connection.driver_connection.cursor()
        try:
            cursor.execute(sql, args)
        except conn.dialect.loaded_dbapi.Error as exc:
            raise DBAPIError.instance(sql, None, exc, conn.dialect.loaded_dbapi.Error,
                                      hide_parameters=True, dialect=conn.dialect) from exc
        return cursor

    def fetch(self, conn: Connection, cursor) -> list[tuple]:  # type: ignore[no-untyped-def]
        """Every row of a cursor execute returned, type-converted (in pipeline mode: once its results are in)."""
        try:
            rows = cursor.fetchall()  # drained, so the statement is finished before COMMIT
        except conn.dialect.loaded_dbapi.Error as exc:
            raise DBAPIError.instance("(fetch)", None, exc, conn.dialect.loaded_dbapi.Error,
                                      hide_parameters=True, dialect=conn.dialect) from exc
        processors = self._results.get((conn.dialect.name, conn.dialect.driver), ())
        if rows and any(processors):
            return [tuple(p(v) if p is not None else v for p, v in zip(processors, row)) for row in rows]
        return rows

    def first(self, conn: Connection, params: dict) -> tuple | None:
        """The first row (type-converted), or None when no row came back."""
        rows = self.fetch(conn, self.execute(conn, params))
        return rows[0] if rows else None

    def scalar(self, conn: Connection, params: dict) -> object | None:
        """The first column of the first row, or None when no row came back."""
        row = self.first(conn, params)
        return row[0] if row is not None else None
