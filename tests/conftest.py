"""Shared fixtures: a fresh database per test on SQLite, and on PostgreSQL when OTP_TEST_DATABASE_URL is set."""
from __future__ import annotations

import base64
import gc
import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

import pytest
from sqlalchemy import text
from sqlmodel import SQLModel

from core.admin.action_configs import update_action_config
from core.clock import FrozenClock
from core.db.engine import make_engine
from core.db.models import ActionConfigUpdate
from core.db.schemas import PrivateSchema
from core.runtime import Runtime, prepare_database
from core.settings import Settings

PG_URL = os.environ.get("OTP_TEST_DATABASE_URL", "")
# A server started by a test with these sees every request as a new person: no destination, IP or prefix limit.
NO_ABUSE_LIMITS = {"OTP_DESTINATION_LIMIT": "0", "OTP_IP_LIMIT": "0", "OTP_PREFIX_LIMIT": "0"}
TEST_KEY = base64.b64encode(bytes(range(32))).decode()
START = datetime(2026, 11, 27, 10, 0, 0, tzinfo=timezone.utc)

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)]


@contextmanager
def no_collector_pauses() -> Iterator[None]:
    """No garbage collection in the test process meanwhile, for a test that times answers against a bound.

    Late in a full run the pytest process holds ~400k objects, and one full collection took 0.3-0.6 s measured
    (more on a loaded machine): the client's pause would be counted as the time of what the test times.
    """
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


PG_SKIP_REASON = "OTP_TEST_DATABASE_URL is not set"


def pytest_collection_modifyitems(config, items):  # type: ignore[no-untyped-def]
    if PG_URL:
        return
    skip = pytest.mark.skip(reason=PG_SKIP_REASON)
    for item in items:
        if "postgresql" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # type: ignore[no-untyped-def]
    """Say at the end, in one line, how many PostgreSQL tests did not run and how to run them: a green run of
    the README's command is otherwise easy to mistake for a run on both databases."""
    skipped = [r for r in terminalreporter.stats.get("skipped", [])
               if isinstance(r.longrepr, tuple) and r.longrepr[2].endswith(PG_SKIP_REASON)]
    if skipped:
        terminalreporter.write_line(
            f"{len(skipped)} PostgreSQL test{'s' if len(skipped) != 1 else ''} skipped: set OTP_TEST_DATABASE_URL"
            f"=postgresql+psycopg://user@host/db (a database the tests may create schemas in) to run them too",
            yellow=True, bold=True)


@pytest.fixture(autouse="MUTANT_UNDER_TEST" in os.environ)
def statements_built_per_test():
    """Under mutmut (README "Mutation testing") only: build the once-per-process statements and caches afresh for
    each test. Otherwise the first test builds them, mutmut maps a statement builder to that test alone, and a
    mutated INSERT ... ON CONFLICT or lock ceiling is checked by one test that never looks at it."""
    from core.issuing import codes, counters, limits
    for prepared in (codes._INSERT_CODE, codes._RECORD_FAILURE, counters._BUMP):  # noqa: SLF001
        prepared._compiled.clear()  # noqa: SLF001
    limits._local_midnight_after.cache_clear()  # noqa: SLF001


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> str:
    """A migrated, seeded SQLite file copied for each test: migrations run once per session."""
    path = tmp_path_factory.mktemp("template") / "otp.db"
    engine = make_engine(f"sqlite:///{path}")
    prepare_database(engine)
    engine.dispose()
    return str(path)


@pytest.fixture(autouse=True)
def _clear_streamlit_caches():
    """Streamlit's caches live as long as the process: the dashboards' 30 s query cache is keyed by the database
    URL, which PostgreSQL tests share, so one test's figures would otherwise be another's."""
    import streamlit as st
    st.cache_data.clear()
    st.cache_resource.clear()
    yield


@pytest.fixture(scope="session")
def pg_schema_url() -> str:
    """A private schema, migrated once; each test empties its tables."""
    with PrivateSchema(PG_URL, "otp_test") as url:
        engine = make_engine(url)
        prepare_database(engine)
        engine.dispose()
        yield url


