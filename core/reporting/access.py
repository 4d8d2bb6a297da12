"""Who may read which organisation's figures: checked by every dashboard function before it reads a row.

The console passes the signed-in person's staff id with every question (Filters.staff_id, or staff_id=...);
their membership is read now, from staff_membership, so a forged organisation in the session, or "every
organisation" asked for by someone who is not a platform admin, is refused here whatever the page shows.
staff_id None is the service itself asking (the CLI, the simulator, the benchmark, tests): nobody signed in.
Reporting sits beside core.admin (it may not import it), so the rule is read from the tables directly; it is
the rule of core.admin.staff.require for a read ("status.view": any role in the organisation).
"""
from __future__ import annotations

from sqlalchemy import Connection, select

from core.db.models import Organisation, Staff, StaffMembership

_staff = Staff.__table__
_membership = StaffMembership.__table__
_organisation = Organisation.__table__


class NotAllowed(PermissionError):
    """The signed-in person may not see these figures."""


def check(conn: Connection, *, staff_id: int | None, org_id: int | None) -> None:
    """Raise NotAllowed unless staff_id may read organisation org_id (None: every organisation, platform admins
    only). A disabled or unknown staff member may read nothing."""
    if staff_id is None:
        return
    row = conn.execute(select(_staff.c.platform_admin, _staff.c.disabled_at).where(_staff.c.id == staff_id)).first()
    if row is None or row.disabled_at is not None:
        raise NotAllowed("this sign-in may not read the dashboards")
    if row.platform_admin:
        return
    if org_id is None:
        raise NotAllowed("only platform admins may see every organisation")
    member = conn.execute(select(_membership.c.role).where(_membership.c.staff_id == staff_id,
                                                           _membership.c.org_id == org_id)).first()
    if member is None:
        raise NotAllowed("not a member of this organisation")


def org_ids(conn: Connection, org_id: int | None) -> list[int]:
    """The organisations a question covers: [org_id], or every organisation for None."""
    if org_id is not None:
        return [org_id]
    return [int(i) for i in conn.execute(select(_organisation.c.id).order_by(_organisation.c.id)).scalars()]


def org_names(conn: Connection) -> dict[int, str]:
    """{id: name} of every organisation, for the all-organisations breakdown."""
    return {int(i): name for i, name in conn.execute(select(_organisation.c.id, _organisation.c.name)
                                                     .order_by(_organisation.c.id))}
