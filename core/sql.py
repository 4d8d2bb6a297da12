"""Statements built once and reused: rebuilding a statement on every call costs more than running it.

SQLAlchemy caches compiled SQL, but a statement object built anew each time must still be constructed and
have its cache key computed; a module-level statement with bind parameters skips both. Upserts differ by
dialect in SQLAlchemy's API (not in the SQL), so they are built once per dialect.
"""
from __future__ import annotations

from typing import Callable

from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql import Executable

_built: dict[tuple[str, str], Executable] = {}


def per_dialect(conn: Connection, name: str, build: Callable[[Callable], Executable]) -> Executable:
    """The statement called name for conn's dialect, built once by build(insert) with that dialect's insert."""
    key = (conn.dialect.name, name)
    statement = _built.get(key)
    if statement is None:
        statement = _built[key] = build(sqlite_insert if conn.dialect.name == "sqlite" else pg_insert)
    return statement
