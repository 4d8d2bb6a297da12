"""The audit log: one row per change, written in the caller's transaction so a change and its record agree."""
from __future__ import annotations

import json

from sqlmodel import Session, select

from core.clock import utcnow
from core.models import AuditLog


def record(session: Session, *, actor: str, action: str, target: str, detail: dict | None = None,
           reason: str | None = None) -> None:
    """Add an audit row to the session; the caller's commit makes it durable with the change itself."""
    session.add(AuditLog(at=utcnow(), actor=actor, action=action, target=target,
                         detail=json.dumps(detail, sort_keys=True, default=str) if detail else None, reason=reason))


def recent(session: Session, *, limit: int = 200, target_prefix: str | None = None) -> list[AuditLog]:
    query = select(AuditLog).order_by(AuditLog.id.desc()).limit(limit)  # type: ignore[union-attr]
    if target_prefix:
        query = query.where(AuditLog.target.startswith(target_prefix))  # type: ignore[attr-defined]
    return list(session.exec(query))
