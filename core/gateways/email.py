"""Email over SMTP: multipart text and HTML, STARTTLS or implicit TLS, optional authentication."""
from __future__ import annotations

import asyncio
import html
import re
import smtplib
import socket
import ssl
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import make_msgid

from core.gateways import OutgoingMessage, SendResult
from core.gateways.base import ProviderGateway, idempotency_key
from core.gateways.retry import Permanent, Transient, with_retries

_TAGS = re.compile(r"<[^>]+>")
SECURITY_MODES = ("starttls", "ssl", "none")


def build_email(message: OutgoingMessage, *, sender: str, sender_name: str) -> EmailMessage:
    """Both parts always: a plain-text part for every client, an HTML part for those that prefer it."""
    email = EmailMessage()
    email["From"] = str(Address(sender_name, addr_spec=sender)) if sender_name else sender
    email["To"] = message.destination
    email["Subject"] = message.subject or ""
    email["Message-ID"] = make_msgid(idstring=idempotency_key(message.delivery_id))
    body = message.body or ""
    if message.is_html:
        text, markup = html.unescape(_TAGS.sub("", body)), body
    else:
        text, markup = body, f"<p>{html.escape(body)}</p>"
    email.set_content(text)
    email.add_alternative(markup, subtype="html")
    return email


class SmtpEmail(ProviderGateway):
    """endpoint is host:port; options.security is starttls (default), ssl or none."""

    def _deliver(self, email: EmailMessage) -> None:
        host, _, port_text = self.endpoint.rpartition(":") if ":" in self.endpoint else (self.endpoint, "", "")
        security = self.options.get("security", "starttls")
        if security not in SECURITY_MODES:  # never fall back to plain text on a typo
            raise Permanent(f"unknown SMTP security {security!r} (use one of {', '.join(SECURITY_MODES)})")
        port = int(port_text) if port_text else (465 if security == "ssl" else 587)
        context = ssl.create_default_context()
        if self.options.get("tls_verify") is False:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        try:
            smtp_class = smtplib.SMTP_SSL if security == "ssl" else smtplib.SMTP
            kwargs = {"context": context} if security == "ssl" else {}
            with smtp_class(host, port, timeout=self.timeout, **kwargs) as smtp:
                if security == "starttls":
                    smtp.starttls(context=context)
                if self.credentials.get("username"):
                    smtp.login(self.credentials["username"], self.credentials.get("password", ""))
                smtp.send_message(email)
        except smtplib.SMTPAuthenticationError as exc:
            raise Permanent(f"SMTP authentication failed ({exc.smtp_code})") from None
        except smtplib.SMTPNotSupportedError as exc:
            raise Permanent(f"SMTP server does not support a required feature: {exc}") from None
        except smtplib.SMTPRecipientsRefused:
            raise Permanent("SMTP server refused the recipient") from None
        # Before SMTPResponseException: SMTPConnectError is one of its subclasses.
        except (ConnectionRefusedError, smtplib.SMTPConnectError) as exc:
            raise Transient(f"cannot connect to SMTP server: {type(exc).__name__}", unsent=True) from None
        except smtplib.SMTPResponseException as exc:
            if 400 <= exc.smtp_code < 500:
                raise Transient(f"SMTP temporary failure ({exc.smtp_code})") from None
            raise Permanent(f"SMTP refused the message ({exc.smtp_code})") from None
        except (socket.timeout, TimeoutError, smtplib.SMTPServerDisconnected, OSError) as exc:
            raise Transient(f"SMTP connection failed: {type(exc).__name__}") from None

    async def send(self, message: OutgoingMessage) -> SendResult:
        email = build_email(message, sender=self.sender, sender_name=str(self.options.get("sender_name", "")))

        async def once() -> SendResult:
            # smtplib blocks: it runs in a worker thread so other requests are not held up.
            await asyncio.to_thread(self._deliver, email)
            return SendResult("sent", email["Message-ID"])

        # A Message-ID travels with every attempt, but SMTP servers do not deduplicate on it: only a refused
        # connection is retried.
        return await with_retries(once, self.policy, idempotent=False)
