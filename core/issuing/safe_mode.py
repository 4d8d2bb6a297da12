"""Channel budgets and safe mode: which daily budgets a send counts against, and what a spent one does.

A channel whose daily budget (the service-wide OTP_CHANNEL_BUDGETS, or the action's own) is spent is in safe
mode until local midnight. What that means for a phone channel is the action's safe mode (else OTP_SAFE_MODE):

- ``refuse``: the request is refused (429, reason ``budget``);
- ``email_only``: the phone channels in safe mode are dropped and the code goes by EMAIL instead, when the
  request has an email destination (an EMAIL channel in it, or an EMAIL entity), with a 7004 warning per dropped
  channel; without one the request is refused as in ``refuse``.

The authoritative check stays the atomic bump of every budget in the generate transaction (core.issuing.limits.count):
choosing which channels to drop reads today's counters before it, and only for requests that could be rerouted
(email_only, a budgeted phone channel, an email destination). A request that races past that read at the
boundary is refused by the bump, never sent over budget.
"""
from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, select, tuple_

from core import errors as E
from core.db.models import UsageCounter
from core.enums import Channel, EntityType
from core.errors import Problem
from core.issuing.action_config import OtpConfig, effective_safe_mode
from core.issuing.counters import local_day
from core.issuing.entities import DEFAULT_ORG
from core.issuing.org_settings import org_scope
from core.issuing.requests import ChannelTarget, GenerateRequest
from core.settings import Settings

SERVICE_SCOPE = "budget"


def action_scope(action: str, org_id: int = DEFAULT_ORG) -> str:
    """The counter scope of an action's own budget: per organisation (the service-wide one is not)."""
    return org_scope(org_id, f"{SERVICE_SCOPE}:{action}")


def budgets_for(settings: Settings, config: OtpConfig, channel: Channel) -> list[tuple[str, int]]:
    """(counter scope, daily budget) of every budget a send on channel counts against: service-wide, the action's."""
    found = []
    service = settings.budget_for(channel.value)
    if service is not None:
        found.append((SERVICE_SCOPE, service))
    own = config.budget_for(channel)
    if own is not None:
        found.append((action_scope(config.action.value, config.org_id), own))
    return found


def budget_tz(settings: Settings, scope: str) -> ZoneInfo:
    """Whose day a budget counts in: the service's for the service-wide budget (one day for every organisation),
    the organisation's for an action's own."""
    return settings.service_tz if scope == SERVICE_SCOPE else settings.tz


def trip_detail(scope: str, channel: Channel) -> str:
    """The budget_trip security event's detail: the channel, and the action when the budget was the action's."""
    return channel.value if scope == SERVICE_SCOPE else f"{channel.value}, {scope.partition(':')[2]} budget"


def refusal_message(settings: Settings, config: OtpConfig, scope: str, channel: Channel, budget: int) -> str:
    whose = "" if scope == SERVICE_SCOPE else f" of {config.action.value}"
    message = f"the daily {channel.value} budget{whose} of {budget} is spent: the channel is in safe mode until tomorrow"
    if channel.needs_phone and effective_safe_mode(config, settings) == "email_only":
        message += " (email only, and this request has no email destination)"
    return message


def _email_destination(request: GenerateRequest, config: OtpConfig,
                       targets: list[ChannelTarget]) -> ChannelTarget | None:
    for target in targets:
        if target.channel is Channel.EMAIL:
            return target
    if request.entity.entity_type is EntityType.EMAIL and Channel.EMAIL in config.channels:
        return ChannelTarget(Channel.EMAIL, request.entity.value)
    return None


def spent_channels(db: Engine, settings: Settings, config: OtpConfig, channels: list[Channel],
                   now: datetime) -> set[Channel]:
    """Which of channels have a budget that applies to config's action and is spent today (one indexed read)."""
    budgets = {c: budgets_for(settings, config, c) for c in channels}
    keys = [(scope, c.value, local_day(now, budget_tz(settings, scope))) for c, found in budgets.items()
            for scope, _b in found]
    if not keys:
        return set()
    with db.connect() as conn:
        used = {(r.scope, r.user_key): r.count for r in conn.execute(
            select(UsageCounter.scope, UsageCounter.user_key, UsageCounter.count).where(
                tuple_(UsageCounter.scope, UsageCounter.user_key, UsageCounter.period).in_(keys)))}
    return {c for c, found in budgets.items() if any(used.get((scope, c.value), 0) >= b for scope, b in found)}


def reroute(db: Engine, settings: Settings, config: OtpConfig, request: GenerateRequest,
            targets: list[ChannelTarget], now: datetime) -> tuple[list[ChannelTarget], list[Problem]]:
    """The targets with every phone channel in email-only safe mode replaced by the request's email destination,
    and a 7004 warning per dropped channel for the response.

    Unchanged (and nothing read) unless the action's safe mode is email_only, a phone channel of the request
    has a budget, and the request has an email destination; test numbers are exempt from budgets.
    """
    if effective_safe_mode(config, settings) != "email_only":
        return targets, []
    phones = [t.channel for t in targets if t.channel.needs_phone
              and budgets_for(settings, config, t.channel)]
    email = _email_destination(request, config, targets) if phones else None
    if email is None or settings.is_test_number(request.entity.value):
        return targets, []
    spent = spent_channels(db, settings, config, list(dict.fromkeys(phones)), now)
    if not spent:
        return targets, []
    kept: list[ChannelTarget] = []
    for target in targets:
        if target.channel not in spent:
            kept.append(target)
        elif email not in kept and email not in targets:
            kept.append(email)  # in the place of the first dropped channel
    warnings = [Problem(E.SAFE_MODE_EMAIL, f"{channel.value} is in safe mode (its daily budget is spent): "
                        "the code was sent by EMAIL instead")
                for channel in dict.fromkeys(t.channel for t in targets if t.channel in spent)]
    return kept, warnings
