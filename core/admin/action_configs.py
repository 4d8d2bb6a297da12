"""Saving an action's configuration from the console or the CLI: every problem at once, or the row and its audit."""
from __future__ import annotations

from sqlmodel import Session

from core.admin import audit
from core.clock import utcnow
from core.db.models import ActionConfig, ActionConfigUpdate
from core.delivery.gateway_settings import load_gateway_rows, parse_assignments
from core.enums import Action
from core.issuing.action_config import ConfigRefused, action_config_problems, channel_list, format_channel_budgets
from core.settings import parse_channel_budgets


def update_action_config(session: Session, *, org_id: int, action: Action, update: ActionConfigUpdate, actor: str,
                         service_daily_limit: int, reason: str | None = None) -> ActionConfig:
    """Save an organisation's configuration of an action with an audit row, or nothing: raises ConfigRefused with
    every problem (a gateway choice must name one of the organisation's own gateways).

    Callers acting for a signed-in person check the config.edit permission first (core.admin.staff.require).
    """
    problems = action_config_problems(update, service_daily_limit=service_daily_limit,
                                      gateways=load_gateway_rows(session.connection(), org_id))
    if problems:
        session.rollback()
        raise ConfigRefused(problems)
    row = session.get(ActionConfig, (org_id, action.value))
    if row is None:
        row = ActionConfig(org_id=org_id, action=action.value)
    before = {k: getattr(row, k, None) for k in ActionConfigUpdate.model_fields}
    for key, value in update.model_dump().items():
        setattr(row, key, value)
    row.channels = ",".join(c.value for c in channel_list(update.channels))
    row.channel_policy = ",".join(c.value for c in channel_list(update.channel_policy))
    row.failover = ",".join(c.value for c in channel_list(update.failover))
    row.channel_budgets = format_channel_budgets(parse_channel_budgets(update.channel_budgets)[0])
    row.gateways = ",".join(f"{c.value}={g}" for c, g in parse_assignments(update.gateways).items())
    row.safe_mode = update.safe_mode or None
    row.updated_at = utcnow()
    row.updated_by = actor
    session.add(row)
    changes = {k: {"from": before[k], "to": getattr(row, k)} for k in before if before[k] != getattr(row, k)}
    audit.record(session, org_id=org_id, actor=actor, action="config.update", target=f"config:{action.value}", detail=changes,
                 reason=reason)
    session.commit()
    session.refresh(row)
    return row
