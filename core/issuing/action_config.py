"""Per-action OTP configuration: the seeded defaults, validation of edits, and reading it on the hot path."""
from __future__ import annotations

from collections.abc import Mapping

from pydantic import ConfigDict
from sqlalchemy import Connection, insert, select

from core.clock import utcnow
from core.db.models import ActionConfig, ActionConfigBase, ActionConfigUpdate, Organisation
from core.delivery.gateway_settings import GatewayRow
from core.enums import Action, Channel
from core.issuing.entities import DEFAULT_ORG
from core.settings import parse_channel_budgets

MAX_ATTEMPTS_PER_CODE = 10
LIMIT_OVERRIDES = ("destination_limit", "destination_window_minutes", "prefix_limit", "prefix_window_minutes",
                   "ip_limit", "ip_window_minutes", "client_limit")
MAX_CONSECUTIVE_FAILURES = 100
SAFE_MODES = ("refuse", "email_only")


class OtpConfig(ActionConfigBase):
    """The configuration of one action as the engine reads it: the stored fields (ActionConfigBase, their one
    definition) with the channel lists and budgets parsed. Immutable: a change is a new row and a reload."""
    model_config = ConfigDict(frozen=True)

    org_id: int = DEFAULT_ORG  # the organisation whose configuration this is
    action: Action
    channels: frozenset[Channel]  # type: ignore[assignment]
    channel_policy: tuple[Channel, ...]  # type: ignore[assignment]
    failover: tuple[Channel, ...] = ()  # type: ignore[assignment]
    channel_budgets: tuple[tuple[Channel, int], ...] = ()  # type: ignore[assignment]

    def budget_for(self, channel: Channel) -> int | None:
        return next((amount for c, amount in self.channel_budgets if c is channel), None)

    @classmethod
    def from_row(cls, row: ActionConfig | dict) -> "OtpConfig":
        """The stored row (ActionConfigBase's fields, the one list of them) as the engine reads it."""
        get = (lambda k: row[k]) if isinstance(row, dict) else (lambda k: getattr(row, k))
        values = {name: get(name) for name in ActionConfigBase.model_fields}
        try:
            org_id = get("org_id")
        except (KeyError, AttributeError):
            org_id = None
        if org_id is None:  # a row made in memory (a test's, a form's) without one
            org_id = DEFAULT_ORG
        return cls(
            org_id=org_id, action=Action(get("action")), alphanumeric=bool(values.pop("alphanumeric")),
            channels=frozenset(channel_list(values.pop("channels"))),
            channel_policy=tuple(channel_list(values.pop("channel_policy"))),
            failover=tuple(channel_list(values.pop("failover") or "")), gateways=values.pop("gateways") or "",
            channel_budgets=tuple(parse_channel_budgets(values.pop("channel_budgets") or "")[0].items()),
            safe_mode=values.pop("safe_mode") or None, **values)

    def to_update(self) -> ActionConfigUpdate:
        """This configuration in its stored form: what an edit starts from."""
        values = {name: getattr(self, name) for name in ActionConfigBase.model_fields}
        values.update(channels=",".join(c.value for c in Channel if c in self.channels),
                      channel_policy=",".join(c.value for c in self.channel_policy),
                      failover=",".join(c.value for c in self.failover),
                      channel_budgets=format_channel_budgets(self.channel_budgets))
        return ActionConfigUpdate(**values)


def channel_list(text: str) -> list[Channel]:
    found = (Channel.parse(part) for part in text.split(",") if part.strip())
    return [c for c in found if c is not None]


def format_channel_budgets(budgets: "dict[Channel, int] | tuple[tuple[Channel, int], ...]") -> str:
    pairs = budgets.items() if isinstance(budgets, dict) else budgets
    return ",".join(f"{channel.value}={amount}" for channel, amount in pairs)


def effective_safe_mode(config: OtpConfig, settings: object) -> str:
    """What a phone channel in safe mode does for this action: its own choice, else OTP_SAFE_MODE."""
    return config.safe_mode or str(getattr(settings, "safe_mode"))


def seed_default_organisation(conn: Connection) -> bool:
    """Make organisation 1 ("default") when it is missing (migration 0014 makes it; a test may empty every table);
    True when it was made."""
    if conn.execute(select(Organisation.id).where(Organisation.id == DEFAULT_ORG)).first() is not None:
        return False
    conn.execute(insert(Organisation).values(id=DEFAULT_ORG, slug="default", name="Default", created_at=utcnow()))
    if conn.dialect.name == "postgresql":  # an explicit id does not move the sequence: the next one must not be 1
        conn.exec_driver_sql("SELECT setval(pg_get_serial_sequence('organisation', 'id'), "
                             "(SELECT max(id) FROM organisation))")
    return True


def seed_action_configs(conn: Connection, org_id: int | None = None) -> int:
    """Insert the default configuration for every action that has none, in org_id or (None) every organisation;
    returns how many were added."""
    orgs = [org_id] if org_id is not None else list(conn.execute(select(Organisation.id)).scalars())
    query = select(ActionConfig.org_id, ActionConfig.action)
    if org_id is not None:
        query = query.where(ActionConfig.org_id == org_id)
    present = {(row[0], row[1]) for row in conn.execute(query)}
    missing = [(org, a.value) for org in orgs for a in Action if (org, a.value) not in present]
    if missing:
        defaults = ActionConfigUpdate().model_dump()
        conn.execute(insert(ActionConfig), [{**defaults, "org_id": org, "action": a, "updated_at": utcnow()}
                                            for org, a in missing])
    return len(missing)


