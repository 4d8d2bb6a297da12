"""The migrations and the models describe the same schema, so a future autogenerate starts from nothing to undo."""
from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import core.db.models  # noqa: F401  (registers every table)


def test_migrated_schema_matches_the_models(rt):
    with rt.db.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert differences == []
