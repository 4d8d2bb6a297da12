"""SMS over HTTP: a Twilio-compatible Messages API and a generic JSON webhook."""
from __future__ import annotations

from core.gateways import OutgoingMessage, SendResult
from core.gateways.base import ProviderGateway, fill, idempotency_key
from core.gateways.http import json_of, post
from core.gateways.retry import Permanent, with_retries

TWILIO_API = "https://api.twilio.com"


class TwilioSms(ProviderGateway):
    async def send(self, message: OutgoingMessage) -> SendResult:
        return await twilio_post(self, "Messages.json", {"To": message.destination, "From": self.sender,
                                                         "Body": message.text or ""}, message.delivery_id)


async def twilio_post(gateway: ProviderGateway, resource: str, data: dict, delivery_id: int) -> SendResult:
    """POST a form to a Twilio-style account resource with its idempotency token; the sid is the message id."""
    sid = gateway.secret("account_sid")
    token = gateway.secret("auth_token")
    url = f"{(gateway.endpoint or TWILIO_API).rstrip('/')}/2010-04-01/Accounts/{sid}/{resource}"
    if gateway.options.get("status_callback"):
        data = {**data, "StatusCallback": gateway.options["status_callback"]}
    headers = {"I-Twilio-Idempotency-Token": idempotency_key(delivery_id)}

    async def once() -> SendResult:
        response = await post(url, timeout=gateway.timeout, headers=headers, data=data, auth=(sid, token))
        answer = json_of(response)
        if not answer.get("sid"):
            raise Permanent("provider answer has no sid", response.status_code)
        return SendResult("sent", str(answer["sid"]), response.status_code)

    return await with_retries(once, gateway.policy)


class WebhookSms(ProviderGateway):
    """POSTs a configurable JSON body to a configurable URL; text and code travel only in the body."""

    default_body = {"to": "{to}", "from": "{sender}", "text": "{text}", "reference": "{idempotency_key}"}

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
            response = await post(self.endpoint, timeout=self.timeout, headers=headers, json_body=body)  # type: ignore[arg-type]
            answer = json_of(response)
            return SendResult("sent", str(answer[id_field]) if answer.get(id_field) else None, response.status_code)

        return await with_retries(once, self.policy)
