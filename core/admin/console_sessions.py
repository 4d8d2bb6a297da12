"""Console sessions kept server-side: a random token in the browser's cookie, its SHA-256 and idle expiry here.

A reload opens a new Streamlit session with empty state; the cookie's token finds the row again, so the person
stays signed in for the idle lifetime. Only the hash is stored, so a database reader cannot take over a session.
"""
from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import delete, update
from sqlmodel import Session

from core.admin import audit
from core.admin.staff import StaffIdentity
from core.db.models import ConsoleSessionRow, Staff

COOKIE = "otp_console_session"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(session: Session, *, identity: StaffIdentity, idle_minutes: float, now: datetime) -> str:
    """A new session for a person who just signed in; returns the token for the cookie (shown nowhere else)."""
    token = secrets.token_urlsafe(32)
    # Expired rows of anyone are swept here, the one moment a row is added, so the table stays small.
    session.execute(delete(ConsoleSessionRow).where(ConsoleSessionRow.expires_at <= now))
    session.add(ConsoleSessionRow(token_hash=_hash(token), staff_id=identity.id, created_at=now,
                                  expires_at=now + timedelta(minutes=idle_minutes)))
    session.commit()
    return token


def resume_session(session: Session, *, token: str, idle_minutes: float, now: datetime) -> StaffIdentity | None:
    """The person behind a live token, its idle expiry pushed out by one conditional UPDATE; None once it has
    expired, was signed out, or its account was disabled (the role is read now, not at sign-in)."""
    if not token or len(token) > 100:
        return None
    staff_id = session.execute(
        update(ConsoleSessionRow)
        .where(ConsoleSessionRow.token_hash == _hash(token), ConsoleSessionRow.expires_at > now)
        .values(expires_at=now + timedelta(minutes=idle_minutes))
        .returning(ConsoleSessionRow.staff_id)).scalar()
    staff = session.get(Staff, staff_id) if staff_id is not None else None
    if staff is None or staff.disabled_at is not None:
        session.rollback()
        return None
    session.commit()
    return StaffIdentity(staff.id, staff.username, staff.role)


def end_session(session: Session, *, identity: StaffIdentity, token: str | None, why: str = "sign_out") -> None:
    """Sign out: the token stops working at once (a copied cookie is worthless), recorded in the audit log."""
    if token:
        session.execute(delete(ConsoleSessionRow).where(ConsoleSessionRow.token_hash == _hash(token)))
    audit.record(session, org_id=None, actor=identity.username, action=f"session.{why}", target=f"staff:{identity.username}")
    session.commit()
