"""Staff accounts, roles and the permission check that every console write repeats in core."""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import exists, func, insert, literal
from sqlalchemy import select as sa_select
from sqlmodel import Session, select

from core.admin import audit
from core.clock import utcnow
from core.db.models import Staff, StaffCreate, StaffPublic

ROLES = ("viewer", "editor", "approver", "admin")
# Each role can do what the roles before it can, and more.
PERMISSIONS: dict[str, str] = {
    "status.view": "viewer",
    "templates.view": "viewer",
    "templates.edit": "editor",
    "test.send": "editor",
    "outbox.view": "editor",
    "templates.approve": "approver",
    "config.edit": "admin",
    "staff.manage": "admin",
    "clients.manage": "admin",
}
MIN_PASSWORD_CHARS = 10
_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash("no-such-staff-member")


class PermissionDenied(Exception):
    pass


class InvalidStaff(ValueError):
    pass


@dataclass(frozen=True)
class StaffIdentity:
    """Who is signed in; the role here is a hint for navigation, never trusted for a write."""
    id: int
    username: str
    role: str


def role_allows(role: str, permission: str) -> bool:
    needed = PERMISSIONS[permission]
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)


def require(session: Session, actor: StaffIdentity, permission: str) -> Staff:
    """The actor's current row, if it is enabled and its role (read now, not at login) allows permission."""
    row = session.get(Staff, actor.id)
    if row is None or row.disabled_at is not None or not role_allows(row.role, permission):
        raise PermissionDenied(f"{actor.username} may not {permission.replace('.', ' ')}")
    return row


def _check_new(username: str, password: str, role: str) -> list[str]:
    problems = []
    if not username or len(username) > 60 or not all(ch.isalnum() or ch in "._-@" for ch in username):
        problems.append("the username must be 1 to 60 letters, digits or . _ - @")
    if len(password) < MIN_PASSWORD_CHARS:
        problems.append(f"the password must have at least {MIN_PASSWORD_CHARS} characters")
    if role not in ROLES:
        problems.append(f"the role must be one of {', '.join(ROLES)}")
    return problems


def needs_first_admin(session: Session) -> bool:
    return session.exec(select(func.count()).select_from(Staff)).one() == 0


def create_first_admin(session: Session, *, username: str, password: str) -> StaffPublic:
    """Create the first admin, only while no staff exists: one conditional INSERT, so two browsers racing
    on an empty database cannot both become admin."""
    username = username.strip()
    problems = _check_new(username, password, "admin")
    if problems:
        raise InvalidStaff("; ".join(problems))
    now = utcnow()
    values = sa_select(literal(username), literal("admin"), literal(_hasher.hash(password)),
                       literal(now, Staff.__table__.c.created_at.type),
                       literal(now, Staff.__table__.c.last_login_at.type)).where(~exists(sa_select(Staff.id)))
    # The first admin is signed in at once, so that is their first sign-in too.
    made = session.execute(insert(Staff).from_select(["username", "role", "password_hash", "created_at",
                                                      "last_login_at"], values)
                           .returning(Staff.id)).scalar()
    if made is None:
        session.rollback()
        raise InvalidStaff("an administrator already exists; sign in instead")
    audit.record(session, actor=username, action="staff.first_admin", target=f"staff:{username}")
    session.commit()
    row = session.exec(select(Staff).where(Staff.username == username)).one()
    return StaffPublic.model_validate(row)


def create_staff(session: Session, *, actor: StaffIdentity, staff_create: StaffCreate) -> StaffPublic:
    require(session, actor, "staff.manage")
    username = staff_create.username.strip()
    problems = _check_new(username, staff_create.password, staff_create.role)
    if session.exec(select(Staff.id).where(Staff.username == username)).first() is not None:
        problems.append(f"the username {username} is taken")
    if problems:
        raise InvalidStaff("; ".join(problems))
    row = Staff(username=username, role=staff_create.role, password_hash=_hasher.hash(staff_create.password))
    session.add(row)
    audit.record(session, actor=actor.username, action="staff.create", target=f"staff:{username}",
                 detail={"role": staff_create.role})
    session.commit()
    session.refresh(row)
    return StaffPublic.model_validate(row)


