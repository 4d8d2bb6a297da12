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
    Only for statements whose results are plain values (ids, counts): rows are not type-converted.
    """

    def __init__(self, build: Callable[[Callable], Executable]) -> None:
        self._build = build  # called with the dialect's insert: upserts differ by dialect in SQLAlchemy's API
        self._compiled: dict[tuple[str, str, tuple[str, ...]], tuple[str, Callable[[dict], object]]] = {}

    def _compile(self, conn: Connection, keys: tuple[str, ...]) -> tuple[str, Callable[[dict], object]]:
        dialect = conn.dialect
        statement = self._build(sqlite_insert if dialect.name == "sqlite" else pg_insert)
        compiled = statement.compile(dialect=dialect, column_keys=list(keys))
        defaults = compiled.params
        processors = {name: bind.type.dialect_impl(dialect).bind_processor(dialect)
                      for name, bind in compiled.binds.items()}
        processors = {name: p for name, p in processors.items() if p is not None}
        order = compiled.positiontup

        def arguments(params: dict) -> object:
            values = {**defaults, **params}
            for name, process in processors.items():
                values[name] = process(values[name])
            return [values[name] for name in order] if order is not None else values

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

    def scalar(self, conn: Connection, params: dict) -> object | None:
        """The first column of the first row, or None when no row came back."""
        rows = self.execute(conn, params).fetchall()  # drained, so the statement is finished before COMMIT
        return rows[0][0] if rows else None
