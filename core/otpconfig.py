"""Per-action OTP configuration: the seeded defaults, validation of edits, and reading it on the hot path."""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, insert, select
from sqlmodel import Session

from core import audit
from core.clock import utcnow
from core.config import parse_channel_budgets
from core.enums import Action, Channel
from core.models import ActionConfig, ActionConfigUpdate

MAX_ATTEMPTS_PER_CODE = 10
LIMIT_OVERRIDES = ("destination_limit", "destination_window_minutes", "prefix_limit", "prefix_window_minutes",
                   "ip_limit", "ip_window_minutes", "client_limit")
MAX_CONSECUTIVE_FAILURES = 100
SAFE_MODES = ("refuse", "email_only")


@dataclass(frozen=True)
class OtpConfig:
    """The configuration of one action, as the engine reads it."""
    action: Action
    code_length: int
    alphanumeric: bool
    validity_minutes: int
    channels: frozenset[Channel]
    channel_policy: tuple[Channel, ...]
    daily_cap: int | None
    validate_limit: int
    validate_window_minutes: int
    attempts_per_code: int
    max_consecutive_failures: int
    lock_minutes: int
    max_sends_per_code: int
    gateways: str = ""
    failover: tuple[Channel, ...] = ()
    failover_seconds: int = 30
    # Abuse-limit overrides; None means the service-wide setting.
    destination_limit: int | None = None
    destination_window_minutes: int | None = None
    prefix_limit: int | None = None
    prefix_window_minutes: int | None = None
    ip_limit: int | None = None
    ip_window_minutes: int | None = None
    client_limit: int | None = None
    # The action's own daily budgets per channel (besides OTP_CHANNEL_BUDGETS), and its safe mode (None: the
    # service-wide OTP_SAFE_MODE).
    channel_budgets: tuple[tuple[Channel, int], ...] = ()
    safe_mode: str | None = None

    def budget_for(self, channel: Channel) -> int | None:
        return next((amount for c, amount in self.channel_budgets if c is channel), None)

    @classmethod
    def from_row(cls, row: ActionConfig | dict) -> "OtpConfig":
        get = (lambda k: row[k]) if isinstance(row, dict) else (lambda k: getattr(row, k))
        return cls(
            action=Action(get("action")),
            code_length=get("code_length"), alphanumeric=bool(get("alphanumeric")),
            validity_minutes=get("validity_minutes"),
            channels=frozenset(_channels(get("channels"))), channel_policy=tuple(_channels(get("channel_policy"))),
            daily_cap=get("daily_cap"), validate_limit=get("validate_limit"),
            validate_window_minutes=get("validate_window_minutes"), attempts_per_code=get("attempts_per_code"),
            max_consecutive_failures=get("max_consecutive_failures"), lock_minutes=get("lock_minutes"),
            max_sends_per_code=get("max_sends_per_code"), gateways=get("gateways") or "",
            failover=tuple(_channels(get("failover") or "")), failover_seconds=get("failover_seconds"),
            channel_budgets=tuple(parse_channel_budgets(get("channel_budgets") or "")[0].items()),
            safe_mode=get("safe_mode") or None,
            **{name: get(name) for name in LIMIT_OVERRIDES})


def _channels(text: str) -> list[Channel]:
    found = (Channel.parse(part) for part in text.split(",") if part.strip())
    return [c for c in found if c is not None]


def format_channel_budgets(budgets: "dict[Channel, int] | tuple[tuple[Channel, int], ...]") -> str:
    pairs = budgets.items() if isinstance(budgets, dict) else budgets
    return ",".join(f"{channel.value}={amount}" for channel, amount in pairs)


def effective_safe_mode(config: OtpConfig, settings: object) -> str:
    """What a phone channel in safe mode does for this action: its own choice, else OTP_SAFE_MODE."""
    return config.safe_mode or str(getattr(settings, "safe_mode"))


def seed_action_configs(conn: Connection) -> int:
    """Insert the default configuration for every action that has none; returns how many were added."""
    present = set(conn.execute(select(ActionConfig.action)).scalars())
    missing = [a.value for a in Action if a.value not in present]
    if missing:
        defaults = ActionConfigUpdate().model_dump()
        conn.execute(insert(ActionConfig), [{**defaults, "action": a, "updated_at": utcnow()} for a in missing])
    return len(missing)


