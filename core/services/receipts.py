"""Delivery receipts: verify the provider's signature, refuse replays, move the delivery's status."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl

from sqlalchemy import Select, insert, select, update
from sqlalchemy.exc import IntegrityError

from core.crypto import equal
from core.db.models import Delivery, DeliveryReceipt
from core.delivery.gateway_settings import GatewayRow, credentials_aad
from core.issuing.entities import DEFAULT_ORG
from core.runtime import Runtime

# Provider status words mapped to ours; words not listed (queued, sent, ringing...) change nothing.
STATUS_MAP = {
    "delivered": "delivered", "read": "delivered", "completed": "delivered",
    "undelivered": "failed", "failed": "failed", "busy": "failed", "no-answer": "failed", "canceled": "failed",
}
MAX_CLOCK_SKEW = 300  # seconds a generic webhook's timestamp may differ from ours


class ReceiptRefused(Exception):
    def __init__(self, http_status: int, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status


@dataclass(frozen=True)
class ReceiptOutcome:
    delivery_id: int
    status: str  # the delivery's status after the receipt
    changed: bool


def twilio_signature(auth_token: str, url: str, params: dict[str, str]) -> str:
    """Twilio's X-Twilio-Signature: HMAC-SHA1 over the URL and the sorted form parameters, base64."""
    payload = url + "".join(f"{key}{params[key]}" for key in sorted(params))
    return base64.b64encode(hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()).decode()


def webhook_signature(secret: str, timestamp: str, body: bytes) -> str:
    """The generic webhook's X-Signature: hex HMAC-SHA256 over 'timestamp.body'."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def _credentials(rt: Runtime, row: GatewayRow) -> dict:
    return json.loads(rt.box.open(row.credentials_enc, credentials_aad(row.org_id, row.name))) if row.credentials_enc else {}


def _verify(rt: Runtime, row: GatewayRow, *, url: str, headers: dict[str, str], body: bytes) -> tuple[str, str, str]:
    """(provider message id, provider status, signature) from a correctly signed receipt, else ReceiptRefused."""
    secrets_ = _credentials(rt, row)
    if row.provider.startswith("twilio_"):
        given = headers.get("x-twilio-signature", "")
        try:
            params = dict(parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=bool(body)))
        except (UnicodeDecodeError, ValueError):
            raise ReceiptRefused(400, "the receipt is not a form") from None
        token = secrets_.get("auth_token", "")
        if not given or not token or not equal(given.encode(), twilio_signature(token, url, params).encode()):
            raise ReceiptRefused(401, "bad or missing signature")
        message_id = params.get("MessageSid") or params.get("CallSid") or ""
        status = params.get("MessageStatus") or params.get("CallStatus") or ""
        return message_id, status, given
    secret = secrets_.get("webhook_secret", "")
    if row.provider == "meta_whatsapp":
        given = headers.get("x-hub-signature-256", "")
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        if not given or not secret or not equal(given.encode(), expected.encode()):
            raise ReceiptRefused(401, "bad or missing signature")
        try:
            status_item = json.loads(body)["entry"][0]["changes"][0]["value"]["statuses"][0]
            return str(status_item["id"]), str(status_item["status"]), given
        except (ValueError, KeyError, IndexError, TypeError, RecursionError):
            raise ReceiptRefused(400, "the receipt is not a WhatsApp status notification") from None
    given = headers.get("x-signature", "")
    stamp = headers.get("x-timestamp", "")
    if not given or not secret or len(stamp) > 12 or not stamp.isascii() or not stamp.isdigit() \
            or not equal(given.encode(), webhook_signature(secret, stamp, body).encode()):
        raise ReceiptRefused(401, "bad or missing signature")
    if abs(time.time() - int(stamp)) > MAX_CLOCK_SKEW:
        raise ReceiptRefused(401, "the receipt's timestamp is too old or in the future")
    try:
        data = json.loads(body)
        return str(data["message_id"]), str(data["status"]), given
    except (ValueError, KeyError, TypeError, RecursionError):
        raise ReceiptRefused(400, "the receipt needs message_id and status") from None


def _fingerprint_name(row: GatewayRow) -> str:
    """The gateway as a receipt's fingerprint names it: two organisations' gateways may share a name."""
    return row.name if row.org_id == DEFAULT_ORG else f"o{row.org_id}|{row.name}"


def _clean(value: str) -> str:
    """A provider's id or status as the database can store it; anything else is a malformed receipt."""
    if len(value) > 200 or "\x00" in value:
        raise ReceiptRefused(400, "the receipt holds an unusable message id or status")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ReceiptRefused(400, "the receipt holds an unusable message id or status") from None
    return value


def delivery_for_receipt(gateway_name: str, message_id: str, org_id: int = DEFAULT_ORG) -> Select:
    """The query a receipt finds its delivery with: (id, status) by gateway and provider message id, among the
    deliveries of the gateway's own organisation only.

    It runs in the receipt's write transaction, so it must stay on the index ix_delivery_receipt (migration
    0012; tests/test_receipts.py checks the plan of this very statement on SQLite and PostgreSQL).
    """
    return select(Delivery.id, Delivery.status).where(Delivery.gateway == gateway_name,
                                                      Delivery.provider_message_id == message_id,
                                                      Delivery.org_id == org_id)


def apply_receipt(rt: Runtime, gateway_name: str, *, org_id: int, url: str, headers: dict[str, str],
                  body: bytes) -> ReceiptOutcome:
    """Verify and apply one receipt for a gateway of organisation org_id. Unsigned, replayed or unknown receipts
    change nothing; a receipt is verified with that organisation's gateway secret and can only reach that
    organisation's deliveries."""
    row = rt.gateway_rows(org_id).get(gateway_name)
    if row is None:
        raise ReceiptRefused(404, "no such gateway")
    message_id, provider_status, signature = _verify(rt, row, url=url,
                                                     headers={k.lower(): v for k, v in headers.items()}, body=body)
    message_id, provider_status = _clean(message_id), _clean(provider_status)
    fingerprint = hashlib.sha256(f"{_fingerprint_name(row)}\x00{signature}\x00".encode() + body).hexdigest()
    mapped = STATUS_MAP.get(provider_status.strip().lower())
    try:
        with rt.db.begin() as conn:
            delivery = conn.execute(delivery_for_receipt(row.name, message_id, org_id)).first()
            if delivery is None:
                raise ReceiptRefused(404, "no delivery with that message id")
            conn.execute(insert(DeliveryReceipt).values(
                org_id=org_id, delivery_id=delivery.id, gateway=row.name, provider_status=provider_status[:40],
                status=mapped or delivery.status, fingerprint=fingerprint, received_at=rt.clock()))
            if mapped is None or delivery.status == mapped:
                return ReceiptOutcome(delivery.id, delivery.status, False)
            values: dict = {"status": mapped, "updated_at": rt.clock()}
            if mapped == "delivered":
                values["receipt_deadline"] = None  # delivered: no failover
            conn.execute(update(Delivery).where(Delivery.id == delivery.id).values(**values))
    except IntegrityError:
        raise ReceiptRefused(409, "this receipt was already received (replay)") from None
    return ReceiptOutcome(delivery.id, mapped, True)
