"""Failover: the same code over the action's next channel when a send fails now, or is not delivered in time."""
from __future__ import annotations

import json
import logging

from sqlalchemy import Connection, select, update

from core.db.models import Delivery, OtpCode, OtpRequest
from core.delivery.messages import ResolvedTemplate, resolve_all
from core.enums import Action, Channel, EntityType
from core.errors import OtpError
from core.issuing.action_config import OtpConfig
from core.issuing.channels import failover_plan
from core.issuing.entities import NormalisedEntity, split_user_key
from core.issuing.limits import Refused, send_counters
from core.issuing.requests import ChannelTarget, GenerateRequest
from core.runtime import Runtime
from core.services.refusals import count_request, record_refusal
from core.services.sending import DeliveryReport, Send, deliver, gateway_for, give_back_counts, insert_delivery

log = logging.getLogger(__name__)


async def fail_over(rt: Runtime, config: OtpConfig, *, request_id: int, code_id: int, code: str, user_key: str,
                     plan: list[ChannelTarget], templates: dict[Channel, ResolvedTemplate], from_step: int,
                     test_number: bool = False) -> list[DeliveryReport]:
    """Send the same code over the plan's next channels, one after another, until one is not refused.

    Each step counts against the send limits (destination, channel budget) like any send, and gives them back
    when it fails; a refused step ends the failover with a recorded refusal.
    """
    reports: list[DeliveryReport] = []
    for step in range(from_step + 1, len(plan)):
        target = plan[step]
        gateway = gateway_for(rt, config, target.channel, test_number)
        now = rt.clock()

        counters = [] if test_number else send_counters(rt.org(config.org_id).settings, config, [target], now=now)

        def queue(conn: Connection) -> int:
            count_request(conn, counters, org_id=config.org_id, action=config.action.value, now=now)
            return insert_delivery(conn, org_id=config.org_id, request_id=request_id, code_id=code_id, target=target, gateway=gateway,
                                    step=step, now=now)

        try:
            delivery_id = await rt.writer.run(queue)
        except Refused as refused:
            await record_refusal(rt, refused, org_id=config.org_id, user_key=user_key, action=config.action.value,
                                  client_id=None, now=now)
            break
        log.info("failover of request %s to %s (step %s)", request_id, target.channel.value, step)
        report = (await deliver(rt, config, [Send(delivery_id, target, gateway, templates[target.channel])], code,
                                 await_receipt=step < len(plan) - 1))[0]
        reports.append(report)
        if report.status != "failed":
            break
        await give_back_counts(rt, counters)  # this step reached no one
    return reports


async def fail_over_delivery(rt: Runtime, delivery_id: int) -> list[DeliveryReport]:
    """Send the next channel of the plan for a delivery that failed or was not delivered in time.

    Claiming the delivery clears its deadline in one conditional UPDATE, so a receipt and the poller
    (or two API workers) never fail over the same delivery twice. A code used, burned or expired meanwhile
    is not sent again.
    """
    now = rt.clock()

    def claim(conn: Connection):  # type: ignore[no-untyped-def]
        claimed = conn.execute(update(Delivery).where(Delivery.id == delivery_id, Delivery.receipt_deadline.is_not(None))
                               .values(receipt_deadline=None)
                               .returning(Delivery.request_id, Delivery.code_id, Delivery.failover_step)).first()
        if claimed is None:
            return None, None, None
        origin = conn.execute(select(OtpRequest.org_id, OtpRequest.action, OtpRequest.user_key,
                                     OtpRequest.body_templates).where(
            OtpRequest.id == claimed.request_id)).first()
        code_row = conn.execute(select(OtpCode.code_enc, OtpCode.state, OtpCode.expires_at, OtpCode.entity_type)
                                .where(OtpCode.id == claimed.code_id)).first()
        return claimed, origin, code_row

    claimed, origin, code_row = await rt.writer.run(claim)
    if claimed is None:
        return []
    if origin is None or code_row is None or code_row.state != "active" or code_row.expires_at <= now \
            or code_row.code_enc is None:
        return []
    action = Action(origin.action)
    config = rt.config_for(origin.org_id, action)
    _org, entity_type, value = split_user_key(origin.user_key)
    entity = NormalisedEntity(EntityType(entity_type), value, origin.org_id)
    plan = failover_plan(entity, config)
    if claimed.failover_step + 1 >= len(plan):
        return []
    code = rt.keys.decrypt_code(origin.user_key, action.value, code_row.code_enc)
    try:
        body = GenerateRequest(entity, action, None, **json.loads(origin.body_templates)) \
            if origin.body_templates else None
        templates = resolve_all((t.channel for t in plan), action, rt.active_templates(origin.org_id), body)
    except OtpError as exc:
        log.warning("failover of request %s impossible: %s", claimed.request_id, exc.problems[0].message)
        return []
    return await fail_over(rt, config, request_id=claimed.request_id, code_id=claimed.code_id, code=code,
                            user_key=origin.user_key, plan=plan, templates=templates, from_step=claimed.failover_step,
                            test_number=rt.settings.is_test_number(value))


async def run_due_failovers(rt: Runtime, limit: int = 100) -> int:
    """Fail over every delivery whose receipt deadline has passed; returns how many were failed over."""
    now = rt.clock()
    with rt.read_db.connect() as conn:
        due = conn.execute(select(Delivery.id).where(Delivery.receipt_deadline <= now, Delivery.status == "sent")
                           .order_by(Delivery.receipt_deadline).limit(limit)).scalars().all()
    done = 0
    for delivery_id in due:
        if await fail_over_delivery(rt, delivery_id):
            done += 1
    return done
