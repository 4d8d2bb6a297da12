"""The SQLModel tables, with separate input and output shapes where a secret must not leak."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Index, LargeBinary, Text, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from core.clock import utcnow

# Every datetime column holds aware UTC (SQLModel stores it as UTC, PostgreSQL as timestamptz).


class OrganisationBase(SQLModel):
    # Lower-case [a-z0-9-]: what the CLI's --org and the console name it by (core.admin.organisations checks it).
    slug: str = Field(max_length=40, unique=True)
    name: str = Field(max_length=120)
    # NULL: the service setting (OTP_BRAND, OTP_TIMEZONE, OTP_DEFAULT_REGION), so the default organisation
    # (id 1, migration 0014) behaves exactly as the service did before organisations.
    brand: str | None = Field(default=None, max_length=100)
    timezone: str | None = Field(default=None, max_length=64)
    phone_region: str | None = Field(default=None, max_length=2)


class Organisation(OrganisationBase, table=True):
    """A tenant: its API clients, configuration, templates, gateways, customers and events are its own."""
    __tablename__ = "organisation"
    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow)


class OrganisationUpdate(SQLModel):
    """What a platform admin may change after creation; the slug stays (the CLI's --org and receipt URLs name the
    organisation by it). Only the fields set are changed; brand, timezone or phone_region None or empty: the
    service setting again. No length limits here: core.admin.organisations reports them by field, in words."""
    name: str | None = None
    brand: str | None = None
    timezone: str | None = None
    phone_region: str | None = None


class OrganisationPublic(OrganisationBase):
    id: int
    created_at: datetime


def org_field(**kwargs):  # type: ignore[no-untyped-def]
    """org_id on a per-organisation table: required, with no default in the database either (migration 0014
    drops the backfill's), so a write that forgets the organisation fails instead of landing in org 1."""
    return Field(foreign_key="organisation.id", **kwargs)


class ActionConfigBase(SQLModel):
    code_length: int = 6
    alphanumeric: bool = False
    validity_minutes: int = 10
    # Comma-separated Channel names enabled for the action.
    channels: str = "SMS,EMAIL,PHONE,WHATSAPP,ZALO"
    # Used when a request names no channels: the first channel here that suits the entity and is enabled.
    channel_policy: str = "EMAIL,SMS"
    daily_cap: int | None = None
    validate_limit: int = 5
    validate_window_minutes: int = 15
    attempts_per_code: int = 5
    max_consecutive_failures: int = 25
    lock_minutes: int = 60
    max_sends_per_code: int = 5
    # Which gateway sends each channel for this action, e.g. "SMS=twilio-main,EMAIL=smtp"; a channel not
    # named uses its default gateway.
    gateways: str = ""
    # Failover plan used when a request names no channels, e.g. "WHATSAPP,SMS": the next channel gets the
    # same code when a send fails or no 'delivered' receipt arrives within failover_seconds.
    failover: str = ""
    failover_seconds: int = 30
    # Abuse limits for this action; None uses the service-wide setting (OTP_DESTINATION_LIMIT and so on).
    destination_limit: int | None = None
    destination_window_minutes: int | None = None
    prefix_limit: int | None = None
    prefix_window_minutes: int | None = None
    ip_limit: int | None = None
    ip_window_minutes: int | None = None
    client_limit: int | None = None
    # Daily send budgets of this action per channel, e.g. "SMS=2000,PHONE=100", counted in addition to the
    # service-wide OTP_CHANNEL_BUDGETS; empty: none of its own.
    channel_budgets: str = ""
    # What a phone channel in safe mode does for this action: "refuse" or "email_only"; None: OTP_SAFE_MODE.
    safe_mode: str | None = Field(default=None, max_length=10)


class ActionConfig(ActionConfigBase, table=True):
    __tablename__ = "action_config"
    org_id: int = org_field(primary_key=True)
    action: str = Field(primary_key=True, max_length=40)
    updated_at: datetime = Field(default_factory=utcnow)
    updated_by: str | None = Field(default=None, max_length=120)


class ActionConfigUpdate(ActionConfigBase):
    pass


class OtpCode(SQLModel, table=True):
    __tablename__ = "otp_code"
    __table_args__ = (
        # At most one live code per user and action: re-generation re-sends it instead.
        Index("uq_otp_code_active", "org_id", "user_key", "action", unique=True,
              sqlite_where=text("state = 'active'"), postgresql_where=text("state = 'active'")),
        Index("ix_otp_code_user_action_state", "user_key", "action", "state", "id"),
        Index("ix_otp_code_dash", "org_id", "created_at", "action", "state", "used_at"),  # dashboards (0004, 0014)
    )
    id: int | None = Field(default=None, primary_key=True)
    org_id: int = org_field()
    user_key: str = Field(max_length=340)
    entity_type: str = Field(max_length=10)
    action: str = Field(max_length=40)
    code_hmac: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    # AES-GCM copy for re-sending; wiped (NULL) on use, burn or expiry.
    code_enc: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    state: str = Field(default="active", max_length=10)  # active, used, burned, expired
    failed_attempts: int = 0
    send_count: int = 1
    used_at: datetime | None = None


class OtpRequest(SQLModel, table=True):
    """One accepted generate call; its id is the createdId of a newly issued code."""
    __tablename__ = "otp_request"
    # The dashboards' index leads with created_at, so it serves every created_at range too (0008).
    __table_args__ = (Index("ix_otp_request_dash", "org_id", "created_at", "action", "kind"),)  # dashboards (0014)
    id: int | None = Field(default=None, primary_key=True)
    org_id: int = org_field()
    created_at: datetime = Field(default_factory=utcnow)
    code_id: int = Field(foreign_key="otp_code.id", index=True)
    user_key: str = Field(max_length=340)
    action: str = Field(max_length=40)
    kind: str = Field(max_length=10)  # issued, resent
    client_id: int | None = None
    # The request body's own templates (JSON of core.issuing.requests.TEMPLATE_FIELDS), kept only when a failover
    # plan may send a later step after the request has returned (0009). Templates only: never the code.
    body_templates: str | None = Field(default=None, sa_type=Text)


class Delivery(SQLModel, table=True):
    __tablename__ = "delivery"
    # Every index is paid for by every generate (each is one more B-tree page written): see migration 0008.
    __table_args__ = (
        Index("ix_delivery_dash", "org_id", "created_at", "channel", "gateway", "status"),  # dashboards (0014)
        Index("ix_delivery_destination", "destination"),  # the timeline's search by recipient
        # The failover poller's due deliveries: only rows awaiting a receipt are in it (0008).
        Index("ix_delivery_due", "receipt_deadline", sqlite_where=text("receipt_deadline IS NOT NULL"),
              postgresql_where=text("receipt_deadline IS NOT NULL")),
        # A receipt's delivery (core.services.receipts.delivery_for_receipt); outbox rows have no message id (0012).
        Index("ix_delivery_receipt", "gateway", "provider_message_id",
              sqlite_where=text("provider_message_id IS NOT NULL"),
              postgresql_where=text("provider_message_id IS NOT NULL")),
    )
    id: int | None = Field(default=None, primary_key=True)
    org_id: int = org_field()
    request_id: int = Field(foreign_key="otp_request.id", index=True)
    code_id: int = Field(index=True)
    channel: str = Field(max_length=10)
    destination: str = Field(max_length=320)
    gateway: str = Field(max_length=40)
    status: str = Field(default="queued", max_length=10)  # queued, sent, delivered, failed
    provider_message_id: str | None = Field(default=None, max_length=200)
    http_status: int | None = None
    error: str | None = Field(default=None, max_length=1000)
    latency_ms: float | None = None
    attempts: int = 0
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    # Failover: the step of the action's plan this delivery is, and until when a receipt is awaited.
    failover_step: int = 0
    receipt_deadline: datetime | None = None


class OutboxMessage(SQLModel, table=True):
    """What the development outbox gateway 'sent': the only place a readable code is kept."""
    __tablename__ = "outbox_message"
    id: int | None = Field(default=None, primary_key=True)
    org_id: int = org_field()
    created_at: datetime = Field(default_factory=utcnow, index=True)
    delivery_id: int | None = None
    channel: str = Field(max_length=10)
    recipient: str = Field(max_length=320, index=True)
    subject: str | None = Field(default=None, max_length=1000)
    body: str
    is_html: bool = False


class UsageCounter(SQLModel, table=True):
    """Counts per user and period, bumped by one atomic upsert: the daily limits and the validate window.

    scope is 'daily:*' (service-wide, all actions), 'daily:<ACTION>' (a per-action cap) or
    'validate:<ACTION>'; period is the local day (YYYY-MM-DD) or the window start in epoch seconds.
    """
    __tablename__ = "usage_counter"
    __table_args__ = (Index("ix_usage_counter_period", "scope", "period", "count"),)  # dashboards (0004)
    scope: str = Field(primary_key=True, max_length=60)
    user_key: str = Field(primary_key=True, max_length=340)
    period: str = Field(primary_key=True, max_length=20)
    count: int = 0


class FailureCounter(SQLModel, table=True):
    """Consecutive failed validations per user and action, across codes; a new code does not reset it."""
    __tablename__ = "failure_counter"
    user_key: str = Field(primary_key=True, max_length=340)
    action: str = Field(primary_key=True, max_length=40)
    consecutive: int = 0
    locked_until: datetime | None = None


class LimitEvent(SQLModel, table=True):
    """A request refused by a limit, kept for the rate-limit dashboard (never with a code)."""
    __tablename__ = "limit_event"
    __table_args__ = (  # dashboards (0004)
        Index("ix_limit_event_dash", "org_id", "created_at", "limit_type", "action"),  # 0014
        Index("ix_limit_event_user", "user_key", "created_at"),
    )
    id: int | None = Field(default=None, primary_key=True)
    org_id: int = org_field()
    created_at: datetime = Field(default_factory=utcnow, index=True)
    user_key: str = Field(max_length=340)
    action: str = Field(max_length=40)
    limit_type: str = Field(max_length=20)  # daily, action_daily, code_sends, validate, lock
    client_id: int | None = None


class OtpValidation(SQLModel, table=True):
    """One validate call and its outcome."""
    __tablename__ = "otp_validation"
    __table_args__ = (  # dashboards (0004)
        Index("ix_otp_validation_dash", "org_id", "created_at", "action", "outcome"),  # 0014
        Index("ix_otp_validation_code_id", "code_id"),
    )
    id: int | None = Field(default=None, primary_key=True)
    org_id: int = org_field()
    created_at: datetime = Field(default_factory=utcnow, index=True)
    user_key: str = Field(max_length=340)
    action: str = Field(max_length=40)
    code_id: int | None = None
    outcome: str = Field(max_length=14)  # ok, wrong, burned, expired, none, used_elsewhere, replayed


class TemplateVersionBase(SQLModel):
    action: str = Field(max_length=40)
    channel: str = Field(max_length=10)
    text: str | None = None  # SMS and voice text
    subject: str | None = Field(default=None, max_length=500)
    body: str | None = None  # email body
    is_html: bool = False
    whatsapp_name: str | None = Field(default=None, max_length=200)
    whatsapp_language: str | None = Field(default=None, max_length=20)
    zalo_template_id: str | None = Field(default=None, max_length=100)


class TemplateVersion(TemplateVersionBase, table=True):
    """An immutable template version; the engine uses only the active approved one per action and channel."""
    __tablename__ = "template_version"
    __table_args__ = (UniqueConstraint("org_id", "action", "channel", "version"),)
    id: int | None = Field(default=None, primary_key=True)
    org_id: int = org_field()
    version: int
    status: str = Field(default="draft", max_length=10)  # draft, pending, approved, rejected
    is_active: bool = False
    author: str = Field(max_length=120)
    reviewer: str | None = Field(default=None, max_length=120)
    reason: str | None = Field(default=None, max_length=1000)
    created_at: datetime = Field(default_factory=utcnow)
    reviewed_at: datetime | None = None


class ApiClientBase(SQLModel):
    name: str = Field(max_length=120)
    permissions: str = "otp:write"
    # Life of the OAuth access tokens this client gets from /v3/oauth/token/generate (core.admin.tokens).
    token_ttl_seconds: int = 300
    # Where this client's end users' addresses come from (core.net.end_user_address); None: the client is a
    # backend, its own address is no customer's, and no per-address limit is counted for it.
    end_user_ip_header: str | None = Field(default=None, max_length=64)


class ApiClient(ApiClientBase, table=True):
    __tablename__ = "api_client"
    id: int | None = Field(default=None, primary_key=True)
    org_id: int = org_field()  # the organisation every call of this client acts in
    key: str = Field(max_length=64, unique=True)
    secret_hash: str = Field(max_length=255)
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None


class ApiClientCreate(ApiClientBase):
    pass


class ApiClientPublic(ApiClientBase):
    id: int
    org_id: int
    key: str
    created_at: datetime
    revoked_at: datetime | None


class StaffBase(SQLModel):
    username: str = Field(max_length=60, unique=True)
    role: str = Field(default="viewer", max_length=10)  # viewer, editor, approver, admin


class Staff(StaffBase, table=True):
    __tablename__ = "staff"
    id: int | None = Field(default=None, primary_key=True)
    password_hash: str = Field(max_length=255)
    created_at: datetime = Field(default_factory=utcnow)
    disabled_at: datetime | None = None
    last_login_at: datetime | None = None
    # Creates organisations and assigns staff; an admin in every organisation (migration 0014: existing admins).
    platform_admin: bool = False


class StaffMembership(SQLModel, table=True):
    """A staff member's role in one organisation (viewer, editor, approver, admin)."""
    __tablename__ = "staff_membership"
    staff_id: int = Field(foreign_key="staff.id", primary_key=True)
    org_id: int = Field(foreign_key="organisation.id", primary_key=True)
    role: str = Field(max_length=10)


class StaffCreate(StaffBase):
    password: str


class StaffPublic(StaffBase):
    id: int
    created_at: datetime
    disabled_at: datetime | None
    last_login_at: datetime | None
    platform_admin: bool = False


class AuditLog(SQLModel, table=True):
    """Who changed what, when and why; written in the same transaction as the change itself."""
    __tablename__ = "audit_log"
    id: int | None = Field(default=None, primary_key=True)
    # The organisation the change was made in; NULL for platform actions (creating an organisation, assigning staff).
    org_id: int | None = Field(default=None, foreign_key="organisation.id")
    at: datetime = Field(default_factory=utcnow, index=True)
    actor: str = Field(max_length=60)
    action: str = Field(max_length=60)  # e.g. template.approve, config.update, staff.create
    target: str = Field(max_length=200)
    detail: str | None = None
    reason: str | None = Field(default=None, max_length=1000)


class ConsoleSessionRow(SQLModel, table=True):
    """A signed-in console session: the SHA-256 of the token in the browser's cookie, never the token itself."""
    __tablename__ = "console_session"
    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(max_length=64, unique=True)
    staff_id: int = Field(foreign_key="staff.id")
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime


class TemplateVersionCreate(TemplateVersionBase):
    pass


class TemplateVersionPublic(TemplateVersionBase):
    id: int
    version: int
    status: str
    is_active: bool
    author: str
    reviewer: str | None
    reason: str | None
    created_at: datetime
    reviewed_at: datetime | None


class GatewayConfigBase(SQLModel):
    name: str = Field(max_length=60)  # unique within its organisation
    channel: str = Field(max_length=10)
    # outbox, smtp, twilio_sms, webhook_sms, twilio_voice, webhook_voice, meta_whatsapp, zalo_zns
    provider: str = Field(max_length=20)
    endpoint: str = Field(default="", max_length=500)
    sender: str = Field(default="", max_length=200)
    # Non-secret provider settings as JSON (ports, TLS mode, header and body templates, timeouts).
    options: str = "{}"
    is_default: bool = False
    enabled: bool = True


class GatewayConfig(GatewayConfigBase, table=True):
    """A configured provider for one channel; its credentials are stored only AES-GCM encrypted."""
    __tablename__ = "gateway_config"
    __table_args__ = (UniqueConstraint("org_id", "name"),)
    id: int | None = Field(default=None, primary_key=True)
    org_id: int = org_field()
    credentials_enc: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class GatewayConfigPublic(GatewayConfigBase):
    id: int
    org_id: int
    credentials_hint: str = ""  # e.g. "AC12…89": never the whole secret


class DeliveryReceipt(SQLModel, table=True):
    """A provider's status callback; the unique fingerprint turns a replayed callback away."""
    __tablename__ = "delivery_receipt"
    id: int | None = Field(default=None, primary_key=True)
    org_id: int = org_field()
    delivery_id: int = Field(index=True)
    gateway: str = Field(max_length=60)
    provider_status: str = Field(max_length=40)
    status: str = Field(max_length=10)
    fingerprint: str = Field(max_length=64, unique=True)
    received_at: datetime = Field(default_factory=utcnow)


# --- dashboard rollups (core/reporting/rollups.py) ------------------------------------------------------------------
# Counts per 15-minute UTC bucket (epoch seconds // 900), so any time zone's local days, :30 and :45 offsets
# included, are whole runs of buckets. '*' in action or channel is the row summed over all of them. h0..h201
# count the values in each bin of core.histogram (latency in ms, time to validate in s); NULL means none.

from sqlalchemy import BigInteger  # noqa: E402

from core.histogram import BINS as _HISTOGRAM_BINS  # noqa: E402


class RollupState(SQLModel, table=True):
    """How far the rollups have read one source table: rows with larger ids are new."""
    __tablename__ = "rollup_state"
    source: str = Field(primary_key=True, max_length=40)
    high_water: int = 0
    # PostgreSQL only: rows with ids in (high_water - window, high_water] when read, so that a transaction
    # that took its id early but committed late is noticed by the count changing.
    window_rows: int = 0
    refreshed_at: datetime = Field(default_factory=utcnow)


class UsageRollup(SQLModel, table=True):
    """Generate requests, validations and the cohort of codes issued, per bucket, channel and action.

    A request (validation, code) counts under a channel when it (its code) had a delivery on that channel.
    """
    __tablename__ = "usage_rollup"
    __table_args__ = (Index("ix_usage_rollup_bucket", "bucket"), {"sqlite_with_rowid": False})
    org_id: int = org_field(primary_key=True)
    channel: str = Field(primary_key=True, max_length=10)
    # The run of quarter hours the row sums (core.reporting.rollups.SPANS): 1, 4 (an hour) or 96 (a UTC day).
    span: int = Field(default=1, primary_key=True, sa_column_kwargs={"server_default": "1"})
    bucket: int = Field(primary_key=True)  # the first quarter hour (epoch seconds // 900) of the row's span
    action: str = Field(primary_key=True, max_length=40)
    requests: int = 0
    issued: int = 0
    resent: int = 0
    validations: int = 0
    validated: int = 0
    codes: int = 0  # codes first issued in the bucket
    codes_used: int = 0  # of those, used by now
    ttv_max_us: int | None = Field(default=None, sa_type=BigInteger)  # the longest time to validate, in µs
    # h0..h201: the used codes per time-to-validate bin.
    __annotations__.update({f"h{_i}": int | None for _i in range(_HISTOGRAM_BINS)})
    vars().update({f"h{_i}": None for _i in range(_HISTOGRAM_BINS)})


class DeliveryRollup(SQLModel, table=True):
    """Deliveries per bucket (of their creation), action, channel and gateway, by current status."""
    __tablename__ = "delivery_rollup"
    __table_args__ = (
        Index("ix_delivery_rollup_bucket", "bucket"),
        # Buckets still holding queued deliveries: their status changes without a new row.
        Index("ix_delivery_rollup_queued", "bucket", sqlite_where=text("queued > 0"),
              postgresql_where=text("queued > 0")),
        {"sqlite_with_rowid": False},
    )
    org_id: int = org_field(primary_key=True)
    action: str = Field(primary_key=True, max_length=40)
    # The run of quarter hours the row sums (core.reporting.rollups.SPANS): 1, 4 (an hour) or 96 (a UTC day).
    span: int = Field(default=1, primary_key=True, sa_column_kwargs={"server_default": "1"})
    bucket: int = Field(primary_key=True)
    channel: str = Field(primary_key=True, max_length=10)
    gateway: str = Field(primary_key=True, max_length=40)
    messages: int = 0
    queued: int = 0
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    latency_max_ms: float | None = None
    # h0..h201: the deliveries with a latency, per latency bin.
    __annotations__.update({f"h{_i}": int | None for _i in range(_HISTOGRAM_BINS)})
    vars().update({f"h{_i}": None for _i in range(_HISTOGRAM_BINS)})


class FailureRollup(SQLModel, table=True):
    """Failed deliveries per bucket, action, channel, gateway and error text."""
    __tablename__ = "failure_rollup"
    __table_args__ = (Index("ix_failure_rollup_action_bucket", "org_id", "action", "span", "bucket"),
                      Index("ix_failure_rollup_bucket", "bucket"))
    id: int | None = Field(default=None, primary_key=True)
    org_id: int = org_field()
    action: str = Field(max_length=40)
    span: int = Field(default=1, sa_column_kwargs={"server_default": "1"})  # as in the other rollups
    bucket: int
    channel: str = Field(max_length=10)
    gateway: str = Field(max_length=40)
    error: str = Field(max_length=1000)
    failures: int = 0


class SecurityEvent(SQLModel, table=True):
    """Something an attacker does: a replayed or burned code, a lock, a prefix block, a budget trip. Never a code."""
    __tablename__ = "security_event"
    # One organisation's events of a range, for its limits page (0015); created_at's own index serves all of them.
    __table_args__ = (Index("ix_security_event_org", "org_id", "created_at"),)
    id: int | None = Field(default=None, primary_key=True)
    org_id: int = org_field()
    created_at: datetime = Field(default_factory=utcnow, index=True)
    kind: str = Field(max_length=20)  # replayed_code, burned_code, lock, prefix_block, budget_trip
    user_key: str = Field(default="", max_length=340)
    action: str = Field(default="", max_length=40)
    detail: str | None = Field(default=None, max_length=500)
