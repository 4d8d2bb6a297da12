"""Counting against limits with one atomic statement each, identical in meaning on SQLite and PostgreSQL."""
from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from core.models import UsageCounter

_table = UsageCounter.__table__


def _insert(conn: Connection):  # type: ignore[no-untyped-def]
    return sqlite_insert if conn.dialect.name == "sqlite" else pg_insert


def bump(conn: Connection, *, scope: str, user_key: str, period: str, limit: int) -> int | None:
    """Add one to a counter unless it has reached limit; the new count, or None when refused.

    One upsert with RETURNING: two concurrent requests can never both take the last unit, and a refused
    request leaves the count as it was.
    """
    stmt = _insert(conn)(_table).values(scope=scope, user_key=user_key, period=period, count=1)
    stmt = stmt.on_conflict_do_update(
        index_elements=[_table.c.scope, _table.c.user_key, _table.c.period],
        set_={"count": _table.c.count + 1},
        where=_table.c.count < limit,
    ).returning(_table.c.count)
    return conn.execute(stmt).scalar()


def local_day(moment: datetime, tz: ZoneInfo) -> str:
    return moment.astimezone(tz).date().isoformat()


def seconds_until_next_day(moment: datetime, tz: ZoneInfo) -> int:
    """Seconds until local midnight, computed in the zone so that DST days are 23 or 25 hours long."""
    local = moment.astimezone(tz)
    midnight = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), tzinfo=tz)
    # Subtracting in UTC: Python subtracts wall times when both sides share one tzinfo.
    delta = midnight.astimezone(timezone.utc) - moment.astimezone(timezone.utc)
    return max(1, math.ceil(delta.total_seconds()))


def window_start(moment: datetime, minutes: int) -> int:
    """Start (epoch seconds) of the fixed window holding moment."""
    size = minutes * 60
    epoch = int(moment.timestamp())
    return epoch - epoch % size
