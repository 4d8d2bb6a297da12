"""The counters a request bumps: one definition used to count, to give back, and to explain a refusal.

A generate counts against the user's daily limits, the limits on what it sends (one destination, a channel's
daily budget) and the limits on who asks (API client, client IP, number prefix); a validate against the
validate window. Each is a Counter (scope, key, period, limit, reason). The engine counts them with one atomic
upsert each (core.issuing.counters.bump), gives back the ones a send that reached no one spent (a conditional decrement,
never below 0), and the console's "why was this user refused" reads the very same counters, so the three cannot
disagree about which limit applies, to which row, or until when.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, bindparam, select, tuple_, update

from core.db.models import FailureCounter, OtpCode, UsageCounter
from core.enums import Channel, EntityType
from core.issuing.action_config import OtpConfig, effective_limit
from core.issuing.counters import bump, local_day, window_start
from core.issuing.entities import NormalisedEntity
from core.issuing.org_settings import org_scope
from core.issuing.requests import ChannelTarget
from core.issuing.safe_mode import budget_tz, budgets_for, refusal_message, trip_detail
from core.settings import Settings

_usage = UsageCounter.__table__
_GIVE_BACK = (update(_usage).where(_usage.c.scope == bindparam("p_scope"), _usage.c.user_key == bindparam("p_user"),
                                   _usage.c.period == bindparam("p_period"), _usage.c.count > 0)
              .values(count=_usage.c.count - 1))


@dataclass(slots=True)  # not frozen: a generate builds several per request, and frozen slows every __init__
class Counter:
    """One limit a request counts against: the usage_counter row (scope, key, period) and what refusing says.

    target / channel name the send a destination / budget counter belongs to, so that a failed send gives back
    its own counts and nothing else.
    """
    reason: str  # the 429's reason and the limit_event's limit_type
    scope: str
    key: str
    period: str
    limit: int  # 0 or less: refused outright (a channel budget of 0 closes the channel)
    message: str
    until: datetime  # when the period ends and the count lifts by itself
    event: tuple[str, str] | None = None  # the security event a refusal records (kind, detail)
    trip: str | None = None  # the budget_trip detail recorded by the send that spends the limit
    target: ChannelTarget | None = None
    channel: Channel | None = None

    def retry_after(self, now: datetime) -> int:
        return max(1, math.ceil((self.until - now).total_seconds()))


class Refused(Exception):
    """A limit refuses the request: raised inside its transaction, so that nothing it counted stays counted.

    event, when given, is a (kind, detail) security event to record with the refusal.
    """

    def __init__(self, limit_type: str, message: str, retry_after: int,
                 event: tuple[str, str] | None = None) -> None:
        super().__init__(message)
        self.limit_type, self.message, self.retry_after, self.event = limit_type, message, retry_after, event


@dataclass(frozen=True)
class Refusal:
    """One limit refusing a user now: which (limit_type), for what (refuses: generate or validate), how full, until when."""
    limit_type: str
    action: str | None  # None: the limit spans every action (the daily limit, a service-wide budget)
    refuses: str  # "generate" or "validate"
    detail: str
    used: int
    limit: int
    lifts_at: datetime | None
    channel: str | None = None  # the channel of a destination or budget limit


def suited_targets(config: OtpConfig, entity: NormalisedEntity) -> list[ChannelTarget]:
    """A send to entity on every channel config enables that suits it: what "could this user get a code" asks."""
    is_email = entity.entity_type is EntityType.EMAIL
    return [ChannelTarget(c, entity.value) for c in config.channels if (c is Channel.EMAIL) == is_email]


def _window(now: datetime, minutes: int) -> tuple[str, datetime]:
    start = window_start(now, minutes)
    return str(start), datetime.fromtimestamp(start + minutes * 60, timezone.utc)


def _next_day(now: datetime, settings: Settings) -> datetime:
    return _local_midnight_after(local_day(now, settings.tz), settings.tz)


@lru_cache(maxsize=16)
def _local_midnight_after(day: str, tz: ZoneInfo) -> datetime:
    """When the local day after day begins, in UTC (computed in the zone, so DST days are 23 or 25 hours)."""
    midnight = datetime.combine(date.fromisoformat(day) + timedelta(days=1), time.min, tzinfo=tz)
    return midnight.astimezone(timezone.utc)


def user_counters(settings: Settings, config: OtpConfig, *, user_key: str, now: datetime) -> list[Counter]:
    """The daily limits of one user: service-wide across actions, and the action's own cap."""
    day, tomorrow, action = local_day(now, settings.tz), _next_day(now, settings), config.action.value
    found = [Counter("daily", "daily:*", user_key, day, settings.daily_limit,
                     f"daily limit of {settings.daily_limit} OTP requests reached for this user", tomorrow)]
    if config.daily_cap is not None:
        found.append(Counter("action_daily", org_scope(config.org_id, f"daily:{action}"), user_key, day,
                             config.daily_cap,
                             f"daily limit of {config.daily_cap} OTP requests for {action} reached for this user",
                             tomorrow))
    return found


