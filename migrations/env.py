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
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=connection.dialect.name == "sqlite")
        with context.begin_transaction():
            context.run_migrations()
        # Connection.commit() is needed on SQLAlchemy 2 when the connection began its own transaction.
        if connection.in_transaction():
            connection.commit()


run_migrations_online()
