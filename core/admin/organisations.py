"""Organisations: created and edited by platform admins (or the CLI), listed, found by slug; every creation and
edit audited as a platform action (audit_log.org_id NULL). A new organisation starts with the default configuration of every
action, no templates of its own (the built-in ones apply), no gateways (OTP_GATEWAY_<CHANNEL> applies) and no
API clients."""
from __future__ import annotations

import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from core.admin import audit
from core.admin.staff import StaffIdentity, memberships, require
from core.clock import utcnow
from core.db.models import Organisation, OrganisationBase, OrganisationPublic, OrganisationUpdate
from core.issuing.action_config import seed_action_configs
from core.issuing.org_settings import UnknownOrganisation

SLUG = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?")

# What a platform admin may change after creation (the slug names the organisation in the CLI and receipt URLs).
EDITABLE = ("name", "brand", "timezone", "phone_region")

__all__ = ["EDITABLE", "OrganisationEdited", "OrganisationRefused", "UnknownOrganisation", "create_organisation",
           "get_organisation", "get_organisation_by_slug", "list_organisations", "organisation_problems",
           "update_organisation"]


class OrganisationRefused(ValueError):
    """An organisation that was not made, with every problem by field."""

    def __init__(self, problems: dict[str, list[str]]) -> None:
        super().__init__("; ".join(p for found in problems.values() for p in found))
        self.problems = problems


def organisation_problems(fields: OrganisationBase) -> dict[str, list[str]]:
    """Every problem with an organisation's fields (new or edited), by field, in words the CLI and the console can
    show. Text must be printable on one line: a name or brand goes into messages, CSV exports and email headers."""
    problems: dict[str, list[str]] = {}

    def add(name: str, message: str) -> None:
        problems.setdefault(name, []).append(message)

    if not SLUG.fullmatch(fields.slug or ""):
        add("slug", "the slug must be 1 to 40 lower-case letters, digits or '-' (not at either end), e.g. acme-vn")
    if not fields.name.strip() or len(fields.name) > 120 or any(not ch.isprintable() for ch in fields.name):
        add("name", "the name must be 1 to 120 printable characters on one line")
    if fields.brand is not None and (len(fields.brand) > 100 or any(not ch.isprintable() for ch in fields.brand)):
        add("brand", "the brand must be printable text on one line, at most 100 characters")
    if fields.timezone is not None:
        try:
            ZoneInfo(fields.timezone)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            add("timezone", f"unknown time zone {fields.timezone!r} (e.g. Asia/Ho_Chi_Minh)")
    if fields.phone_region is not None and fields.phone_region.upper() not in phonenumbers.SUPPORTED_REGIONS:
        add("phone_region", f"unknown ISO region {fields.phone_region!r} (e.g. IN, US, VN)")
    return problems


def create_organisation(session: Session, *, actor: StaffIdentity | str, fields: OrganisationBase,
                        reason: str | None = None) -> OrganisationPublic:
    """Make an organisation with the default configuration of every action; OrganisationRefused with every
    problem (a taken slug included) or nothing is made.

    actor: a signed-in platform admin (checked), or a name for the command line (the operator of the host).
    """
    name = actor if isinstance(actor, str) else actor.username
    if not isinstance(actor, str):
        require(session, actor, "orgs.manage", None)
    fields = _normalised(fields)
    problems = organisation_problems(fields)
    if not problems and session.exec(select(Organisation.id).where(Organisation.slug == fields.slug)).first():
        problems["slug"] = [f"the slug {fields.slug} is taken"]
    if problems:
        raise OrganisationRefused(problems)
    row = Organisation.model_validate(fields, update={"created_at": utcnow()})
    session.add(row)
    try:
        session.flush()
    except IntegrityError:  # another platform admin took the slug at the same moment
        session.rollback()
        raise OrganisationRefused({"slug": [f"the slug {fields.slug} is taken"]}) from None
    seed_action_configs(session.connection(), row.id)
    audit.record(session, org_id=None, actor=name, action="org.create", target=f"org:{row.slug}",
                 detail=fields.model_dump(), reason=reason)
    session.commit()
    session.refresh(row)
    return OrganisationPublic.model_validate(row)