@pytest.fixture
def pg_schema_env():
    """The environment of a server process on a fresh PostgreSQL schema of its own, without the abuse limits."""
    with PrivateSchema(PG_URL, "otp_mw") as url:
        yield {"OTP_DATABASE_URL": url, "OTP_SECRET_KEY": TEST_KEY, "OTP_ENV": "test", **NO_ABUSE_LIMITS}


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        target = tmp_path / "otp.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), target)
        return f"sqlite:///{target}"
    url = request.getfixturevalue("pg_schema_url")
    engine = make_engine(url)
    tables = ", ".join(t.name for t in SQLModel.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return url


@pytest.fixture
def team(rt) -> dict:
    """An admin, an editor, an approver and a viewer, keyed by role."""
    from core.admin.staff import StaffIdentity, create_first_admin, create_staff
    from core.db.models import StaffCreate
    with rt.session() as db:
        admin = create_first_admin(db, username="ada", password="correct horse 1")
        boss = StaffIdentity(admin.id, admin.username, admin.role)
        people = {"admin": boss}
        for name, role in (("eve", "editor"), ("abe", "approver"), ("vic", "viewer")):
            made = create_staff(db, actor=boss, staff_create=StaffCreate(username=name, password="password-123",
                                                                          role=role), org_id=1)
            people[role] = StaffIdentity(made.id, made.username, made.role)
    return people


def make_settings(db_url: str, tmp_path, **overrides) -> Settings:
    values = dict(database_url=db_url, env="test", secret_key=TEST_KEY, secret_key_file=tmp_path / "unused.key",
                  cache_seconds=0.0, login_failure_delay_seconds=0.01,
                  # The abuse limits have their own tests (tests/security); elsewhere they would only
                  # hide what a test is about, as the per-code send cap is raised where it would.
                  destination_limit=0, ip_limit=0, prefix_limit=0)
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


@pytest.fixture
def rt(db_url, tmp_path, clock) -> Runtime:
    runtime = Runtime(make_settings(db_url, tmp_path), clock=clock)
    yield runtime
    runtime.db.dispose()


def configure(rt: Runtime, action, **changes) -> None:
    """Change one action's configuration through the same function the console uses."""
    update = ActionConfigUpdate(**{**rt.config_for(1, action).to_update().model_dump(), **changes})
    with rt.session() as session:
        update_action_config(session, action=action, update=update, actor="test",
                             service_daily_limit=rt.settings.daily_limit, org_id=1)
    rt.configuration_changed()


def outbox(rt: Runtime, recipient: str | None = None) -> list[dict]:
    query = "SELECT id, channel, recipient, subject, body FROM outbox_message"
    params = {}
    if recipient:
        query += " WHERE recipient = :r"
        params["r"] = recipient
    with rt.db.connect() as conn:
        return [dict(r) for r in conn.execute(text(query + " ORDER BY id"), params).mappings()]




def code_sent_to(rt: Runtime, recipient: str) -> str:
    """The code in the newest outbox message to recipient (built-in templates end with the code)."""
    messages = outbox(rt, recipient)
    assert messages, f"nothing was sent to {recipient}"
    body = messages[-1]["body"]
    match = re.search(r"(?:is:? |parameter: |otp: )([0-9A-Za-z]+)", body)
    assert match, body
    return match.group(1)


@pytest.fixture
def all_logs():
    """Every log record at DEBUG from every logger (httpx, sqlalchemy, uvicorn included)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    touched = []
    for name in ("httpx", "httpcore", "sqlalchemy", "sqlalchemy.engine", "uvicorn", "uvicorn.access", "core", "otp"):
        logger = logging.getLogger(name)
        touched.append((logger, logger.level))
        logger.setLevel(logging.DEBUG)
    yield records
    root.removeHandler(handler)
    root.setLevel(old_level)
    for logger, level in touched:
        logger.setLevel(level)
