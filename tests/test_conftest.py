"""The README's test command says what it did not run: without OTP_TEST_DATABASE_URL, one closing line counts
the PostgreSQL tests skipped and says how to enable them."""
from __future__ import annotations

import os
import subprocess
import sys

from core.settings import ROOT


def run_pytest(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OTP_TEST_DATABASE_URL"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_a_run_without_postgresql_ends_by_counting_what_it_skipped():
    output = run_pytest("tests/test_db.py", "tests/test_serve.py", "-k", "schema_lock or fresh_postgresql")
    lines = [line for line in output.splitlines() if "PostgreSQL test" in line]
    assert lines == ["4 PostgreSQL tests skipped: set OTP_TEST_DATABASE_URL=postgresql+psycopg://user@host/db "
                     "(a database the tests may create schemas in) to run them too"]


def test_a_run_that_skipped_none_says_nothing_about_it():
    assert "PostgreSQL test" not in run_pytest("tests/test_db.py", "-k", "sqlite")
