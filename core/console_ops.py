"""Console actions that need a permission check before they reach the engine or the configuration."""
from __future__ import annotations

from sqlmodel import select

from core import audit, engine
from core.clients import NewClientCredentials, create_client, revoke_client
from core.entities import mask
from core.enums import Action
from core.errors import OtpError
from core.models import ActionConfigUpdate, ApiClient, ApiClientCreate, OutboxMessage
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


def _test_target(payload: dict) -> str:
    """The test's user as the audit log keeps it: masked, like every recipient outside the outbox."""
    return f"user:{payload.get('entityType')}:{mask(str(payload.get('entityValue', '')).strip())}"


def _request_detail(payload: dict) -> dict:
    """What was asked, never a code: action, channels with masked destinations, which body templates came along."""
    return {"action": payload.get("action"),
            "channels": [f"{c.get('type')} {mask(str(c.get('value', '')))}" for c in payload.get("channels") or []
                         if isinstance(c, dict)],
            "body_templates": sorted(k for k in ("template", "emailTemplate", "whatsappTemplateName",
                                                 "zaloTemplateIdentifier") if payload.get(k))}


def _record_test(rt: Runtime, actor: StaffIdentity, action: str, payload: dict, detail: dict) -> None:
    with rt.session() as session:
        audit.record(session, actor=actor.username, action=action, target=_test_target(payload), detail=detail)
        session.commit()


def test_generate(rt: Runtime, *, actor: StaffIdentity, payload: dict) -> engine.GenerateResult:
    """A test send through exactly the engine call the API makes; staff sends reach real people in production,
    so each one is audited (after the send, in its own transaction: none is held open across a gateway call)."""
    with rt.session() as session:
        require(session, actor, "test.send")
    detail = _request_detail(payload)
    try:
        result = engine.run(engine.generate(rt, payload))
    except OtpError as exc:
        _record_test(rt, actor, "test.send", payload, {**detail, "outcome": f"refused {exc.http_status}",
                                                        "problems": [p.code for p in exc.problems]})
        raise
    _record_test(rt, actor, "test.send", payload, {
        **detail, "outcome": "re-sent" if result.resent else "new code", "created_id": result.created_id,
        "deliveries": [f"{d.channel} {mask(d.destination)} via {d.gateway}: {d.status}" for d in result.deliveries],
        "warnings": [w.code for w in result.warnings]})
    return result


def test_dry_run(rt: Runtime, *, actor: StaffIdentity, payload: dict) -> engine.DryRun:
    """Renders and checks without sending or counting: nothing reaches anyone, so nothing is audited."""
    with rt.session() as session:
        require(session, actor, "test.send")
    return engine.dry_run(rt, payload)


def test_validate(rt: Runtime, *, actor: StaffIdentity, payload: dict) -> engine.ValidateResult:
    """A staff validation uses up or burns a customer's code like the API's, so it is audited; the code tried
    is never recorded."""
    with rt.session() as session:
        require(session, actor, "test.send")
    detail = {"action": payload.get("action")}
    try:
        outcome = engine.run(engine.validate(rt, payload))
    except OtpError as exc:
        _record_test(rt, actor, "test.validate", payload, {**detail, "outcome": f"refused {exc.http_status}",
                                                            "problems": [p.code for p in exc.problems]})
        raise
    _record_test(rt, actor, "test.validate", payload, {**detail, "outcome": "valid" if outcome.valid else "invalid",
                                                        "warnings": [w.code for w in outcome.warnings]})
    return outcome


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


def new_api_client(rt: Runtime, *, actor: StaffIdentity, name: str, permissions: str) -> NewClientCredentials:
    name = name.strip()
    if not name or len(name) > 120:
        raise ValueError("the client name must be 1 to 120 characters")
    with rt.session() as session:
        require(session, actor, "clients.manage")
        audit.record(session, actor=actor.username, action="client.create", target=f"client:{name}",
                     detail={"permissions": permissions})
        return create_client(session, client_create=ApiClientCreate(name=name, permissions=permissions))


def revoke_api_client(rt: Runtime, *, actor: StaffIdentity, client_id: int) -> bool:
    with rt.session() as session:
        require(session, actor, "clients.manage")
        row = session.get(ApiClient, client_id)
        audit.record(session, actor=actor.username, action="client.revoke",
                     target=f"client:{row.name if row else client_id}",
                     detail={"id": client_id, "key": row.key if row else None})
        revoked = revoke_client(session, client_id=client_id)
    rt.auth.forget_all()
    return revoked
