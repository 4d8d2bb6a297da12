"""Lifting a limit for one user by hand (admins only), audited in the same transaction."""
from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import delete, update
from sqlmodel import Session

from core.admin import audit
from core.admin.staff import StaffIdentity, require
from core.db.models import FailureCounter, UsageCounter
from core.issuing.counters import local_day
from core.issuing.entities import split_user_key
from core.issuing.org_settings import org_scope

_usage = UsageCounter.__table__
_failures = FailureCounter.__table__


UNBLOCKABLE = ("daily", "action_daily", "validate", "lock")


def unblock(session: Session, *, actor: StaffIdentity, org_id: int, user_key: str, limit_type: str,
            action: str | None, reason: str, now: datetime, tz: ZoneInfo) -> int:
    """Lift one limit for one user now (admins only), audited in the same transaction; rows changed.

    daily / action_daily reset today's counter, validate resets the current window, lock clears the
    consecutive failures. A live code's send cap is not lifted: it ends when the code expires.
    """
    require(session, actor, "config.edit", org_id)
    if split_user_key(user_key)[0] != org_id:  # another organisation's customer: as if unknown
        raise ValueError("no such user in this organisation")
    if limit_type not in UNBLOCKABLE:
        raise ValueError(f"{limit_type} cannot be lifted by hand")
    if limit_type != "daily" and not action:
        raise ValueError("name the action to unblock")
    if not reason.strip():
        raise ValueError("say why (kept in the audit log)")
    u = _usage
    if limit_type in ("daily", "action_daily"):
        scope = "daily:*" if limit_type == "daily" else org_scope(org_id, f"daily:{action}")
        stmt = delete(u).where(u.c.scope == scope, u.c.user_key == user_key, u.c.period == local_day(now, tz))
    elif limit_type == "validate":
        stmt = delete(u).where(u.c.scope == f"validate:{action}", u.c.user_key == user_key)
    else:
        stmt = update(_failures).where(_failures.c.user_key == user_key, _failures.c.action == action) \
            .values(consecutive=0, locked_until=None)
    changed = session.execute(stmt).rowcount or 0
    audit.record(session, org_id=org_id, actor=actor.username, action="limits.unblock", target=f"user:{user_key}",
                 detail={"limit": limit_type, "action": action, "rows": changed}, reason=reason.strip())
    session.commit()
    return changed