def send_counters(settings: Settings, config: OtpConfig, targets: Iterable[ChannelTarget], *,
                  now: datetime) -> list[Counter]:
    """The limits on what is sent: each destination per window, each channel's daily budgets (once a request).

    Counters shared between requests come in one canonical (sorted) order, so that on PostgreSQL two
    transactions never wait for each other's rows in a cycle, whichever order the channels came in.
    """
    targets = set(targets)
    found = []
    destination_limit = effective_limit(config, settings, "destination_limit")
    if destination_limit:
        minutes = effective_limit(config, settings, "destination_window_minutes")
        period, until = _window(now, minutes)
        for target in sorted(targets, key=lambda t: (t.channel.value, t.destination)):
            found.append(Counter("destination", f"dest:{target.channel.value}", target.destination, period,
                                 destination_limit, f"at most {destination_limit} codes per {minutes} minutes "
                                 "to one destination", until, target=target))
    # An action's budget is the organisation's: its day; the service-wide budget spans every organisation: the
    # service's day (OTP_TIMEZONE), the same for all of them.
    days = {tz: (local_day(now, tz), _local_midnight_after(local_day(now, tz), tz))
            for tz in {settings.tz, settings.service_tz}}
    for channel in sorted({t.channel for t in targets}, key=lambda c: c.value):
        for scope, budget in budgets_for(settings, config, channel):
            day, tomorrow = days[budget_tz(settings, scope)]
            found.append(Counter("budget", scope, channel.value, day, budget,
                                 refusal_message(settings, config, scope, channel, budget), tomorrow,
                                 trip=trip_detail(scope, channel), channel=channel))
    return found


def requester_counters(settings: Settings, config: OtpConfig, *, targets: Iterable[ChannelTarget],
                       entity: NormalisedEntity, client_id: int | None, client_ip: str | None,
                       now: datetime) -> list[Counter]:
    """The limits on who asks (API client, client IP, number prefix): counted once per generate.

    client_ip is whatever address the caller decided to count (None: no per-address limit for this request).
    """
    found = []
    client_limit = effective_limit(config, settings, "client_limit")
    if client_limit and client_id is not None:
        period, until = _window(now, 1)
        found.append(Counter("client", "client", str(client_id), period, client_limit,
                             f"at most {client_limit} generates per minute for this API client", until))
    ip_limit = effective_limit(config, settings, "ip_limit")
    if ip_limit and client_ip:
        minutes = effective_limit(config, settings, "ip_window_minutes")
        period, until = _window(now, minutes)
        found.append(Counter("ip", "ip", client_ip, period, ip_limit,
                             f"at most {ip_limit} generates per {minutes} minutes from one address", until))
    prefix_limit = effective_limit(config, settings, "prefix_limit")
    if prefix_limit:
        minutes = effective_limit(config, settings, "prefix_window_minutes")
        period, until = _window(now, minutes)
        prefixes = {t.destination[:-4] for t in targets if t.channel.needs_phone}
        if entity.entity_type is EntityType.MOBILE:
            prefixes.add(entity.value[:-4])
        for prefix in sorted(prefixes):
            found.append(Counter("prefix", "prefix", prefix, period, prefix_limit,
                                 f"too many codes to numbers starting {prefix} in {minutes} minutes", until,
                                 event=("prefix_block", prefix)))
    return found


def generate_counters(settings: Settings, config: OtpConfig, *, entity: NormalisedEntity,
                      targets: Sequence[ChannelTarget], client_id: int | None, client_ip: str | None,
                      now: datetime) -> list[Counter]:
    """Every counter a generate bumps, in the order they are counted (the first full one names the refusal)."""
    return [*user_counters(settings, config, user_key=entity.user_key, now=now),
            *send_counters(settings, config, targets, now=now),
            *requester_counters(settings, config, targets=targets, entity=entity, client_id=client_id,
                                client_ip=client_ip, now=now)]


