"""Security events for the rate-limit dashboard: what attackers tried, when, against whom (masked), never a code."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, func, select

from core.db.models import SecurityEvent
from core.issuing.entities import mask

KINDS = ("replayed_code", "burned_code", "lock", "prefix_block", "budget_trip")
_event = SecurityEvent.__table__


@dataclass(frozen=True)
class ShownEvent:
    at: datetime
    kind: str
    user: str  # masked
    action: str
    detail: str


def event_counts(conn: Connection, *, start: datetime, end: datetime, action: str | None = None) -> dict[str, int]:
    query = select(_event.c.kind, func.count()).where(_event.c.created_at >= start, _event.c.created_at < end)
    if action:
        query = query.where(_event.c.action == action)
    found = {kind: 0 for kind in KINDS}
    found.update({kind: int(n) for kind, n in conn.execute(query.group_by(_event.c.kind))})
    return found


def recent_events(conn: Connection, *, start: datetime, end: datetime, action: str | None = None,
                  limit: int = 200) -> list[ShownEvent]:
    query = (select(_event.c.created_at, _event.c.kind, _event.c.user_key, _event.c.action, _event.c.detail)
             .where(_event.c.created_at >= start, _event.c.created_at < end)
             .order_by(_event.c.id.desc()).limit(limit))
    if action:
        query = query.where(_event.c.action == action)
    return [ShownEvent(r.created_at, r.kind, mask(r.user_key.partition(":")[2]) if r.user_key else "",
                       r.action, r.detail or "") for r in conn.execute(query)]
