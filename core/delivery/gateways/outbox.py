"""The development outbox: 'sends' by keeping the rendered message for the console to show."""
from __future__ import annotations

from sqlalchemy import Connection

from core.clock import utcnow
from core.db.models import OutboxMessage
from core.db.prepared import Prepared
from core.delivery.gateways import OutgoingMessage, SendResult

_INSERT = Prepared(lambda insert: insert(OutboxMessage.__table__))


def _shown_body(message: OutgoingMessage) -> str:
    """What the recipient would see; providers' template messages are described with their parameter."""
    if message.channel.value == "WHATSAPP":
        return (f"[WhatsApp template {message.whatsapp_template_name} ({message.whatsapp_language or 'en'})] "
                f"code parameter: {message.code}")
    if message.channel.value == "ZALO":
        return f"[Zalo ZNS template {message.zalo_template_id}] template_data.otp: {message.code}"
    return (message.body if message.channel.value == "EMAIL" else message.text) or ""


class OutboxGateway:
    """Refused in production by the settings; the only place a readable code is stored.

    Its 'send' is a write to this service's own database, so it is a local gateway (send_within): the
    engine sends through it inside the transaction that issues the code, and the code, its delivery
    record and the message commit together, in one transaction per generate.
    """

    name = "outbox"

    def send_within(self, conn: Connection, message: OutgoingMessage) -> None:
        _INSERT.execute(conn, {"created_at": utcnow(), "org_id": message.org_id, "delivery_id": message.delivery_id,
                               "channel": message.channel.value, "recipient": message.destination,
                               "subject": message.subject, "body": _shown_body(message), "is_html": message.is_html})

    async def send(self, message: OutgoingMessage) -> SendResult:
        # Kept in the transaction that records the delivery: the message and its status commit together.
        return SendResult(status="delivered", record=lambda conn: self.send_within(conn, message))
