"""Staff accounts, roles and the permission check that every console write repeats in core."""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import exists, func, insert, literal
from sqlalchemy import select as sa_select
from sqlalchemy import update
from sqlmodel import Session, select

from core.admin import audit
from core.clock import utcnow
from core.db.models import Organisation, Staff, StaffCreate, StaffMembership, StaffPublic
from core.issuing.entities import DEFAULT_ORG

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
    "orgs.manage": "platform",  # platform admins only: create organisations, assign staff to them
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
    return needed in ROLES and role in ROLES and ROLES.index(role) >= ROLES.index(needed)


def role_in(session: Session, row: Staff, org_id: int) -> str | None:
    """A staff member's role in an organisation, read now: admin for a platform admin (in every organisation that
    exists), else their membership's; None when they have none there."""
    if row.platform_admin:
        return "admin" if session.get(Organisation, org_id) is not None else None
    membership = session.get(StaffMembership, (row.id, org_id))
    return membership.role if membership is not None else None


def require(session: Session, actor: StaffIdentity, permission: str, org_id: int | None) -> Staff:
    """The actor's current row, if it is enabled and its role in organisation org_id (read now, from
    staff_membership, not at login) allows permission. A signed-in person naming an organisation they do not
    belong to is refused here, whatever the console shows. org_id None: a platform permission (orgs.manage),
    allowed to platform admins only."""
    row = session.get(Staff, actor.id)
    allowed = row is not None and row.disabled_at is None and (
        row.platform_admin if PERMISSIONS[permission] == "platform" or org_id is None
        else role_allows(role_in(session, row, org_id) or "", permission))
    if not allowed:
        raise PermissionDenied(f"{actor.username} may not {permission.replace('.', ' ')}")
    return row  # type: ignore[return-value]


def memberships(session: Session, staff_id: int) -> dict[int, str]:
    """{org_id: role} of a staff member: every organisation as admin for a platform admin."""
    row = session.get(Staff, staff_id)
    if row is None or row.disabled_at is not None:
        return {}
    if row.platform_admin:
        return {org_id: "admin" for org_id in session.exec(select(Organisation.id).order_by(Organisation.id))}
    return {m.org_id: m.role for m in session.exec(select(StaffMembership).where(StaffMembership.staff_id == staff_id)
                                                   .order_by(StaffMembership.org_id))}


def _set_membership(session: Session, staff: Staff, org_id: int, role: str) -> None:
    membership = session.get(StaffMembership, (staff.id, org_id))
    if membership is None:
        membership = StaffMembership(staff_id=staff.id, org_id=org_id, role=role)
    membership.role = role
    session.add(membership)
    if org_id == DEFAULT_ORG:  # staff.role is the role in the default organisation (the console's hint)
        staff.role = role
        session.add(staff)


def assign_staff(session: Session, *, actor: StaffIdentity, staff_id: int, org_id: int, role: str | None) -> None:
    """Give a staff member a role in an organisation, or (role None) take their membership away: platform admins
    only, recorded as a platform action."""
    require(session, actor, "orgs.manage", None)
    row = session.get(Staff, staff_id)
    if row is None:
        raise InvalidStaff("no such staff member")
    if session.get(Organisation, org_id) is None:
        raise InvalidStaff("no such organisation")
    if role is not None and role not in ROLES:
        raise InvalidStaff(f"the role must be one of {', '.join(ROLES)}")
    if role is None:
        membership = session.get(StaffMembership, (staff_id, org_id))
        if membership is not None:
            session.delete(membership)
    else:
        session.flush()
        _set_membership(session, row, org_id, role)
    audit.record(session, org_id=None, actor=actor.username, action="staff.assign", target=f"staff:{row.username}",
                 detail={"org_id": org_id, "role": role})
    session.commit()


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
    # The first admin runs the platform: they create organisations and assign staff.
    session.execute(update(Staff).where(Staff.id == made).values(platform_admin=True))
    session.execute(insert(StaffMembership).values(staff_id=made, org_id=DEFAULT_ORG, role="admin"))
    audit.record(session, org_id=None, actor=username, action="staff.first_admin", target=f"staff:{username}")
    session.commit()
    row = session.exec(select(Staff).where(Staff.username == username)).one()
    return StaffPublic.model_validate(row)


