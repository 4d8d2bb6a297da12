"""Email over SMTP: multipart text and HTML, STARTTLS or implicit TLS, optional authentication."""
from __future__ import annotations

import asyncio
import html
import re
import socket
import ssl
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import make_msgid

import aiosmtplib

from core.delivery.gateways import OutgoingMessage, SendResult
from core.delivery.gateways.base import ProviderGateway, idempotency_key
from core.delivery.gateways.retry import Permanent, Transient

_TAGS = re.compile(r"<[^>]+>")
SECURITY_MODES = ("starttls", "ssl", "none")
# The EHLO name, looked up once at import: aiosmtplib would otherwise look it up per connection in the
# default thread pool, the one PostgreSQL transactions run in.
_EHLO_NAME = socket.getfqdn()


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
    """endpoint is host:port; options.security is starttls (default), ssl or none.

    The conversation runs on the event loop (aiosmtplib), never in a worker thread: on PostgreSQL the
    default thread pool runs the database transactions, and a stalled mail server must not hold one of its
    threads. timeout_seconds bounds the whole conversation; when it passes, or when the send is cancelled,
    the connection is closed at once, so a message whose DATA had not ended is never delivered later.
    """

    def _connection(self) -> aiosmtplib.SMTP:
        host, _, port_text = self.endpoint.rpartition(":") if ":" in self.endpoint else (self.endpoint, "", "")
        security = self.options.get("security", "starttls")
        if security not in SECURITY_MODES:  # never fall back to plain text on a typo
            raise Permanent(f"unknown SMTP security {security!r} (use one of {', '.join(SECURITY_MODES)})")
        port = int(port_text) if port_text else (465 if security == "ssl" else 587)
        context = ssl.create_default_context()
        if self.options.get("tls_verify") is False:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return aiosmtplib.SMTP(hostname=host, port=port, timeout=self.timeout, use_tls=security == "ssl",
                               start_tls=security == "starttls", tls_context=context,
                               local_hostname=str(self.options.get("local_hostname") or _EHLO_NAME))

    async def _deliver(self, email: EmailMessage) -> None:
        smtp = self._connection()
        try:
            async with asyncio.timeout(self.timeout):
                await smtp.connect()
                if self.credentials.get("username"):
                    await smtp.login(self.credentials["username"], self.credentials.get("password", ""))
                await smtp.send_message(email)
            try:  # the message is accepted: a slow goodbye must not turn it into a failure
                async with asyncio.timeout(1.0):
                    await smtp.quit()
            except (TimeoutError, aiosmtplib.SMTPException):
                pass
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise Permanent(f"SMTP authentication failed ({exc.code})") from None
        except aiosmtplib.SMTPNotSupported as exc:
            raise Permanent(f"SMTP server does not support a required feature: {exc}") from None
        except aiosmtplib.SMTPRecipientsRefused as exc:
            # A 4yz reply means the server did not take the message (RFC 5321 4.2.1): it may be retried.
            if all(400 <= r.code < 500 for r in exc.recipients):
                raise Transient(f"SMTP server deferred the recipient ({exc.recipients[0].code})", unsent=True) from None
            raise Permanent("SMTP server refused the recipient") from None
        # Before SMTPResponseException: a bad greeting is both. Nothing was sent before the greeting.
        except aiosmtplib.SMTPConnectError as exc:
            raise Transient(f"cannot connect to SMTP server: {type(exc).__name__}", unsent=True) from None
        except aiosmtplib.SMTPResponseException as exc:
            if 400 <= exc.code < 500:
                raise Transient(f"SMTP temporary failure ({exc.code})", unsent=True) from None
            raise Permanent(f"SMTP refused the message ({exc.code})") from None
        # After the greeting, a timeout or a dropped connection may come after the end of DATA: not retried.
        except TimeoutError:
            raise Transient(f"SMTP timed out after {self.timeout:g} s") from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise Transient(f"SMTP connection failed: {type(exc).__name__}") from None
        finally:
            smtp.close()  # on success, failure or cancellation alike: nothing is left to finish a send later

    async def send(self, message: OutgoingMessage) -> SendResult:
        email = build_email(message, sender=self.sender, sender_name=str(self.options.get("sender_name", "")))

        async def once() -> SendResult:
            await self._deliver(email)
            return SendResult("sent", email["Message-ID"])

        # A Message-ID travels with every attempt, but SMTP servers do not deduplicate on it: only what the
        # server provably did not take (no connection, a 4yz reply) is retried.
        return await self.send_with_retries(once)
