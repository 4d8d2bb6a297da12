"""What the console's home page shows: service health and the configuration per action."""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select, text, tuple_

from core.db.models import OtpCode, OtpRequest, OutboxMessage, UsageCounter
from core.enums import Channel
from core.issuing.action_config import OtpConfig, effective_safe_mode, format_channel_budgets
from core.issuing.counters import local_day
from core.issuing.safe_mode import SERVICE_SCOPE, action_scope, budget_tz
from core.runtime import Runtime


@dataclass(frozen=True)
class ServiceStatus:
    environment: str
    database: str
    database_ok: bool
    database_error: str | None
    time_zone: str
    daily_limit: int
    default_region: str
    requests_total: int
    live_codes: int
    outbox_messages: int


def service_status(rt: Runtime, *, org_id: int) -> ServiceStatus:
    """The service's state as organisation org_id sees it: its time zone and region, its own counts."""
    org = rt.org(org_id)
    url = rt.db.url
    described = f"{url.get_backend_name()} ({url.database})" if url.get_backend_name() == "sqlite" \
        else f"{url.get_backend_name()} at {url.host or 'local socket'}/{url.database}"
    counts = (0, 0, 0)
    error = None
    try:
        with rt.read_db.connect() as conn:
            conn.execute(text("SELECT 1"))
            counts = (conn.execute(select(func.count()).select_from(OtpRequest)
                                   .where(OtpRequest.org_id == org_id)).scalar_one(),
                      conn.execute(select(func.count()).select_from(OtpCode)
                                   .where(OtpCode.org_id == org_id, OtpCode.state == "active",
                                          OtpCode.expires_at > rt.clock())).scalar_one(),
                      conn.execute(select(func.count()).select_from(OutboxMessage)
                                   .where(OutboxMessage.org_id == org_id)).scalar_one())
    except Exception as exc:  # shown on the page, not raised: the status page must render when storage is down
        error = type(exc).__name__
    return ServiceStatus(rt.settings.env, described, error is None, error, org.timezone,
                         rt.settings.daily_limit, org.region, *counts)


def gateway_table(rt: Runtime, *, org_id: int) -> list[dict[str, str]]:
    """Which gateway sends each channel, and why, as Runtime.choose_gateway (the engine's choice) answers.

    One row per channel for every action without an override of its own, then one per action whose
    answer differs (an override, or an override that is ignored, with the reason).
    """
    rows = []
    for channel in Channel:
        common = rt.choose_gateway(org_id, None, channel)
        rows.append({"channel": channel.value, "action": "every other action", "gateway": common.name,
                     "why": common.why})
        for action in sorted(rt.active_configs(org_id), key=lambda a: a.value):
            own = rt.choose_gateway(org_id, action, channel)
            if own != common:
                rows.append({"channel": channel.value, "action": action.value, "gateway": own.name, "why": own.why})
    if rt.settings.test_numbers:
        test = rt.choose_gateway(org_id, None, Channel.SMS, test_number=True)
        rows.append({"channel": "every channel", "action": "test numbers", "gateway": test.name, "why": test.why})
    return rows


MODE_LABELS = {"refuse": "refused", "email_only": "email only"}


@dataclass(frozen=True)
class SafeModeAlert:
    """A channel whose daily budget (service-wide, or one action's) is spent today: in safe mode until midnight."""
    channel: str
    action: str | None  # None: the service-wide budget
    mode: str  # refuse or email_only (EMAIL itself is always refused: there is no other way to send it)
    sent: int
    budget: int
    # Service-wide alerts: the actions whose own safe mode differs from OTP_SAFE_MODE, with theirs (a label).
    differing: tuple[tuple[str, str], ...] = ()

    def text(self, time_zone: str) -> str:
        whose = f"the daily {self.channel} budget" + (f" of {self.action}" if self.action else "")
        who = f"{self.channel} for {self.action}" if self.action else self.channel
        if self.mode == "email_only":
            what = (f"{who} is email only until midnight ({time_zone}): codes go by EMAIL when the request has an "
                    "email address, other requests are refused.")
        else:
            what = f"{who} is refused until midnight ({time_zone})."
        shown = f"Safe mode: {whose} is spent ({self.sent:,} of {self.budget:,}); {what}"
        if self.differing:
            shown += " Actions with their own safe mode: " + ", ".join(
                f"{action} ({label})" for action, label in self.differing) + "."
        return shown


def safe_mode_channels(rt: Runtime, *, org_id: int) -> list[SafeModeAlert]:
    """Every daily budget spent today that organisation org_id's sends count against: the service-wide ones
    first, then each of its actions', with what its channel does.

    Reads nothing when no budget is configured.
    """
    org = rt.org(org_id)
    configs = sorted(rt.active_configs(org_id).values(), key=lambda c: c.action.value)
    # (counter scope, channel, budget, the action's configuration or None for a service-wide budget)
    budgets = [(SERVICE_SCOPE, channel, amount, None) for channel in Channel
               if (amount := rt.settings.budget_for(channel.value)) is not None]
    budgets += [(action_scope(config.action.value, org_id), channel, amount, config)
                for config in configs for channel, amount in config.channel_budgets]
    if not budgets:
        return []
    now = rt.clock()
    keys = sorted({(b[0], b[1].value, local_day(now, budget_tz(org.settings, b[0]))) for b in budgets})
    with rt.read_db.connect() as conn:
        used = {(r.scope, r.user_key): r.count for r in conn.execute(
            select(UsageCounter.scope, UsageCounter.user_key, UsageCounter.count).where(
                tuple_(UsageCounter.scope, UsageCounter.user_key, UsageCounter.period).in_(keys)))}

    def mode(channel: Channel, config: OtpConfig | None) -> str:
        if not channel.needs_phone:
            return "refuse"  # email has no channel to fall back on
        return effective_safe_mode(config, rt.settings) if config else rt.settings.safe_mode

    alerts = []
    for scope, channel, budget, config in budgets:
        sent = used.get((scope, channel.value), 0)
        if sent < budget:
            continue
        differing = () if config else tuple((c.action.value, MODE_LABELS[mode(channel, c)]) for c in configs
                                            if mode(channel, c) != mode(channel, None))
        alerts.append(SafeModeAlert(channel.value, config.action.value if config else None, mode(channel, config),
                                    sent, budget, differing))
    return alerts


def configuration_table(rt: Runtime, *, org_id: int) -> list[dict]:
    """One row per action of the organisation with every setting, for a read-only table."""
    rows = []
    for action in sorted(rt.active_configs(org_id), key=lambda a: a.value):
        c = rt.config_for(org_id, action)
        rows.append({
            "action": action.value, "code length": c.code_length,
            "alphabet": "letters and digits" if c.alphanumeric else "digits",
            "validity (min)": c.validity_minutes, "channels": ", ".join(sorted(ch.value for ch in c.channels)),
            "policy": " → ".join(ch.value for ch in c.channel_policy),
            "daily cap": c.daily_cap, "validate limit": f"{c.validate_limit} / {c.validate_window_minutes} min",
            "attempts per code": c.attempts_per_code, "failures before lock": c.max_consecutive_failures,
            "lock (min)": c.lock_minutes, "sends per code": c.max_sends_per_code,
            "channel budgets": format_channel_budgets(c.channel_budgets),
            "safe mode": c.safe_mode or f"{rt.settings.safe_mode} (service-wide)",
        })
    return rows
