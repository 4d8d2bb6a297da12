"""Configured gateways as the hot path reads them: rows with sealed credentials, built into senders.

Saving a gateway (checks, audit, credential hints) is core.admin.gateways; choosing one per action is
core.runtime.Runtime.choose_gateway."""
from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import Connection, select

from core.crypto import SecretBox
from core.db.models import GatewayConfig
from core.delivery.gateways import Gateway
from core.delivery.gateways.email import SmtpEmail
from core.delivery.gateways.outbox import OutboxGateway
from core.delivery.gateways.sms import TwilioSms, WebhookSms
from core.delivery.gateways.voice import TwilioVoice, WebhookVoice
from core.delivery.gateways.whatsapp import MetaWhatsApp
from core.delivery.gateways.zalo import ZaloZns
from core.enums import Channel

PROVIDERS: dict[str, tuple[type, Channel]] = {
    "smtp": (SmtpEmail, Channel.EMAIL),
    "twilio_sms": (TwilioSms, Channel.SMS),
    "webhook_sms": (WebhookSms, Channel.SMS),
    "twilio_voice": (TwilioVoice, Channel.PHONE),
    "webhook_voice": (WebhookVoice, Channel.PHONE),
    "meta_whatsapp": (MetaWhatsApp, Channel.WHATSAPP),
    "zalo_zns": (ZaloZns, Channel.ZALO),
}
# The outbox serves any channel (development only).
OUTBOX = "outbox"


class GatewayConfigError(ValueError):
    pass


@dataclass(frozen=True)
class GatewayRow:
    """A gateway_config row as the hot path needs it, credentials still sealed."""
    id: int
    name: str
    channel: Channel
    provider: str
    endpoint: str
    sender: str
    options: dict
    credentials_enc: bytes | None
    is_default: bool
    updated_at: object = None
    enabled: bool = True
    org_id: int = 1


def load_gateway_rows(conn: Connection, org_id: int | None = None) -> dict[str, GatewayRow]:
    """Every configured gateway of org_id by name, disabled ones too (flagged): choosing and checking must see
    them. org_id None: every organisation's, by (org_id, name) — see load_all_gateway_rows."""
    query = select(GatewayConfig.__table__)
    if org_id is not None:
        query = query.where(GatewayConfig.org_id == org_id)
    found = {}
    for r in conn.execute(query).mappings():
        channel = Channel.parse(r["channel"])
        if channel is not None:
            found[r["name"]] = _row(r, channel)
    return found


def load_all_gateway_rows(conn: Connection) -> dict[int, dict[str, GatewayRow]]:
    """Every organisation's gateways: {org_id: {name: row}}."""
    found: dict[int, dict[str, GatewayRow]] = {}
    for r in conn.execute(select(GatewayConfig.__table__)).mappings():
        channel = Channel.parse(r["channel"])
        if channel is not None:
            found.setdefault(r["org_id"], {})[r["name"]] = _row(r, channel)
    return found


def _row(r, channel: Channel) -> GatewayRow:  # type: ignore[no-untyped-def]
    return GatewayRow(r["id"], r["name"], channel, r["provider"], r["endpoint"], r["sender"],
                      json.loads(r["options"] or "{}"), r["credentials_enc"], r["is_default"], r["updated_at"],
                      bool(r["enabled"]), r["org_id"])


def credentials_aad(org_id: int, name: str) -> str:
    """What a gateway's sealed credentials are bound to (AES-GCM associated data): its organisation and name, so a
    sealed blob copied to another organisation's gateway of the same name does not open there."""
    return f"gateway:{name}" if org_id == 1 else f"gateway:o{org_id}|{name}"


def build_gateway(row: GatewayRow, box: SecretBox, *, production: bool) -> Gateway | None:
    """The sender for a row; None (the channel then fails with 7001) for an outbox in production."""
    if row.provider == OUTBOX:
        if production:
            return None
        gateway = OutboxGateway()
        gateway.name = row.name
        return gateway
    cls, _channel = PROVIDERS[row.provider]
    credentials = json.loads(box.open(row.credentials_enc, credentials_aad(row.org_id, row.name))) if row.credentials_enc else {}
    return cls(name=row.name, endpoint=row.endpoint, sender=row.sender, options=row.options, credentials=credentials)


def parse_assignments(text: str) -> dict[Channel, str]:
    """'SMS=twilio-main,EMAIL=smtp' → {SMS: 'twilio-main', EMAIL: 'smtp'}."""
    chosen = {}
    for part in text.split(","):
        channel_name, _, gateway = part.partition("=")
        channel = Channel.parse(channel_name)
        if channel is not None and gateway.strip():
            chosen[channel] = gateway.strip()
    return chosen
