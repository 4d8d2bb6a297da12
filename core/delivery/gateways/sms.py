"""SMS over HTTP: a Twilio-compatible Messages API and a generic JSON webhook."""
from __future__ import annotations

from core.delivery.gateways import OutgoingMessage, SendResult
from core.delivery.gateways.base import ProviderGateway, fill, idempotency_key
from core.delivery.gateways.http import json_of
from core.delivery.gateways.retry import Permanent

TWILIO_API = "https://api.twilio.com"
# Twilio documents a 429 (error 20429) as "never processed and always safe to retry". It documents no
# idempotency key for creating a Message or a Call, and says a retried POST after a 500 may send twice
# (error 20500); its I-Twilio-Idempotency-Token header is one Twilio puts on its own webhooks.
TWILIO_NOT_ACCEPTED = frozenset({429})


class TwilioSms(ProviderGateway):
    not_accepted = TWILIO_NOT_ACCEPTED

    async def send(self, message: OutgoingMessage) -> SendResult:
        return await twilio_post(self, "Messages.json", {"To": message.destination, "From": self.sender,
                                                         "Body": message.text or ""})


async def twilio_post(gateway: ProviderGateway, resource: str, data: dict) -> SendResult:
    """POST a form to a Twilio-style account resource; the sid is the message id."""
    sid = gateway.secret("account_sid")
    token = gateway.secret("auth_token")
    url = f"{(gateway.endpoint or TWILIO_API).rstrip('/')}/2010-04-01/Accounts/{sid}/{resource}"
    if gateway.options.get("status_callback"):
        data = {**data, "StatusCallback": gateway.options["status_callback"]}

    async def once() -> SendResult:
        response = await gateway.post(url, data=data, auth=(sid, token))
        answer = json_of(response)
        if not answer.get("sid"):
            raise Permanent("provider answer has no sid", response.status_code)
        return SendResult("sent", str(answer["sid"]), response.status_code)

    return await gateway.send_with_retries(once)


class WebhookSms(ProviderGateway):
    """POSTs a configurable JSON body to a configurable URL; text and code travel only in the body.

    Our contract for the receiver (README): a 429 means "not accepted, try later"; the Idempotency-Key header
    is the same on every attempt of one delivery. A receiver that de-duplicates on it is declared with the
    option idempotency_key_honoured=true, and only then are timeouts and 5xx retried.
    """

    not_accepted = frozenset({429})
    default_body = {"to": "{to}", "from": "{sender}", "text": "{text}", "reference": "{idempotency_key}"}

    @property
    def idempotent(self) -> bool:
        return self.options.get("idempotency_key_honoured") is True

    def text_of(self, message: OutgoingMessage) -> str:
        return message.text or ""

    async def send(self, message: OutgoingMessage) -> SendResult:
        if not self.endpoint:
            raise Permanent(f"gateway {self.name} has no endpoint")
        key = idempotency_key(message.delivery_id)
        values = {"to": message.destination, "sender": self.sender, "text": self.text_of(message),
                  "idempotency_key": key}
        body = fill(self.options.get("body", self.default_body), values)
        headers = {"Idempotency-Key": key, **{k: str(v) for k, v in (self.options.get("headers") or {}).items()}}
        if self.credentials.get("token"):
            headers["Authorization"] = f"Bearer {self.credentials['token']}"
        id_field = str(self.options.get("message_id_field", "id"))

        async def once() -> SendResult:
            response = await self.post(self.endpoint, headers=headers, json_body=body)
            answer = json_of(response)
            return SendResult("sent", str(answer[id_field]) if answer.get(id_field) else None, response.status_code)

        return await self.send_with_retries(once)