def set_role(session: Session, *, actor: StaffIdentity, staff_id: int, role: str) -> None:
    require(session, actor, "staff.manage")
    if role not in ROLES:
        raise InvalidStaff(f"the role must be one of {', '.join(ROLES)}")
    row = session.get(Staff, staff_id)
    if row is None:
        raise InvalidStaff("no such staff member")
    if row.id == actor.id and role != "admin":
        raise InvalidStaff("you cannot remove your own admin role")
    audit.record(session, actor=actor.username, action="staff.role", target=f"staff:{row.username}",
                 detail={"from": row.role, "to": role})
    row.role = role
    session.add(row)
    session.commit()


def disable_staff(session: Session, *, actor: StaffIdentity, staff_id: int) -> None:
    require(session, actor, "staff.manage")
    row = session.get(Staff, staff_id)
    if row is None or row.disabled_at is not None:
        raise InvalidStaff("no such active staff member")
    if row.id == actor.id:
        raise InvalidStaff("you cannot disable yourself")
    row.disabled_at = utcnow()
    session.add(row)
    audit.record(session, actor=actor.username, action="staff.disable", target=f"staff:{row.username}")
    session.commit()


def list_staff(session: Session) -> list[StaffPublic]:
    return [StaffPublic.model_validate(r) for r in session.exec(select(Staff).order_by(Staff.id))]


def authenticate(session: Session, *, username: str, password: str, failure_delay: float = 0.0) -> StaffIdentity | None:
    """The staff member for these credentials, or None; an unknown name and a wrong password look the same
    and take as long (the hash is checked either way, then failure_delay seconds pass)."""
    row = session.exec(select(Staff).where(Staff.username == username.strip())).first()
    try:
        _hasher.verify(row.password_hash if row else _DUMMY_HASH, password)
        ok = row is not None and row.disabled_at is None
    except (VerificationError, InvalidHashError):
        ok = False
    if not ok:
        why = "no such account" if row is None else ("account disabled" if row.disabled_at else "wrong password")
        audit.record(session, actor=typed_name(username, known=row is not None), action="session.sign_in_failed",
                     target="console", detail={"why": why})  # the log is for admins; the screen says less
        session.commit()
        time.sleep(failure_delay)
        return None
    row.last_login_at = utcnow()
    session.add(row)
    audit.record(session, actor=row.username, action="session.sign_in", target=f"staff:{row.username}")
    session.commit()
    return StaffIdentity(row.id, row.username, row.role)


def typed_name(username: str, *, known: bool) -> str:
    """A sign-in name as the audit log may keep it: an account's name in full; a name matching no account only
    as its first character and length, since it is often a password typed into the wrong field."""
    username = username.strip()
    if known:
        return username[:60]
    return f"{username[:1]}… ({len(username)} chars, no such account)" if username else "(empty)"


@dataclass
class ConsoleSession:
    """A signed-in console session that ends after idle_minutes without activity."""
    identity: StaffIdentity
    expires_at: datetime
    idle_minutes: float
    token: str | None = None  # the cookie's token of the server-side row (core.admin.console_sessions)
    synced_at: datetime | None = None  # when the row's expiry was last pushed out

    @classmethod
    def start(cls, identity: StaffIdentity, idle_minutes: float, now: datetime | None = None,
              token: str | None = None) -> "ConsoleSession":
        now = now or utcnow()
        return cls(identity, now + timedelta(minutes=idle_minutes), idle_minutes, token, now)

    def touch(self, now: datetime | None = None) -> bool:
        """Extend the session if it is still alive; False once it has expired."""
        now = now or utcnow()
        if now >= self.expires_at:
            return False
        self.expires_at = now + timedelta(minutes=self.idle_minutes)
        return True