def load_action_configs(conn: Connection) -> dict[Action, OtpConfig]:
    rows = conn.execute(select(ActionConfig.__table__)).mappings()
    return {Action(r["action"]): OtpConfig.from_row(dict(r)) for r in rows}


def check_action_config(update: ActionConfigUpdate, *, service_daily_limit: int) -> list[str]:
    """Every problem with a proposed configuration, in words a console user can act on."""
    problems: list[str] = []
    if not 4 <= update.code_length <= 50:
        problems.append("code length must be between 4 and 50")
    if update.validity_minutes < 1:
        problems.append("validity must be at least 1 minute")
    if not 1 <= update.attempts_per_code <= MAX_ATTEMPTS_PER_CODE:
        problems.append(f"attempts per code must be between 1 and {MAX_ATTEMPTS_PER_CODE}")
    if not 1 <= update.max_consecutive_failures <= MAX_CONSECUTIVE_FAILURES:
        problems.append(f"consecutive failures before a lock must be between 1 and {MAX_CONSECUTIVE_FAILURES}")
    if update.lock_minutes < 1:
        problems.append("the lock must last at least 1 minute")
    if update.validate_limit < 1 or update.validate_window_minutes < 1:
        problems.append("the validate limit and its window must be at least 1")
    if update.max_sends_per_code < 1:
        problems.append("sends of one code must be at least 1")
    if update.daily_cap is not None and not 1 <= update.daily_cap < service_daily_limit:
        problems.append(f"a per-action daily cap must be between 1 and {service_daily_limit - 1} (below the service-wide limit)")
    names = [p.strip() for p in update.channels.split(",") if p.strip()]
    if not names:
        problems.append("enable at least one channel")
    for name in LIMIT_OVERRIDES:
        value = getattr(update, name)
        if value is not None and (value < 0 or (name.endswith("_minutes") and value < 1)):
            problems.append(f"{name.replace('_', ' ')} must be {'at least 1' if name.endswith('_minutes') else '0 (off) or more'}")
    problems.extend(parse_channel_budgets(update.channel_budgets)[1])
    if update.safe_mode not in (None, "", *SAFE_MODES):
        problems.append(f"the safe mode must be one of {', '.join(SAFE_MODES)} (or empty for the service-wide one)")
    if update.failover_seconds < 1:
        problems.append("the failover wait must be at least 1 second")
    for name in names + [p.strip() for p in (update.channel_policy + "," + update.failover).split(",") if p.strip()]:
        if Channel.parse(name) is None:
            problems.append(f"unknown channel {name!r}")
    return problems


def update_action_config(session: Session, *, action: Action, update: ActionConfigUpdate, actor: str,
                         service_daily_limit: int, reason: str | None = None) -> ActionConfig:
    """Save a validated configuration with an audit row; raises ValueError listing every problem.

    Callers acting for a signed-in person check the config.edit permission first (core.staff.require).
    """
    problems = check_action_config(update, service_daily_limit=service_daily_limit)
    if problems:
        raise ValueError("; ".join(problems))
    row = session.get(ActionConfig, action.value)
    if row is None:
        row = ActionConfig(action=action.value)
    before = {k: getattr(row, k, None) for k in ActionConfigUpdate.model_fields}
    for key, value in update.model_dump().items():
        setattr(row, key, value)
    row.channels = ",".join(c.value for c in _channels(update.channels))
    row.channel_policy = ",".join(c.value for c in _channels(update.channel_policy))
    row.failover = ",".join(c.value for c in _channels(update.failover))
    row.channel_budgets = format_channel_budgets(parse_channel_budgets(update.channel_budgets)[0])
    row.safe_mode = update.safe_mode or None
    row.updated_at = utcnow()
    row.updated_by = actor
    session.add(row)
    changes = {k: {"from": before[k], "to": getattr(row, k)} for k in before if before[k] != getattr(row, k)}
    audit.record(session, actor=actor, action="config.update", target=f"config:{action.value}", detail=changes,
                 reason=reason)
    session.commit()
    session.refresh(row)
    return row


def effective_limit(config: OtpConfig, settings: object, name: str) -> int:
    """The action's override of an abuse limit, else the service-wide setting of the same name."""
    value = getattr(config, name)
    return int(getattr(settings, name) if value is None else value)
