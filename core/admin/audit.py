"""The audit log: one row per change, written in the caller's transaction so a change and its record agree."""
from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from typing import Literal

from sqlalchemy import func
from sqlmodel import Session, select

from core.clock import utcnow
from core.db.models import AuditLog, Organisation, Staff, StaffMembership

# An entry's kind is the part of its action before the dot; every recorder uses one of these (a test checks).
KINDS: dict[str, str] = {
    "session": "Sign-ins and sign-outs",
    "test": "Test sends and validations",
    "gateway": "Gateways",
    "config": "OTP configuration",
    "template": "Templates",
    "staff": "Staff",
    "client": "API clients",
    "limits": "Unblocks",
    "org": "Organisations",
}


def record(session: Session, *, org_id: int | None, actor: str, action: str, target: str, detail: dict | None = None,
           reason: str | None = None) -> None:
    """Add an audit row to the session; the caller's commit makes it durable with the change itself.

    org_id: the organisation the change was made in; None for a platform action (an organisation created, staff
    assigned, a sign-in)."""
    session.add(AuditLog(org_id=org_id, at=utcnow(), actor=actor[:60], action=action, target=target[:200],
                         detail=json.dumps(detail, sort_keys=True, default=str) if detail else None, reason=reason))


# Which platform rows (org_id NULL: sign-ins, staff assignments, organisations) are read beside an organisation's:
# "all"; "members": the sign-ins and sign-outs of the organisation's own staff; "none".
PlatformRows = Literal["all", "members", "none"]


def platform_rows_for(session: Session, *, staff_id: int, org_id: int) -> PlatformRows:
    """Which platform rows a staff member reads beside organisation org_id's: all of them for a platform admin,
    or while org_id is the only organisation (there is no other to learn about: the log reads as before
    organisations); else the sign-ins of org_id's own staff ("members"), never those of anyone outside it, nor
    the organisations made or the staff assigned elsewhere. The caller checks that they may read org_id's log."""
    row = session.get(Staff, staff_id)
    if row is not None and row.platform_admin:
        return "all"
    others = session.exec(select(func.count()).select_from(Organisation)  # type: ignore[call-overload]
                          .where(Organisation.id != org_id)).one()
    return "all" if others == 0 else "members"


def _members_sign_ins(org_id: int):  # type: ignore[no-untyped-def]
    """Sign-in rows (kind "session") whose actor is a member of org_id: a sign-in concerns every organisation
    the person works in. Platform admins are not members of an organisation (their sign-ins are the platform's),
    and a name that matches no account (kept masked) is nobody's."""
    members = select(Staff.username).join(StaffMembership, StaffMembership.staff_id == Staff.id).where(
        StaffMembership.org_id == org_id, Staff.platform_admin.is_(False))  # type: ignore[attr-defined]
    return AuditLog.org_id.is_(None) & AuditLog.action.startswith("session.") \
        & AuditLog.actor.in_(members)  # type: ignore[union-attr,attr-defined]


def _in_org(org_id: int | None, platform: PlatformRows):  # type: ignore[no-untyped-def]
    if org_id is None:
        return AuditLog.org_id.is_(None)  # type: ignore[union-attr]
    if platform == "all":
        return (AuditLog.org_id == org_id) | AuditLog.org_id.is_(None)  # type: ignore[union-attr]
    if platform == "members":
        return (AuditLog.org_id == org_id) | _members_sign_ins(org_id)
    return AuditLog.org_id == org_id


def search(session: Session, *, org_id: int | None, platform: PlatformRows = "all", kind: str | None = None,
           actor: str | None = None, start: datetime | None = None, end: datetime | None = None,
           limit: int = 1000) -> list[AuditLog]:
    """Entries newest first of organisation org_id and the platform rows platform names (platform_rows_for
    says which a person reads; org_id None: the platform's alone): of one kind (a KINDS key), by one actor, at
    or after start and before end (UTC)."""
    query = select(AuditLog).where(_in_org(org_id, platform)) \
        .order_by(AuditLog.id.desc()).limit(limit)  # type: ignore[union-attr]
    if kind:
        query = query.where(AuditLog.action.startswith(f"{kind}."))  # type: ignore[attr-defined]
    if actor:
        query = query.where(AuditLog.actor == actor)
    if start is not None:
        query = query.where(AuditLog.at >= start)
    if end is not None:
        query = query.where(AuditLog.at < end)
    return list(session.exec(query))


def actors(session: Session, *, org_id: int | None, platform: PlatformRows = "all") -> list[str]:
    """Everyone who has an entry (of the organisation, as search reads them), for the page's actor filter."""
    return sorted(session.exec(select(AuditLog.actor).where(  # type: ignore[call-overload]
        _in_org(org_id, platform)).distinct()))


def to_csv(rows: list[AuditLog]) -> str:
    """The entries as CSV, exactly the columns the page shows. Recorders never put a code or a credential in an
    entry (destinations are masked, credentials are hints), so the export needs no filtering of its own."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["when (UTC)", "who", "what", "target", "why", "detail"])
    for r in rows:
        writer.writerow([r.at.strftime("%Y-%m-%d %H:%M:%S"), r.actor, r.action, r.target, r.reason or "",
                         r.detail or ""])
    return out.getvalue()
