"""Console actions that need a permission check before they reach the engine or the configuration."""
from __future__ import annotations

from sqlmodel import select

from core import audit, engine
from core.clients import (NewClientCredentials, check_end_user_ip_header, create_client, revoke_client,
                          set_end_user_ip_header)
from core.enums import Action
from core.models import ActionConfigUpdate, ApiClientCreate, OutboxMessage
from core.otpconfig import update_action_config
from core.runtime import Runtime
from core.staff import StaffIdentity, require


def save_action_config(rt: Runtime, *, actor: StaffIdentity, action: Action, update: ActionConfigUpdate,
                       reason: str) -> None:
    with rt.session() as session:
        require(session, actor, "config.edit")
        update_action_config(session, action=action, update=update, actor=actor.username,
                             service_daily_limit=rt.settings.daily_limit, reason=reason.strip() or None)
    rt.configuration_changed()


def test_generate(rt: Runtime, *, actor: StaffIdentity, payload: dict) -> engine.GenerateResult:
    """A test send through exactly the engine call the API makes."""
    with rt.session() as session:
        require(session, actor, "test.send")
    return engine.run(engine.generate(rt, payload))


def test_dry_run(rt: Runtime, *, actor: StaffIdentity, payload: dict) -> engine.DryRun:
    with rt.session() as session:
        require(session, actor, "test.send")
    return engine.dry_run(rt, payload)


def test_validate(rt: Runtime, *, actor: StaffIdentity, payload: dict) -> engine.ValidateResult:
    with rt.session() as session:
        require(session, actor, "test.send")
    return engine.run(engine.validate(rt, payload))


def outbox_messages(rt: Runtime, *, actor: StaffIdentity, recipient: str = "", delivery_ids: list[int] | None = None,
                    limit: int = 200) -> list[OutboxMessage]:
    """The development outbox, newest first; refused outside development, since it holds readable codes."""
    if not rt.settings.is_development:
        raise PermissionError("the outbox exists only in development mode")
    with rt.session() as session:
        require(session, actor, "outbox.view")
        query = select(OutboxMessage).order_by(OutboxMessage.id.desc()).limit(limit)  # type: ignore[union-attr]
        if recipient.strip():
            query = query.where(OutboxMessage.recipient.contains(recipient.strip().lower()))  # type: ignore[attr-defined]
        if delivery_ids is not None:
            query = query.where(OutboxMessage.delivery_id.in_(delivery_ids))  # type: ignore[union-attr]
        return list(session.exec(query))


def new_api_client(rt: Runtime, *, actor: StaffIdentity, name: str, permissions: str,
                   end_user_ip_header: str | None = None) -> NewClientCredentials:
    name = name.strip()
    if not name or len(name) > 120:
        raise ValueError("the client name must be 1 to 120 characters")
    header = check_end_user_ip_header(end_user_ip_header)
    with rt.session() as session:
        require(session, actor, "clients.manage")
        audit.record(session, actor=actor.username, action="client.create", target=f"client:{name}",
                     detail={"permissions": permissions, "end_user_ip_header": header})
        return create_client(session, client_create=ApiClientCreate(name=name, permissions=permissions,
                                                                    end_user_ip_header=header))


def set_api_client_end_user_ip_header(rt: Runtime, *, actor: StaffIdentity, client_id: int,
                                      header: str | None) -> str | None:
    """Where a client's end users' addresses come from (core.net.end_user_address); ValueError for a bad name."""
    value = check_end_user_ip_header(header)
    with rt.session() as session:
        require(session, actor, "clients.manage")
        audit.record(session, actor=actor.username, action="client.end_user_ip_header",
                     target=f"client:{client_id}", detail={"end_user_ip_header": value})
        stored = set_end_user_ip_header(session, client_id=client_id, header=value)
    rt.auth.forget_all()
    return stored


def revoke_api_client(rt: Runtime, *, actor: StaffIdentity, client_id: int) -> bool:
    with rt.session() as session:
        require(session, actor, "clients.manage")
        audit.record(session, actor=actor.username, action="client.revoke", target=f"client:{client_id}")
        revoked = revoke_client(session, client_id=client_id)
    rt.auth.forget_all()
    return revoked