def load_action_configs(conn: Connection) -> dict[int, dict[Action, OtpConfig]]:
    """Every organisation's configuration: {org_id: {action: config}}."""
    found: dict[int, dict[Action, OtpConfig]] = {}
    for r in conn.execute(select(ActionConfig.__table__)).mappings():
        found.setdefault(r["org_id"], {})[Action(r["action"])] = OtpConfig.from_row(dict(r))
    return found


class ConfigRefused(ValueError):
    """A configuration that was not saved, with every problem by the field it belongs to."""

    def __init__(self, problems: dict[str, list[str]]) -> None:
        super().__init__("; ".join(p for found in problems.values() for p in found))
        self.problems = problems


def _gateway_problems(text: str, gateways: Mapping[str, GatewayRow]) -> list[str]:
    """Each per-action gateway choice must name an existing, enabled gateway that sends that channel."""
    problems = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, gateway = (x.strip() for x in part.partition("="))
        channel = Channel.parse(name)
        if not sep or channel is None or not gateway:
            problems.append(f"gateway choice {part!r}: write CHANNEL=gateway name, e.g. SMS=twilio-main")
            continue
        row = gateways.get(gateway)
        if row is None:
            known = ", ".join(sorted(n for n, r in gateways.items() if r.channel is channel)) or "none configured"
            problems.append(f"there is no gateway named {gateway!r} (gateways for {channel.value}: {known})")
        elif not row.enabled:
            problems.append(f"the gateway {gateway!r} is disabled")
        elif row.channel is not channel:
            problems.append(f"the gateway {gateway!r} sends {row.channel.value}, not {channel.value}")
    return problems


def parse_limit_overrides(texts: Mapping[str, str]) -> tuple[dict[str, int | None], dict[str, list[str]]]:
    """Abuse-limit overrides as typed ("" → None, the service-wide setting), and a problem for each that is
    not a whole number (that one is left None)."""
    values: dict[str, int | None] = {}
    problems: dict[str, list[str]] = {}
    for name in LIMIT_OVERRIDES:
        text = (texts.get(name) or "").strip()
        if text and not (text.isascii() and text.isdigit()):
            problems[name] = [f"{name.replace('_', ' ')} must be a whole number, or empty for the service-wide setting"]
        values[name] = int(text) if text and name not in problems else None
    return values, problems


def action_config_problems(update: ActionConfigUpdate, *, service_daily_limit: int,
                           gateways: Mapping[str, GatewayRow]) -> dict[str, list[str]]:
    """Every problem with a proposed configuration, by field name, in words a console user can act on.

    The one validation of a configuration: the console shows its answer next to each field, and
    update_action_config (console, CLI, tests) refuses to save while it has any.
    """
    problems: dict[str, list[str]] = {}

    def add(name: str, message: str) -> None:
        problems.setdefault(name, []).append(message)

    if not 4 <= update.code_length <= 50:
        add("code_length", "code length must be between 4 and 50")
    if update.validity_minutes < 1:
        add("validity_minutes", "validity must be at least 1 minute")
    if not 1 <= update.attempts_per_code <= MAX_ATTEMPTS_PER_CODE:
        add("attempts_per_code", f"attempts per code must be between 1 and {MAX_ATTEMPTS_PER_CODE}")
    if not 1 <= update.max_consecutive_failures <= MAX_CONSECUTIVE_FAILURES:
        add("max_consecutive_failures",
            f"consecutive failures before a lock must be between 1 and {MAX_CONSECUTIVE_FAILURES}")
    if update.lock_minutes < 1:
        add("lock_minutes", "the lock must last at least 1 minute")
    if update.validate_limit < 1:
        add("validate_limit", "the validate limit must be at least 1")
    if update.validate_window_minutes < 1:
        add("validate_window_minutes", "the validate window must be at least 1 minute")
    if update.max_sends_per_code < 1:
        add("max_sends_per_code", "sends of one code must be at least 1")
    if update.daily_cap is not None and not 1 <= update.daily_cap < service_daily_limit:
        add("daily_cap",
            f"a per-action daily cap must be between 1 and {service_daily_limit - 1} (below the service-wide limit)")
    names = [p.strip() for p in update.channels.split(",") if p.strip()]
    if not names:
        add("channels", "enable at least one channel")
    for name in LIMIT_OVERRIDES:
        value = getattr(update, name)
        if value is not None and (value < 0 or (name.endswith("_minutes") and value < 1)):
            add(name, f"{name.replace('_', ' ')} must be "
                      f"{'at least 1' if name.endswith('_minutes') else '0 (off) or more'}")
    for problem in parse_channel_budgets(update.channel_budgets)[1]:
        add("channel_budgets", problem)
    if update.safe_mode not in (None, "", *SAFE_MODES):
        add("safe_mode", f"the safe mode must be one of {', '.join(SAFE_MODES)} (or empty for the service-wide one)")
    if update.failover_seconds < 1:
        add("failover_seconds", "the failover wait must be at least 1 second")
    for field_name in ("channels", "channel_policy", "failover"):
        for name in (p.strip() for p in getattr(update, field_name).split(",") if p.strip()):
            if Channel.parse(name) is None:
                add(field_name, f"unknown channel {name!r}")
    for problem in _gateway_problems(update.gateways, gateways):
        add("gateways", problem)
    return problems


def check_action_config(update: ActionConfigUpdate, *, service_daily_limit: int,
                        gateways: Mapping[str, GatewayRow] | None = None) -> list[str]:
    """action_config_problems as one list (gateways: the configured ones; None checks against none)."""
    found = action_config_problems(update, service_daily_limit=service_daily_limit, gateways=gateways or {})
    return [p for problems in found.values() for p in problems]


def effective_limit(config: OtpConfig, settings: object, name: str) -> int:
    """The action's override of an abuse limit, else the service-wide setting of the same name."""
    value = getattr(config, name)
    return int(getattr(settings, name) if value is None else value)