def create_staff(session: Session, *, actor: StaffIdentity, staff_create: StaffCreate, org_id: int) -> StaffPublic:
    """A new staff member, with staff_create.role in organisation org_id (whose admin the actor must be)."""
    require(session, actor, "staff.manage", org_id)
    username = staff_create.username.strip()
    problems = _check_new(username, staff_create.password, staff_create.role)
    if session.exec(select(Staff.id).where(Staff.username == username)).first() is not None:
        problems.append(f"the username {username} is taken")
    if problems:
        raise InvalidStaff("; ".join(problems))
    row = Staff(username=username, role=staff_create.role, password_hash=_hasher.hash(staff_create.password))
    session.add(row)
    session.flush()
    _set_membership(session, row, org_id, staff_create.role)
    audit.record(session, org_id=org_id, actor=actor.username, action="staff.create", target=f"staff:{username}",
                 detail={"role": staff_create.role})
    session.commit()
    session.refresh(row)
    return StaffPublic.model_validate(row)


def set_role(session: Session, *, actor: StaffIdentity, staff_id: int, role: str, org_id: int) -> None:
    """Change a member's role in organisation org_id (admins of it only)."""
    require(session, actor, "staff.manage", org_id)
    if role not in ROLES:
        raise InvalidStaff(f"the role must be one of {', '.join(ROLES)}")
    row = session.get(Staff, staff_id)
    if row is None:
        raise InvalidStaff("no such staff member")
    before = role_in(session, row, org_id)
    if before is None and not row.platform_admin:
        raise InvalidStaff("no such staff member")  # not a member of this organisation: as if unknown
    if row.id == actor.id and role != "admin":
        raise InvalidStaff("you cannot remove your own admin role")
    _check_platform_target(session, actor, row)
    audit.record(session, org_id=org_id, actor=actor.username, action="staff.role", target=f"staff:{row.username}",
                 detail={"from": before, "to": role})
    _set_membership(session, row, org_id, role)
    session.commit()


def _check_platform_target(session: Session, actor: StaffIdentity, row: Staff) -> None:
    """An organisation's admin manages its members, never a platform admin (admin in every organisation): only
    another platform admin may change or disable one."""
    acting = session.get(Staff, actor.id)
    if row.platform_admin and not (acting is not None and acting.platform_admin):
        raise InvalidStaff("only a platform admin can change a platform admin")


def disable_staff(session: Session, *, actor: StaffIdentity, staff_id: int, org_id: int) -> str:
    """Disable a staff member's account (an admin of an organisation they belong to, or a platform admin).

    Someone who also works in another organisation is only taken out of this one when an organisation's admin
    asks (their account is not this organisation's alone); a platform admin disables the account. Returns
    "disabled" or "removed"."""
    require(session, actor, "staff.manage", org_id)
    row = session.get(Staff, staff_id)
    if row is None or row.disabled_at is not None or role_in(session, row, org_id) is None:
        raise InvalidStaff("no such active staff member")
    if row.id == actor.id:
        raise InvalidStaff("you cannot disable yourself")
    _check_platform_target(session, actor, row)
    acting = session.get(Staff, actor.id)
    elsewhere = [org for org in memberships(session, row.id) if org != org_id]
    if elsewhere and not (acting is not None and acting.platform_admin):
        session.delete(session.get(StaffMembership, (row.id, org_id)))
        audit.record(session, org_id=org_id, actor=actor.username, action="staff.remove",
                     target=f"staff:{row.username}")
        session.commit()
        return "removed"
    row.disabled_at = utcnow()
    session.add(row)
    audit.record(session, org_id=org_id, actor=actor.username, action="staff.disable",
                 target=f"staff:{row.username}")
    session.commit()
    return "disabled"


def list_staff(session: Session, *, org_id: int) -> list[StaffPublic]:
    """The members of an organisation (and the platform admins), with their role in it."""
    found = []
    for row in session.exec(select(Staff).order_by(Staff.id)):
        role = role_in(session, row, org_id)
        if role is not None:
            found.append(StaffPublic.model_validate(row, update={"role": role}))
    return found


def all_staff(session: Session, *, actor: StaffIdentity) -> list[tuple[StaffPublic, dict[int, str]]]:
    """Every staff member with their {org_id: role}, for a platform admin assigning people to organisations."""
    require(session, actor, "orgs.manage", None)
    return [(StaffPublic.model_validate(row), memberships(session, row.id) if row.disabled_at is None else {})
            for row in session.exec(select(Staff).order_by(Staff.id))]


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
        audit.record(session, org_id=None, actor=typed_name(username, known=row is not None),
                     action="session.sign_in_failed",
                     target="console", detail={"why": why})  # the log is for admins; the screen says less
        session.commit()
        time.sleep(failure_delay)
        return None
    row.last_login_at = utcnow()
    session.add(row)
    audit.record(session, org_id=None, actor=row.username, action="session.sign_in", target=f"staff:{row.username}")
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
    # The organisation the person works in now (the console's switcher); None until the console picks their
    # first one. Never trusted: every core call checks the person's membership in it (require).
    org_id: int | None = None

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
