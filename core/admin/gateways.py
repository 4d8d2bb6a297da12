"""Saving and listing gateways from the console: every problem by form field, one default per channel, credentials
sealed and shown only as hints, each change audited with a before and after."""
from __future__ import annotations

import json

from sqlmodel import Session
from sqlmodel import select as model_select

from core.admin import audit
from core.admin.staff import StaffIdentity, require
from core.clock import utcnow
from core.crypto import SecretBox
from core.db.models import GatewayConfig, GatewayConfigBase, GatewayConfigPublic
from core.delivery.gateway_settings import OUTBOX, PROVIDERS, GatewayConfigError, credentials_aad
from core.delivery.gateways.email import SECURITY_MODES
from core.enums import Channel


def secret_hint(value: object) -> str:
    """A stored secret as the console may show it: its last four characters when it is long enough."""
    value = str(value)
    return f"••••{value[-4:]}" if len(value) >= 12 else "••••"


def _hint(credentials: dict) -> str:
    return ", ".join(f"{key}: {secret_hint(value)}" for key, value in sorted(credentials.items()))


def gateway_problems(config: GatewayConfigBase) -> dict[str, list[str]]:
    """Every problem with a gateway's stored shape, by the field it belongs to."""
    problems: dict[str, list[str]] = {}

    def add(name: str, message: str) -> None:
        problems.setdefault(name, []).append(message)

    if not config.name.strip() or len(config.name) > 60:
        add("name", "the name must be 1 to 60 characters")
    channel = Channel.parse(config.channel)
    if channel is None:
        add("channel", f"unknown channel {config.channel!r}")
    if config.provider != OUTBOX:
        if config.provider not in PROVIDERS:
            add("provider", f"unknown provider {config.provider!r} (known: {', '.join(sorted([*PROVIDERS, OUTBOX]))})")
        elif channel is not None and PROVIDERS[config.provider][1] is not channel:
            add("provider", f"{config.provider} sends {PROVIDERS[config.provider][1].value}, not {channel.value}")
    try:
        options = json.loads(config.options or "{}")
        if not isinstance(options, dict):
            add("options", "options must be a JSON object")
        elif config.provider == "smtp" and options.get("security", "starttls") not in SECURITY_MODES:
            add("options.security", f"SMTP security must be one of {', '.join(SECURITY_MODES)}")
        elif not isinstance(options.get("idempotency_key_honoured", False), bool):
            # A quoted "false" must not read as true: it decides whether a timeout is retried (a second send).
            add("options", "idempotency_key_honoured must be true or false")
    except json.JSONDecodeError as exc:
        add("options", f"options are not valid JSON: {exc.msg} at line {exc.lineno}")
    if config.provider in ("smtp",) and not config.endpoint:
        add("endpoint.host", "an SMTP gateway needs a host")
    return problems


class GatewayRefused(GatewayConfigError):
    """A gateway that was not saved, with every problem by form field."""

    def __init__(self, problems: dict[str, list[str]]) -> None:
        super().__init__("; ".join(p for found in problems.values() for p in found))
        self.problems = problems


def _snapshot(row: GatewayConfig | None, credentials: dict) -> dict | None:
    """A gateway as the audit log keeps it: every setting, credentials only as hints."""
    if row is None:
        return None
    options = json.loads(row.options or "{}")
    if isinstance(options, dict) and isinstance(options.get("headers"), dict):  # a webhook's headers may hold a key
        options = {**options, "headers": {k: secret_hint(v) for k, v in sorted(options["headers"].items())}}
    return {"channel": row.channel, "provider": row.provider, "endpoint": row.endpoint, "sender": row.sender,
            "options": options, "default": row.is_default, "enabled": row.enabled,
            "credentials": {k: secret_hint(v) for k, v in sorted(credentials.items())}}


