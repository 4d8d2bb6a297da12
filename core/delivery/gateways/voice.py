"""Voice calls (PHONE/MOBILE): text-to-speech with the code read digit by digit."""
from __future__ import annotations

from xml.sax.saxutils import escape

from core.delivery.gateways import OutgoingMessage, SendResult
from core.delivery.gateways.base import ProviderGateway
from core.delivery.gateways.sms import TWILIO_NOT_ACCEPTED, WebhookSms, twilio_post


def speakable(message: OutgoingMessage) -> str:
    """The voice text with the code spelled out ("1, 2, 3") so a speech engine reads digits, not a number."""
    text = message.text or ""
    return text.replace(message.code, ", ".join(message.code)) if message.code else text


class TwilioVoice(ProviderGateway):
    not_accepted = TWILIO_NOT_ACCEPTED

    async def send(self, message: OutgoingMessage) -> SendResult:
        said = escape(speakable(message))
        twiml = f'<Response><Say>{said}</Say><Pause length="1"/><Say>{said}</Say></Response>'
        return await twilio_post(self, "Calls.json", {"To": message.destination, "From": self.sender,
                                                      "Twiml": twiml})


class WebhookVoice(WebhookSms):
    default_body = {"to": "{to}", "from": "{sender}", "speak": "{text}", "reference": "{idempotency_key}"}

    def text_of(self, message: OutgoingMessage) -> str:
        return speakable(message)
