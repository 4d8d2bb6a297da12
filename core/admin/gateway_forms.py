"""The gateway form: which fields each provider needs, what is stored for them, and saving all or nothing."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from sqlmodel import Session

from core.admin.gateways import (GatewayRefused, find_gateway, gateway_problems, open_credentials, secret_hint,
                                 write_gateway)
from core.admin.staff import StaffIdentity, require
from core.crypto import SecretBox
from core.db.models import GatewayConfigBase, GatewayConfigPublic
from core.delivery.gateway_settings import OUTBOX, PROVIDERS
from core.delivery.gateways.email import SECURITY_MODES
from core.enums import Channel


@dataclass(frozen=True)
class FormField:
    """One input of a provider's form. key says where it is kept: endpoint, endpoint.host/.port (SMTP's
    host:port), sender, options.<name> or credentials.<name> (stored encrypted, shown back only as a hint)."""
    key: str
    label: str
    kind: str = "text"  # text, secret, choice, json
    choices: tuple[str, ...] = ()
    required: bool = False
    help: str = ""

    @property
    def is_secret(self) -> bool:
        return self.key.startswith("credentials.")


_API_BASE = FormField("endpoint", "API base URL (empty: the provider's public API)")
_TWILIO = (FormField("credentials.account_sid", "Account SID", "secret", required=True),
           FormField("credentials.auth_token", "Auth token", "secret", required=True,
                     help="also checks the signature of Twilio's status callbacks"),
           FormField("sender", "From number (E.164)", required=True), _API_BASE,
           FormField("options.status_callback", "Status callback URL (optional)"))
_WEBHOOK = (FormField("endpoint", "URL the message is POSTed to", required=True),
            FormField("options.headers", "Headers (JSON object)", "json"),
            FormField("options.body", "Body template (JSON; {to} {text} {sender} {idempotency_key})", "json"),
            FormField("credentials.token", "Bearer token (optional)", "secret"),
            FormField("credentials.webhook_secret", "Receipt signing secret (optional)", "secret"),
            FormField("sender", "Sender (optional)"),
            FormField("options.message_id_field", "Field of the answer holding the message id (default: id)"))
PROVIDER_FIELDS: dict[str, tuple[FormField, ...]] = {
    "twilio_sms": _TWILIO,
    "twilio_voice": _TWILIO,
    "meta_whatsapp": (FormField("sender", "Phone-number id", required=True),
                      FormField("credentials.access_token", "Access token", "secret", required=True),
                      FormField("credentials.webhook_secret", "App secret (checks receipts)", "secret"), _API_BASE),
    "smtp": (FormField("endpoint.host", "SMTP host", required=True),
             FormField("endpoint.port", "Port (empty: 587, or 465 with ssl)"),
             FormField("options.security", "Security", "choice", SECURITY_MODES),
             FormField("credentials.username", "Username (optional)", "secret"),
             FormField("credentials.password", "Password", "secret"),
             FormField("sender", "Sender address", required=True),
             FormField("options.sender_name", "Sender name (optional)")),
    "webhook_sms": _WEBHOOK,
    "webhook_voice": _WEBHOOK,
    "zalo_zns": (FormField("credentials.access_token", "Access token", "secret", required=True),
                 FormField("credentials.webhook_secret", "Receipt signing secret (optional)", "secret"), _API_BASE),
    OUTBOX: (),
}
# Options the form shows as their own fields; the rest (timeouts, retries) stay in the advanced JSON.
_FIELD_OPTIONS = {f.key.split(".", 1)[1] for fields in PROVIDER_FIELDS.values() for f in fields
                  if f.key.startswith("options.")}


def providers_for(channel: Channel) -> list[str]:
    return [OUTBOX, *[name for name, (_cls, served) in PROVIDERS.items() if served is channel]]


@dataclass
class GatewayForm:
    """What a staff member typed: secrets left empty keep the stored ones."""
    name: str
    channel: str
    provider: str
    values: dict[str, str] = field(default_factory=dict)  # by FormField.key
    advanced_options: str = "{}"  # the other options as JSON (timeout_seconds, attempts, ...)
    is_default: bool = True
    enabled: bool = True
    editing: str | None = None  # the stored gateway being edited; None creates a new one
    change_provider: bool = False


@dataclass(frozen=True)
class StoredGateway:
    """A stored gateway as its form shows it: plain values, secrets only as hints."""
    form: GatewayForm
    hints: dict[str, str]  # by FormField.key of each stored secret


def stored_form(session: Session, box: SecretBox, name: str, *, org_id: int) -> StoredGateway | None:
    """The organisation's stored gateway as its form shows it (secrets as hints); None when it has none of that name."""
    row = find_gateway(session, org_id=org_id, name=name)
    if row is None:
        return None
    options = json.loads(row.options or "{}")
    values: dict[str, str] = {"endpoint": row.endpoint, "sender": row.sender}
    host, _, port = row.endpoint.rpartition(":") if ":" in row.endpoint else (row.endpoint, "", "")
    values.update({"endpoint.host": host, "endpoint.port": port})
    for key in _FIELD_OPTIONS:
        if key in options:
            value = options[key]
            values[f"options.{key}"] = value if isinstance(value, str) else json.dumps(value)
    advanced = {k: v for k, v in options.items() if k not in _FIELD_OPTIONS}
    hints = {f"credentials.{k}": secret_hint(v) for k, v in open_credentials(box, row).items()}
    return StoredGateway(GatewayForm(row.name, row.channel, row.provider, values, json.dumps(advanced),
                                     row.is_default, row.enabled, editing=row.name), hints)