def validate_counter(config: OtpConfig, *, user_key: str, now: datetime) -> Counter:
    """The validate window of one user and action."""
    period, until = _window(now, config.validate_window_minutes)
    return Counter("validate", f"validate:{config.action.value}", user_key, period, config.validate_limit,
                   f"at most {config.validate_limit} validations per {config.validate_window_minutes} minutes", until)


def count(conn: Connection, counters: Sequence[Counter], *, now: datetime) -> list[tuple[Counter, int]]:
    """Bump every counter (one atomic upsert each); the new counts, or Refused at the first full one.

    Raised inside the caller's transaction, Refused rolls back whatever was bumped before it.
    """
    counted = []
    for counter in counters:
        got = bump(conn, scope=counter.scope, user_key=counter.key, period=counter.period,
                   limit=counter.limit) if counter.limit > 0 else None
        if got is None:
            raise Refused(counter.reason, counter.message, counter.retry_after(now), counter.event)
        counted.append((counter, got))
    return counted


def give_back(conn: Connection, counters: Iterable[Counter]) -> None:
    """Take back one count from each counter (its own period, never below 0): a send that reached no one."""
    rows = [{"p_scope": c.scope, "p_user": c.key, "p_period": c.period} for c in counters if c.limit > 0]
    if rows:
        conn.execute(_GIVE_BACK, rows)


def refusing(conn: Connection, counters: Sequence[Counter]) -> list[tuple[Counter, int]]:
    """The counters that are full now (a bump would be refused), with their counts, in counting order."""
    keys = [(c.scope, c.key, c.period) for c in counters]
    used: dict[tuple[str, str, str], int] = {}
    if keys:
        used = {(r.scope, r.user_key, r.period): r.count for r in conn.execute(
            select(_usage.c.scope, _usage.c.user_key, _usage.c.period, _usage.c.count).where(
                tuple_(_usage.c.scope, _usage.c.user_key, _usage.c.period).in_(keys)))}
    return [(c, used.get((c.scope, c.key, c.period), 0)) for c in counters
            if c.limit <= 0 or used.get((c.scope, c.key, c.period), 0) >= c.limit]


def _as_refusal(counter: Counter, used: int, config: OtpConfig, refuses: str) -> Refusal:
    spans_actions = counter.scope in ("daily:*", "budget", "ip", "client", "prefix") \
        or counter.scope.startswith("dest:")
    channel = counter.target.channel if counter.target is not None else counter.channel
    return Refusal(counter.reason, None if spans_actions else config.action.value, refuses,
                   counter.message, used, counter.limit, counter.until, channel.value if channel else None)


def explain_refusal(conn: Connection, settings: Settings, config: OtpConfig, *, entity: NormalisedEntity,
                    targets: Sequence[ChannelTarget], client_id: int | None = None, client_ip: str | None = None,
                    now: datetime) -> list[Refusal]:
    """Why a generate (to targets) and a validate of entity for config's action would be refused now, if they would.

    The generate part reads the counters generate_counters defines, in the engine's order (so the first generate
    refusal is the reason a generate gets), then the live code's send cap, checked after them. The validate part
    is the validate window, then the consecutive-failure lock. Test numbers are exempt from every limit.
    """
    if settings.is_test_number(entity.value):
        return []
    user_key, action = entity.user_key, config.action.value
    found = [_as_refusal(c, used, config, "generate") for c, used in refusing(conn, generate_counters(
        settings, config, entity=entity, targets=targets, client_id=client_id, client_ip=client_ip, now=now))]
    live = conn.execute(select(OtpCode.send_count, OtpCode.expires_at).where(
        OtpCode.user_key == user_key, OtpCode.action == action, OtpCode.state == "active",
        OtpCode.expires_at > now)).first()
    if live is not None and live.send_count >= config.max_sends_per_code:
        found.append(Refusal("code_sends", action, "generate", f"this code was already sent {live.send_count} times; "
                             "a new one can be requested when it expires", live.send_count,
                             config.max_sends_per_code, live.expires_at))
    found += [_as_refusal(c, used, config, "validate")
              for c, used in refusing(conn, [validate_counter(config, user_key=user_key, now=now)])]
    lock = conn.execute(select(FailureCounter.locked_until, FailureCounter.consecutive).where(
        FailureCounter.user_key == user_key, FailureCounter.action == action)).first()
    if lock is not None and lock.locked_until is not None and lock.locked_until > now:
        found.append(Refusal("lock", action, "validate", f"locked after {lock.consecutive} consecutive failed "
                             "validations", lock.consecutive, config.max_consecutive_failures, lock.locked_until))
    return found
