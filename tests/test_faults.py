"""Unexpected errors (core/faults.py): 500 with 7005, logged once with a traceback that carries no request data;
the database failing stays 503 with 606."""
from __future__ import annotations

import logging
import sqlite3

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from api import create_app
from core import errors as E
from core.faults import redacted_traceback
from tests.conftest import TEST_KEY
from tests.servers import ApiServer, cli, new_client
from tests.test_api import assert_envelope, basic_header
from tests.test_api import new_client as api_client

PHONE = "+919955882233"
GENERATE = {"entityType": "MOBILE", "entityValue": PHONE, "action": "COUPON"}


def _lookup(table: dict, key: str) -> str:
    return table[key]


def test_a_redacted_traceback_keeps_the_frames_and_withholds_every_message():
    try:
        try:
            _lookup({}, PHONE)
        except KeyError as exc:
            raise RuntimeError(f"could not send to {PHONE}") from exc
    except RuntimeError as exc:
        shown = redacted_traceback(exc)
    assert PHONE not in shown and "9955882233" not in shown, shown
    assert shown.count("Traceback (most recent call last)") == 2  # the cause, then what it led to
    assert "builtins.KeyError (message withheld" in shown and "builtins.RuntimeError (message withheld" in shown
    assert "in _lookup" in shown and "return table[key]" in shown and __file__ in shown  # where, not what


def test_an_unexpected_exception_is_500_7005_logged_once_without_the_request_data(tmp_path):
    """The real server on SQLite: a code row whose expiry is not a date (written by hand, say) makes the re-send
    path raise ValueError, whose message quotes the stored value: here it holds the customer's number."""
    database = tmp_path / "otp.db"
    env = {"OTP_DATABASE_URL": f"sqlite:///{database}", "OTP_SECRET_KEY": TEST_KEY, "OTP_IP_LIMIT": "0"}
    cli(env, "migrate")
    key, secret = new_client(env)
    log = tmp_path / "server.log"
    with ApiServer(env, log=log) as server:
        first = httpx.post(f"{server.url}/v2/otp/generate", json=GENERATE, auth=(key, secret), timeout=30)
        assert first.status_code == 200, first.text
        with sqlite3.connect(database) as conn:
            code = conn.execute("SELECT body FROM outbox_message").fetchone()[0].rsplit(" ", 1)[-1].rstrip(".")
            conn.execute("UPDATE otp_code SET expires_at = ?", (f"Z{PHONE}",))
        answer = httpx.post(f"{server.url}/v2/otp/generate", json=GENERATE, auth=(key, secret), timeout=30)
        assert answer.status_code == 500, answer.text
        assert answer.json() == {"errors": [{"status": False, "code": E.UNEXPECTED_ERROR,
                                             "message": "unexpected server error; it has been logged"}],
                                 "warnings": []}
        assert httpx.get(f"{server.url}/health", timeout=30).status_code == 200  # the worker carries on
        scraped = httpx.get(f"{server.url}/metrics", timeout=30).text
        assert "otp_unexpected_errors_total 1.0" in scraped, scraped
    written = log.read_text()  # the server has stopped: everything it logged is there
    assert written.count("Traceback (most recent call last)") == 1, written
    assert "Exception in ASGI application" not in written, written
    assert "unexpected error on POST /v2/otp/generate, answered 500 (7005)" in written, written
    assert "builtins.ValueError (message withheld" in written and "core/issuing/codes.py" in written, written
    assert "9955882233" not in written and code not in written, written


@pytest.fixture
def api(rt):
    with TestClient(create_app(rt), raise_server_exceptions=False) as client:
        yield client


def test_a_database_error_outside_the_engine_is_503_606_in_one_line(rt, api, all_logs):
    """Authentication reads the database before the engine runs: its failure is storage, not a bug."""
    creds = api_client(rt)
    with rt.db.begin() as conn:  # renamed, not dropped: PostgreSQL tests share one migrated schema
        conn.execute(text("ALTER TABLE api_client RENAME TO api_client_away"))
    try:
        all_logs.clear()
        response = api.post("/v2/otp/generate", json=GENERATE, headers=basic_header(creds.key, creds.secret))
    finally:
        with rt.db.begin() as conn:
            conn.execute(text("ALTER TABLE api_client_away RENAME TO api_client"))
    assert_envelope(response, 503, [E.STORAGE_FAILURE])
    errors = [r for r in all_logs if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [f"storage failure: {errors[0].getMessage().split(': ')[-1]}"]
    assert errors[0].getMessage().split(": ")[-1] in ("OperationalError", "ProgrammingError")
    assert not any(r.exc_info for r in all_logs) and "Traceback" not in errors[0].getMessage()
