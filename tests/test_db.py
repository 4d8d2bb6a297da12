"""Database set-up (core.db): the SQLite pragmas the service's promises rest on."""
from __future__ import annotations

from sqlalchemy import text

from core.db import make_engine


def test_a_fresh_sqlite_connection_commits_with_synchronous_full(tmp_path):
    """Durability: an answered write must survive a power loss, so every COMMIT fsyncs the write-ahead log."""
    engine = make_engine(f"sqlite:///{tmp_path / 'fresh.db'}", write_lock_timeout=2.5)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar_one() == 2  # 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA
        assert conn.execute(text("PRAGMA busy_timeout")).scalar_one() == 2500  # OTP_WRITE_LOCK_TIMEOUT_SECONDS
    engine.dispose()
