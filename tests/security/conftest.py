"""The battery runs with the abuse limits at their shipped defaults, on SQLite and PostgreSQL."""
from __future__ import annotations

import pytest

from core.runtime import Runtime
from core.settings import Settings
from tests.conftest import make_settings


@pytest.fixture
def defended(db_url, tmp_path, clock):
    """A runtime whose abuse limits are the production defaults (not switched off as elsewhere in the suite)."""
    def build(**overrides) -> Runtime:
        defaults = {name: Settings.model_fields[name].default
                    for name in ("destination_limit", "ip_limit", "prefix_limit")}
        return Runtime(make_settings(db_url, tmp_path, **{**defaults, **overrides}), clock=clock)
    made: list[Runtime] = []

    def factory(**overrides) -> Runtime:
        made.append(build(**overrides))
        return made[-1]
    yield factory
    for rt in made:
        rt.db.dispose()