def _normalised(fields: OrganisationBase) -> OrganisationBase:
    """The fields as stored: slug lower-case, name trimmed, region upper-case, an empty brand, time zone or region
    None (the service setting). Built without the model's length checks: organisation_problems reports them."""
    return OrganisationBase.model_construct(slug=(fields.slug or "").strip().lower(), name=(fields.name or "").strip(),
                                            brand=fields.brand if fields.brand not in ("",) else None,
                                            timezone=(fields.timezone or "").strip() or None,
                                            phone_region=(fields.phone_region or "").strip().upper() or None)


@dataclass(frozen=True)
class OrganisationEdited:
    """An organisation after an edit, and what the edit changed: {field: (before, after)} (empty: nothing)."""
    organisation: OrganisationPublic
    changes: dict[str, tuple[str | None, str | None]]


def update_organisation(session: Session, *, actor: StaffIdentity | str, org_id: int, fields: OrganisationUpdate,
                        reason: str | None = None) -> OrganisationEdited:
    """Change an organisation's name, brand, time zone or phone region (the fields set in fields; the slug stays):
    checked as a new one is (organisation_problems), OrganisationRefused with every problem and nothing changed.
    An edit that changes something is recorded as a platform action "org.update" with each field's before and
    after; one that changes nothing writes nothing.

    actor: a signed-in platform admin (checked before anything is read, so no one else learns which ids exist),
    or a name for the command line (the operator of the host). UnknownOrganisation for an id that is none.

    Who sees the change when: the engine reads organisations through Runtime.org (core.runtime), cached for
    OTP_CACHE_SECONDS. core.services.admin_actions.save_organisation makes the edit and clears that cache, so
    the process that made it uses it on its next request; every other process (API workers, another console)
    re-reads within OTP_CACHE_SECONDS. A new time zone moves the day boundary of the organisation's daily limits
    from its next request on: a customer's count of the day is that of the new zone's day (a day that began
    earlier or later than the old one's).
    """
    name = actor if isinstance(actor, str) else actor.username
    if not isinstance(actor, str):
        require(session, actor, "orgs.manage", None)
    row = session.get(Organisation, org_id)
    if row is None:
        raise UnknownOrganisation(f"no organisation with id {org_id}")
    current = {field: getattr(row, field) for field in ("slug", *EDITABLE)}
    wanted = _normalised(OrganisationBase.model_construct(**{**current, **fields.model_dump(exclude_unset=True),
                                                             "slug": row.slug}))
    problems = organisation_problems(wanted)
    if problems:
        raise OrganisationRefused(problems)
    changes = {field: (current[field], getattr(wanted, field)) for field in EDITABLE
               if current[field] != getattr(wanted, field)}
    if changes:
        for field, (_before, after) in changes.items():
            setattr(row, field, after)
        session.add(row)
        audit.record(session, org_id=None, actor=name, action="org.update", target=f"org:{row.slug}",
                     detail={field: {"from": before, "to": after} for field, (before, after) in changes.items()},
                     reason=reason)
        session.commit()
        session.refresh(row)
    return OrganisationEdited(OrganisationPublic.model_validate(row), changes)


def list_organisations(session: Session) -> list[OrganisationPublic]:
    """Every organisation, oldest first (the default organisation is id 1)."""
    return [OrganisationPublic.model_validate(r) for r in session.exec(select(Organisation).order_by(Organisation.id))]


def get_organisation(session: Session, org_id: int) -> OrganisationPublic:
    row = session.get(Organisation, org_id)
    if row is None:
        raise UnknownOrganisation(f"no organisation with id {org_id}")
    return OrganisationPublic.model_validate(row)


def get_organisation_by_slug(session: Session, slug: str) -> OrganisationPublic:
    """The organisation with this slug; UnknownOrganisation (naming the known slugs) when there is none."""
    row = session.exec(select(Organisation).where(Organisation.slug == slug.strip().lower())).first()
    if row is None:
        known = ", ".join(o.slug for o in list_organisations(session))
        raise UnknownOrganisation(f"no organisation with the slug {slug!r} (known: {known})")
    return OrganisationPublic.model_validate(row)


def organisations_of(session: Session, actor: StaffIdentity) -> list[OrganisationPublic]:
    """The organisations a signed-in person may switch to: the ones they belong to (platform admins: all)."""
    mine = memberships(session, actor.id)
    return [o for o in list_organisations(session) if o.id in mine]
