"""Shared fixtures: a fresh database per test on SQLite, and on PostgreSQL when OTP_TEST_DATABASE_URL is set."""
from __future__ import annotations

import base64
import logging
import os
import re
import shutil
import uuid
from datetime import datetime, timezone

import pytest
from sqlalchemy import create_engine, text
from sqlmodel import SQLModel

from core.clock import FrozenClock
from core.settings import Settings
from core.db.engine import make_engine
from core.db.models import ActionConfigUpdate
from core.issuing.action_config import LIMIT_OVERRIDES, format_channel_budgets
from core.admin.action_configs import update_action_config
from core.runtime import Runtime, prepare_database

PG_URL = os.environ.get("OTP_TEST_DATABASE_URL", "")
TEST_KEY = base64.b64encode(bytes(range(32))).decode()
START = datetime(2026, 11, 27, 10, 0, 0, tzinfo=timezone.utc)

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)]


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
    from core.issuing import codes
    from core.issuing import limits
    from core.issuing import counters as ratelimit
    for prepared in (codes._INSERT_CODE, codes._RECORD_FAILURE, ratelimit._BUMP):  # noqa: SLF001
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


@pytest.fixture(scope="session")
def pg_schema_url() -> str:
    """A private schema, migrated once; each test empties its tables."""
    schema = f"otp_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    url = PG_URL + ("&" if "?" in PG_URL else "?") + f"options=-csearch_path%3D{schema}"
    engine = make_engine(url)
    prepare_database(engine)
    engine.dispose()
    yield url
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


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
    from core.db.models import StaffCreate
    from core.admin.staff import StaffIdentity, create_first_admin, create_staff
    with rt.session() as db:
        admin = create_first_admin(db, username="ada", password="correct horse 1")
        boss = StaffIdentity(admin.id, admin.username, admin.role)
        people = {"admin": boss}
        for name, role in (("eve", "editor"), ("abe", "approver"), ("vic", "viewer")):
            made = create_staff(db, actor=boss, staff_create=StaffCreate(username=name, password="password-123",
                                                                          role=role))
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
    current = rt.config_for(action)
    values = dict(code_length=current.code_length, alphanumeric=current.alphanumeric,
                  validity_minutes=current.validity_minutes,
                  channels=",".join(c.value for c in current.channels),
                  channel_policy=",".join(c.value for c in current.channel_policy),
                  daily_cap=current.daily_cap, validate_limit=current.validate_limit,
                  validate_window_minutes=current.validate_window_minutes,
                  attempts_per_code=current.attempts_per_code,
                  max_consecutive_failures=current.max_consecutive_failures, lock_minutes=current.lock_minutes,
                  max_sends_per_code=current.max_sends_per_code, gateways=current.gateways,
                  failover=",".join(c.value for c in current.failover), failover_seconds=current.failover_seconds,
                  channel_budgets=format_channel_budgets(current.channel_budgets), safe_mode=current.safe_mode,
                  **{name: getattr(current, name) for name in LIMIT_OVERRIDES})
    values.update(changes)
    with rt.session() as session:
        update_action_config(session, action=action, update=ActionConfigUpdate(**values), actor="test",
                             service_daily_limit=rt.settings.daily_limit)
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
