"""The audit log: one row per change, written in the caller's transaction so a change and its record agree."""
from __future__ import annotations

import csv
import io
import json
from datetime import datetime

from sqlmodel import Session, select

from core.clock import utcnow
from core.db.models import AuditLog

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
}


def record(session: Session, *, actor: str, action: str, target: str, detail: dict | None = None,
           reason: str | None = None) -> None:
    """Add an audit row to the session; the caller's commit makes it durable with the change itself."""
    session.add(AuditLog(at=utcnow(), actor=actor[:60], action=action, target=target[:200],
                         detail=json.dumps(detail, sort_keys=True, default=str) if detail else None, reason=reason))


def search(session: Session, *, kind: str | None = None, actor: str | None = None, start: datetime | None = None,
           end: datetime | None = None, limit: int = 1000) -> list[AuditLog]:
    """Entries newest first: of one kind (a KINDS key), by one actor, at or after start and before end (UTC)."""
    query = select(AuditLog).order_by(AuditLog.id.desc()).limit(limit)  # type: ignore[union-attr]
    if kind:
        query = query.where(AuditLog.action.startswith(f"{kind}."))  # type: ignore[attr-defined]
    if actor:
        query = query.where(AuditLog.actor == actor)
    if start is not None:
        query = query.where(AuditLog.at >= start)
    if end is not None:
        query = query.where(AuditLog.at < end)
    return list(session.exec(query))


def actors(session: Session) -> list[str]:
    """Everyone who has an entry, for the page's actor filter."""
    return sorted(session.exec(select(AuditLog.actor).distinct()))  # type: ignore[call-overload]


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
