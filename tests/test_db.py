"""core.db.engine: the SQLite pragmas the service's promises rest on, and the lock start-up holds while it migrates and
seeds, so that processes starting together take turns."""
from __future__ import annotations

import fcntl

from sqlalchemy import text

from core.db.engine import _SCHEMA_LOCK_CLASS, is_sqlite, make_engine, schema_lock


def test_a_fresh_sqlite_connection_commits_with_synchronous_full(tmp_path):
    """Durability: an answered write must survive a power loss, so every COMMIT fsyncs the write-ahead log."""
    engine = make_engine(f"sqlite:///{tmp_path / 'fresh.db'}", write_lock_timeout=2.5)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar_one() == 2  # 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA
        assert conn.execute(text("PRAGMA busy_timeout")).scalar_one() == 2500  # OTP_WRITE_LOCK_TIMEOUT_SECONDS
    engine.dispose()


def _lock_is_free(engine) -> bool:  # type: ignore[no-untyped-def]
    """Whether another process could take the schema lock now: asked without waiting, from another connection
    (PostgreSQL) or another open file (SQLite's flock belongs to the open file, not the process)."""
    if is_sqlite(engine):
        with open(f"{engine.url.database}.migrate-lock", "a") as other:
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(other, fcntl.LOCK_UN)
            return True
    with engine.connect() as conn:
        key = {"cls": _SCHEMA_LOCK_CLASS}
        taken = conn.execute(text("SELECT pg_try_advisory_lock(:cls, hashtext(coalesce(current_schema(), '')))"),
                             key).scalar()
        if taken:
            conn.execute(text("SELECT pg_advisory_unlock(:cls, hashtext(coalesce(current_schema(), '')))"), key)
        conn.commit()
        return bool(taken)


def test_the_schema_lock_is_held_for_its_block_and_released_after(db_url):
    engine = make_engine(db_url)
    assert _lock_is_free(engine)
    with schema_lock(engine):
        assert not _lock_is_free(engine)
    assert _lock_is_free(engine)
    engine.dispose()
