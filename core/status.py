"""What the console's home page shows: service health and the configuration per action."""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select, text


from core.enums import Channel
from core.models import OtpCode, OtpRequest, OutboxMessage, UsageCounter
from core.ratelimit import local_day
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
    gateways: dict[str, str]
    requests_total: int
    live_codes: int
    outbox_messages: int


def service_status(rt: Runtime) -> ServiceStatus:
    url = rt.db.url
    described = f"{url.get_backend_name()} ({url.database})" if url.get_backend_name() == "sqlite" \
        else f"{url.get_backend_name()} at {url.host or 'local socket'}/{url.database}"
    counts = (0, 0, 0)
    error = None
    try:
        with rt.read_db.connect() as conn:
            conn.execute(text("SELECT 1"))
            counts = (conn.execute(select(func.count()).select_from(OtpRequest)).scalar_one(),
                      conn.execute(select(func.count()).select_from(OtpCode)
                                   .where(OtpCode.state == "active", OtpCode.expires_at > rt.clock())).scalar_one(),
                      conn.execute(select(func.count()).select_from(OutboxMessage)).scalar_one())
    except Exception as exc:  # shown on the page, not raised: the status page must render when storage is down
        error = type(exc).__name__
    gateways = {c.value: (g.name if g is not None else "not configured") for c, g in rt.gateways.items()}
    return ServiceStatus(rt.settings.env, described, error is None, error, rt.settings.timezone,
                         rt.settings.daily_limit, rt.settings.default_region, gateways, *counts)


def safe_mode_channels(rt: Runtime) -> list[tuple[str, int, int]]:
    """Channels whose daily budget is spent today (channel, sent, budget): they refuse until midnight."""
    budgets = {c.value: rt.settings.budget_for(c.value) for c in Channel}
    budgets = {c: b for c, b in budgets.items() if b is not None}
    if not budgets:
        return []
    with rt.read_db.connect() as conn:
        used = dict(conn.execute(select(UsageCounter.user_key, UsageCounter.count).where(
            UsageCounter.scope == "budget", UsageCounter.period == local_day(rt.clock(), rt.settings.tz))).all())
    return [(c, used.get(c, 0), b) for c, b in sorted(budgets.items()) if used.get(c, 0) >= b]


def configuration_table(rt: Runtime) -> list[dict]:
    """One row per action with every setting, for a read-only table."""
    rows = []
    for action in sorted(rt.active_configs(), key=lambda a: a.value):
        c = rt.config_for(action)
        rows.append({
            "action": action.value, "code length": c.code_length,
            "alphabet": "letters and digits" if c.alphanumeric else "digits",
            "validity (min)": c.validity_minutes, "channels": ", ".join(sorted(ch.value for ch in c.channels)),
            "policy": " → ".join(ch.value for ch in c.channel_policy),
            "daily cap": c.daily_cap, "validate limit": f"{c.validate_limit} / {c.validate_window_minutes} min",
            "attempts per code": c.attempts_per_code, "failures before lock": c.max_consecutive_failures,
            "lock (min)": c.lock_minutes, "sends per code": c.max_sends_per_code,
        })
    return rows