def _read(form: GatewayForm, problems: dict[str, list[str]]) -> tuple[GatewayConfigBase, dict[str, str]]:
    """The stored shape of the form, and the secrets typed in it; problems gathered by field."""
    def add(key: str, message: str) -> None:
        problems.setdefault(key, []).append(message)

    fields = PROVIDER_FIELDS.get(form.provider, ())
    values = {k: (v or "").strip() for k, v in form.values.items()}
    try:
        options = json.loads(form.advanced_options or "{}")
        if not isinstance(options, dict):
            raise ValueError
    except ValueError as exc:
        add("options", "advanced options must be a JSON object" + (f" ({exc.msg})" if hasattr(exc, "msg") else ""))
        options = {}
    options = {k: v for k, v in options.items() if k not in _FIELD_OPTIONS}
    for f in fields:
        value = values.get(f.key, "")
        if f.required and not f.is_secret and not value:
            add(f.key, f"{f.label} is required")
        if f.key.startswith("options.") and value:
            if f.kind == "json":
                try:
                    parsed = json.loads(value)
                except ValueError as exc:
                    add(f.key, f"{f.label}: not valid JSON ({getattr(exc, 'msg', exc)})")
                    continue
                if f.key == "options.headers" and not (isinstance(parsed, dict)
                                                       and all(isinstance(v, str) for v in parsed.values())):
                    add(f.key, "headers must be a JSON object of strings")
                    continue
                options[f.key.split(".", 1)[1]] = parsed
            else:
                options[f.key.split(".", 1)[1]] = value
    endpoint = values.get("endpoint", "")
    if form.provider == "smtp":
        port = values.get("endpoint.port", "")
        if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            add("endpoint.port", "the port must be a number from 1 to 65535")
        endpoint = values.get("endpoint.host", "") + (f":{port}" if port else "")
    elif endpoint and not endpoint.startswith(("http://", "https://")):
        add("endpoint", "the URL must start with https:// (or http://)")
    secrets = {f.key.split(".", 1)[1]: values[f.key] for f in fields if f.is_secret and values.get(f.key)}
    config = GatewayConfigBase(name=form.name.strip(), channel=form.channel, provider=form.provider,
                               endpoint=endpoint, sender=values.get("sender", "") if any(
                                   f.key == "sender" for f in fields) else "",
                               options=json.dumps(options), is_default=form.is_default, enabled=form.enabled)
    return config, secrets


def save_gateway_form(session: Session, box: SecretBox, *, actor: StaffIdentity, org_id: int, form: GatewayForm,
                      reason: str) -> GatewayConfigPublic:
    """Save the whole form or nothing: raises GatewayRefused with every problem next to its field.

    Secrets typed replace the stored ones; secrets left empty keep them. A new gateway may not take an
    existing name, and an existing one changes provider or channel only with change_provider.
    """
    require(session, actor, "config.edit", org_id)
    problems: dict[str, list[str]] = {}
    config, typed = _read(form, problems)
    for key, found in gateway_problems(config).items():
        problems.setdefault(key, []).extend(found)
    row = find_gateway(session, org_id=org_id, name=config.name)
    if form.editing is None and row is not None:
        problems.setdefault("name", []).append(f"a gateway named {config.name} exists: pick it above to edit it")
    if form.editing is not None and (row is None or form.editing != config.name):
        problems.setdefault("name", []).append(f"the gateway {form.editing} no longer exists or was renamed")
    if row is not None and form.editing is not None and not form.change_provider \
            and (row.provider, row.channel) != (config.provider, config.channel):
        problems.setdefault("provider", []).append(
            f"{row.name} is a {row.provider} gateway for {row.channel}: tick 'Change the provider' to make it "
            f"{config.provider} for {config.channel}")
    stored = open_credentials(box, row) if row is not None else {}
    wanted = {f.key.split(".", 1)[1] for f in PROVIDER_FIELDS.get(config.provider, ()) if f.is_secret}
    # Keep the stored secrets this provider uses (a changed provider drops the others), then the typed ones.
    credentials = {**{k: v for k, v in stored.items() if k in wanted}, **typed}
    for f in PROVIDER_FIELDS.get(config.provider, ()):
        if f.is_secret and f.required and not credentials.get(f.key.split(".", 1)[1]):
            problems.setdefault(f.key, []).append(f"{f.label} is required")
    if not reason.strip():
        problems.setdefault("reason", []).append("say why you make this change: it is kept in the audit log")
    if problems:
        raise GatewayRefused(problems)
    return write_gateway(session, box, actor=actor, org_id=org_id, row=row, config=config, credentials=credentials,
                  reason=reason.strip())
