"""Alembic environment: runs on the engine handed in by core.db.engine.migrate, or on OTP_DATABASE_URL."""
from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import core.db.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from core.db.engine import make_engine
from core.settings import get_settings

target_metadata = SQLModel.metadata


def run_migrations_online() -> None:
    engine = context.config.attributes.get("engine") or make_engine(get_settings().database_url)
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # SQLite's documented way to re-make a table (alembic's batch mode does): foreign keys off, outside
            # any transaction (the pragma is a no-op inside one), so dropping the old copy of a table that others
            # reference does not fail; checked again below before they are turned back on.
            _driver(connection).execute("PRAGMA foreign_keys=OFF")
        try:
            context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=sqlite)
            with context.begin_transaction():
                context.run_migrations()
                if sqlite:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(f"the migration broke {len(broken)} foreign keys: {broken[:5]}")
            # Connection.commit() is needed on SQLAlchemy 2 when the connection began its own transaction.
            if connection.in_transaction():
                connection.commit()
        finally:
            if sqlite:
                _driver(connection).execute("PRAGMA foreign_keys=ON")


def _driver(connection):  # type: ignore[no-untyped-def]
    """The DB-API connection itself: a pragma sent through SQLAlchemy would begin a transaction first."""
    return connection.connection.driver_connection


run_migrations_online()