def write_gateway(session: Session, box: SecretBox, *, actor: StaffIdentity, org_id: int,
                  row: GatewayConfig | None, config: GatewayConfigBase, credentials: dict,
                  reason: str | None) -> GatewayConfigPublic:
    """Store one gateway of organisation org_id (one default per channel in it) with its audit row, in one
    transaction."""
    if row is not None and row.org_id != org_id:
        raise GatewayRefused({"name": ["no such gateway"]})
    before_credentials = open_credentials(box, row) if row is not None else {}
    before = _snapshot(row, before_credentials)
    if row is None:
        row = GatewayConfig(**config.model_dump(), org_id=org_id)
    else:
        for key, value in config.model_dump().items():
            setattr(row, key, value)
    row.credentials_enc = box.seal(json.dumps(credentials).encode(), credentials_aad(row.org_id, row.name)) if credentials else None
    if row.is_default:  # one default per channel (in the organisation)
        for other in session.exec(model_select(GatewayConfig).where(GatewayConfig.org_id == org_id,
                                                                    GatewayConfig.channel == row.channel,
                                                                    GatewayConfig.is_default.is_(True))):
            if other.name != row.name:
                other.is_default = False
                session.add(other)
    row.updated_at = utcnow()
    session.add(row)
    audit.record(session, org_id=org_id, actor=actor.username, action="gateway.save", target=f"gateway:{row.name}",
                 detail={"provider": row.provider, "channel": row.channel, "default": row.is_default,
                         "credentials_changed": sorted(k for k in {*credentials, *before_credentials}
                                                       if credentials.get(k) != before_credentials.get(k)),
                         "before": before, "after": _snapshot(row, credentials)}, reason=(reason or "").strip() or None)
    session.commit()
    session.refresh(row)
    return public(row, box)


def open_credentials(box: SecretBox, row: GatewayConfig) -> dict:
    return json.loads(box.open(row.credentials_enc, credentials_aad(row.org_id, row.name))) if row.credentials_enc else {}


def find_gateway(session: Session, *, org_id: int, name: str) -> GatewayConfig | None:
    """The organisation's gateway with this name (another organisation's of the same name is never found)."""
    return session.exec(model_select(GatewayConfig).where(GatewayConfig.org_id == org_id,
                                                          GatewayConfig.name == name.strip())).first()


def save_gateway(session: Session, box: SecretBox, *, actor: StaffIdentity, org_id: int, config: GatewayConfigBase,
                 credentials: dict | None, change_provider: bool = False,
                 reason: str | None = None) -> GatewayConfigPublic:
    """Create or update a gateway of organisation org_id by name; credentials None keeps the stored ones (they
    are never shown back).

    Turning an existing gateway into another provider or channel needs change_provider=True: never a side
    effect of saving it.
    """
    require(session, actor, "config.edit", org_id)
    problems = gateway_problems(config)
    row = find_gateway(session, org_id=org_id, name=config.name)
    if row is not None and (row.provider, row.channel) != (config.provider, config.channel) and not change_provider:
        problems.setdefault("provider", []).append(
            f"{row.name} is a {row.provider} gateway for {row.channel}: changing it to {config.provider} "
            f"for {config.channel} must be asked for explicitly")
    if problems:
        raise GatewayRefused(problems)
    kept = open_credentials(box, row) if row is not None and credentials is None else {}
    return write_gateway(session, box, actor=actor, org_id=org_id, row=row, config=config,
                         credentials=credentials if credentials is not None else kept, reason=reason)


def public(row: GatewayConfig, box: SecretBox) -> GatewayConfigPublic:
    hint = ""
    if row.credentials_enc:
        hint = _hint(json.loads(box.open(row.credentials_enc, credentials_aad(row.org_id, row.name))))
    return GatewayConfigPublic.model_validate(row, update={"credentials_hint": hint})


def list_gateways(session: Session, box: SecretBox, *, org_id: int) -> list[GatewayConfigPublic]:
    """The organisation's gateways, credentials as hints."""
    return [public(r, box) for r in session.exec(model_select(GatewayConfig).where(GatewayConfig.org_id == org_id)
                                                 .order_by(GatewayConfig.channel, GatewayConfig.name))]
