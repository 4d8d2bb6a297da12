"""Configuration, API-client and organisation changes made from the console or the CLI: a permission check, the
change with its audit row, and this process told at once (Runtime.configuration_changed)."""
from __future__ import annotations

from sqlmodel import Session

from core.admin import audit
from core.admin.action_configs import update_action_config
from core.admin.clients import (NewClientCredentials, check_end_user_ip_header, create_client, revoke_client,
                                set_end_user_ip_header, set_token_ttl)
from core.admin.organisations import OrganisationEdited, update_organisation
from core.admin.staff import StaffIdentity, require
from core.db.models import ActionConfigUpdate, ApiClient, ApiClientCreate, OrganisationUpdate
from core.delivery.gateway_settings import load_gateway_rows
from core.enums import Action
from core.issuing.action_config import ConfigRefused, action_config_problems
from core.runtime import Runtime


def save_action_config(rt: Runtime, *, actor: StaffIdentity, org_id: int, action: Action, update: ActionConfigUpdate,
                       reason: str, form_problems: dict[str, list[str]] | None = None) -> None:
    """Save all of an action's configuration or nothing: raises ConfigRefused with every problem by field.

    A person's change needs a reason (it goes to the audit log); form_problems are the ones found while
    reading the form (e.g. a limit that is not a number), reported together with the rest.
    """
    with rt.session() as session:
        require(session, actor, "config.edit", org_id)
        problems = {name: list(found) for name, found in (form_problems or {}).items()}
        for name, found in action_config_problems(update, service_daily_limit=rt.settings.daily_limit,
                                                  gateways=load_gateway_rows(session.connection(), org_id)).items():
            problems.setdefault(name, []).extend(found)
        if not reason.strip():
            problems["reason"] = ["say why you make this change: it is kept in the audit log"]
        if problems:
            raise ConfigRefused(problems)
        update_action_config(session, org_id=org_id, action=action, update=update, actor=actor.username,
                             service_daily_limit=rt.settings.daily_limit, reason=reason.strip())
    rt.configuration_changed()


def new_api_client(rt: Runtime, *, actor: StaffIdentity, org_id: int, name: str, permissions: str,
                   end_user_ip_header: str | None = None) -> NewClientCredentials:
    """A new API client of organisation org_id (its admins only); its secret is in the answer, once."""
    name = name.strip()
    if not name or len(name) > 120:
        raise ValueError("the client name must be 1 to 120 characters")
    header = check_end_user_ip_header(end_user_ip_header)
    with rt.session() as session:
        require(session, actor, "clients.manage", org_id)
        audit.record(session, org_id=org_id, actor=actor.username, action="client.create", target=f"client:{name}",
                     detail={"permissions": permissions, "end_user_ip_header": header})
        return create_client(session, client_create=ApiClientCreate(name=name, permissions=permissions,
                                                                    end_user_ip_header=header), org_id=org_id)


def _client_target(session: Session, client_id: int) -> str:
    """An API client as the audit log names it: by name, as its creation was recorded, so one filter or search
    finds every entry of a client (the id goes in the detail)."""
    row = session.get(ApiClient, client_id)
    return f"client:{row.name if row else client_id}"


def set_api_client_end_user_ip_header(rt: Runtime, *, actor: StaffIdentity, org_id: int, client_id: int,
                                      header: str | None) -> str | None:
    """Where a client's end users' addresses come from (core.net.end_user_address); ValueError for a bad name,
    LookupError for a client that is not the organisation's."""
    value = check_end_user_ip_header(header)
    with rt.session() as session:
        require(session, actor, "clients.manage", org_id)
        audit.record(session, org_id=org_id, actor=actor.username, action="client.end_user_ip_header",
                     target=_client_target(session, client_id), detail={"id": client_id, "end_user_ip_header": value})
        stored = set_end_user_ip_header(session, client_id=client_id, header=value, org_id=org_id)
    rt.auth.forget_all()
    return stored


def revoke_api_client(rt: Runtime, *, actor: StaffIdentity, org_id: int, client_id: int) -> bool:
    with rt.session() as session:
        require(session, actor, "clients.manage", org_id)
        row = session.get(ApiClient, client_id)
        if row is None or row.org_id != org_id:
            return False  # not the organisation's: as if there were none
        audit.record(session, org_id=org_id, actor=actor.username, action="client.revoke", target=_client_target(session, client_id),
                     detail={"id": client_id, "key": row.key if row else None})
        revoked = revoke_client(session, client_id=client_id, org_id=org_id)
    rt.auth.forget_all()
    return revoked


def set_api_client_token_ttl(rt: Runtime, *, actor: StaffIdentity, org_id: int, client_id: int,
                             seconds: int) -> bool:
    """Set a client's OAuth token life; this process issues tokens with it at once, others within
    OTP_AUTH_CACHE_SECONDS (they keep the client's verified identity that long)."""
    with rt.session() as session:
        require(session, actor, "clients.manage", org_id)
        # Recorded first: set_token_ttl's commit makes both durable; a refusal commits neither.
        audit.record(session, org_id=org_id, actor=actor.username, action="client.token_ttl", target=_client_target(session, client_id),
                     detail={"id": client_id, "token_ttl_seconds": seconds})
        changed = set_token_ttl(session, client_id=client_id, seconds=seconds, org_id=org_id)
    rt.auth.forget_all()
    return changed


def save_organisation(rt: Runtime, *, actor: StaffIdentity | str, org_id: int, fields: OrganisationUpdate,
                      reason: str | None = None) -> OrganisationEdited:
    """Edit an organisation (core.admin.organisations.update_organisation: platform admins only, checked, audited)
    and have this process use the new brand, time zone and region from its next request on; other processes
    re-read organisations within OTP_CACHE_SECONDS."""
    with rt.session() as session:
        edited = update_organisation(session, actor=actor, org_id=org_id, fields=fields, reason=reason)
    if edited.changes:
        rt.configuration_changed()
    return edited
