"""Counting against limits with one atomic statement each, identical in meaning on SQLite and PostgreSQL."""
from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, bindparam

from core.db.models import UsageCounter
from core.db.prepared import Prepared

_table = UsageCounter.__table__


def _bump_statement(insert):  # type: ignore[no-untyped-def]
    return insert(_table).values(
        scope=bindparam("p_scope"), user_key=bindparam("p_user"), period=bindparam("p_period"), count=1,
    ).on_conflict_do_update(
        index_elements=[_table.c.scope, _table.c.user_key, _table.c.period],
        set_={"count": _table.c.count + 1},
        where=_table.c.count < bindparam("p_limit"),
    ).returning(_table.c.count)


_BUMP = Prepared(_bump_statement)


def bump(conn: Connection, *, scope: str, user_key: str, period: str, limit: int) -> int | None:
    """Add one to a counter unless it has reached limit; the new count, or None when refused.

    One upsert with RETURNING: two concurrent requests can never both take the last unit, and a refused
    request leaves the count as it was.
    """
    return _BUMP.scalar(conn, {"p_scope": scope, "p_user": user_key, "p_period": period,  # type: ignore[return-value]
                               "p_limit": limit})


def local_day(moment: datetime, tz: ZoneInfo) -> str:
    return moment.astimezone(tz).date().isoformat()


def window_start(moment: datetime, minutes: int) -> int:
    """Start (epoch seconds) of the fixed window holding moment."""
    size = minutes * 60
    epoch = int(moment.timestamp())
    return epoch - epoch % size
