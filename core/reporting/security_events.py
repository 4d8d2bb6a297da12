"""Security events for the rate-limit dashboard: what attackers tried, when, against whom (masked), never a code.

Of one organisation (org_id), or of every organisation (None: platform admins only), checked for the signed-in
person (staff_id) by core.reporting.access before any row is read."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, func, select

from core.db.models import SecurityEvent
from core.issuing.entities import mask, split_user_key
from core.reporting import access

KINDS = ("replayed_code", "burned_code", "lock", "prefix_block", "budget_trip")
_event = SecurityEvent.__table__


@dataclass(frozen=True)
class ShownEvent:
    at: datetime
    kind: str
    user: str  # masked
    action: str
    detail: str
    org_id: int = 1


def _of(conn: Connection, org_id: int | None, staff_id: int | None):  # type: ignore[no-untyped-def]
    access.check(conn, staff_id=staff_id, org_id=org_id)
    orgs = access.org_ids(conn, org_id)
    return _event.c.org_id == orgs[0] if len(orgs) == 1 else _event.c.org_id.in_(orgs)


def event_counts(conn: Connection, *, start: datetime, end: datetime, action: str | None = None,
                 org_id: int | None, staff_id: int | None = None) -> dict[str, int]:
    query = select(_event.c.kind, func.count()).where(_of(conn, org_id, staff_id), _event.c.created_at >= start,
                                                      _event.c.created_at < end)
    if action:
        query = query.where(_event.c.action == action)
    found = {kind: 0 for kind in KINDS}
    found.update({kind: int(n) for kind, n in conn.execute(query.group_by(_event.c.kind))})
    return found


def recent_events(conn: Connection, *, start: datetime, end: datetime, action: str | None = None,
                  limit: int = 200, org_id: int | None, staff_id: int | None = None) -> list[ShownEvent]:
    query = (select(_event.c.created_at, _event.c.kind, _event.c.user_key, _event.c.action, _event.c.detail,
                    _event.c.org_id)
             .where(_of(conn, org_id, staff_id), _event.c.created_at >= start, _event.c.created_at < end)
             .order_by(_event.c.id.desc()).limit(limit))
    if action:
        query = query.where(_event.c.action == action)
    return [ShownEvent(r.created_at, r.kind, mask(split_user_key(r.user_key)[2]) if r.user_key else "",
                       r.action, r.detail or "", int(r.org_id)) for r in conn.execute(query)]
