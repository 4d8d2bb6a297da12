"""Dry run: what a generate would do (templates, gateways, limits it would meet), without counting, issuing or sending."""
from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, select

from core import errors as E
from core.db.models import OtpCode, UsageCounter
from core.delivery.messages import render_message, resolve_all
from core.delivery.templates import RenderError, sample_variables
from core.errors import Problem
from core.issuing.channels import plan_channels
from core.issuing.counters import local_day
from core.issuing.limits import Refusal, explain_refusal
from core.issuing.requests import parse_generate
from core.issuing.safe_mode import reroute
from core.runtime import Runtime


@dataclass
class DryRun:
    """What a generate would do, without counting, issuing or sending anything."""
    messages: list  # OutgoingMessage rendered with a sample code
    template_origins: dict[str, str]
    would_resend: bool
    daily_used: int
    daily_limit: int
    problems: list[Problem] = field(default_factory=list)
    # Per channel, the gateway that would send and why (Runtime.choose_gateway, as a real send uses it).
    gateways: dict[str, str] = field(default_factory=dict)


def _dry_run_refusal(refusal: Refusal) -> str:
    if refusal.limit_type == "budget":
        return f"the daily {refusal.channel} budget is spent: the channel is in safe mode and would be refused"
    return f"{refusal.detail}: a generate would be refused ({refusal.limit_type}, {refusal.used} of {refusal.limit})"


def dry_run(rt: Runtime, payload: object, *, org_id: int) -> DryRun:
    """Check and render a generate request of organisation org_id with a sample code, and report the limits it
    would meet."""
    org = rt.org(org_id)
    request = parse_generate(payload, org.settings, org_id=org_id)
    config = rt.config_for(org_id, request.action)
    targets, rerouted = reroute(rt.read_db, org.settings, config, request, plan_channels(request, config), rt.clock())
    templates = resolve_all((t.channel for t in targets), request.action, rt.active_templates(org_id), request)
    now = rt.clock()
    user_key = request.entity.user_key
    with rt.read_db.connect() as conn:
        used = conn.execute(select(func.coalesce(func.max(UsageCounter.count), 0)).where(
            UsageCounter.scope == "daily:*", UsageCounter.user_key == user_key,
            UsageCounter.period == local_day(now, org.tz))).scalar_one()
        live = conn.execute(select(OtpCode.id).where(
            OtpCode.user_key == user_key, OtpCode.action == config.action.value, OtpCode.state == "active",
            OtpCode.expires_at > now)).scalar()
        # The limits a real generate would meet, from the engine's own counters (the caller's IP and API client
        # are not known here).
        refusals = [r for r in explain_refusal(conn, org.settings, config, entity=request.entity, targets=targets,
                                               now=now) if r.refuses == "generate"]
    variables = sample_variables(action=config.action.value, code_length=config.code_length,
                                 validity_minutes=config.validity_minutes, brand=org.brand)
    problems: list[Problem] = list(rerouted)  # 7004: a phone channel in email-only safe mode goes by EMAIL
    problems += [Problem(E.RATE_LIMITED, text) for text in dict.fromkeys(_dry_run_refusal(r) for r in refusals)]
    messages = []
    for index, target in enumerate(targets):
        try:
            messages.append(render_message(templates[target.channel], delivery_id=-(index + 1),
                                           destination=target.destination,
                                           code=str(variables["validation_code"]), variables=variables,
                                           org_id=org_id))
        except RenderError as exc:
            problems.append(Problem(E.TEMPLATE_PROBLEM, f"{target.channel.value}: {exc}"))
    test_number = rt.settings.is_test_number(request.entity.value)
    chosen = {t.channel: rt.choose_gateway(org_id, config.action, t.channel, test_number=test_number) for t in targets}
    return DryRun(messages, {c.value: f"{t.origin}: {t.reason}" for c, t in templates.items()},
                  live is not None, int(used), rt.settings.daily_limit, problems,
                  {c.value: f"{g.name} ({g.why})" for c, g in chosen.items()})
