"""Render, send and record: the deliveries of one request, and giving back what a send that reached no one counted.

Network gateways are called with no transaction open (deliver), then the outcome is recorded in one short
transaction; the development outbox, whose send is itself a write to our database, sends inside the issuing
transaction (send_within).
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import Connection, bindparam, update
from sqlalchemy.exc import DBAPIError

from core import metrics
from core.db.models import Delivery
from core.db.prepared import Prepared
from core.delivery.dispatch import dispatch
from core.delivery.gateways import Gateway, OutgoingMessage
from core.delivery.messages import ResolvedTemplate, render_message
from core.delivery.templates import RenderError, template_variables
from core.enums import Channel
from core.issuing.action_config import OtpConfig
from core.issuing.codes import IssuedCode, give_back_send
from core.issuing.limits import Counter, give_back
from core.issuing.requests import ChannelTarget
from core.runtime import Runtime

log = logging.getLogger(__name__)

# Built once, executed with parameters (see core.db.prepared for why).
_INSERT_DELIVERY = Prepared(lambda insert: insert(Delivery.__table__).returning(Delivery.__table__.c.id))


_d = Delivery.__table__


_RECORD_DELIVERY = update(_d).where(_d.c.id == bindparam("p_id")).values(
    status=bindparam("p_status"), error=bindparam("p_error"), provider_message_id=bindparam("p_message_id"),
    http_status=bindparam("p_http_status"), latency_ms=bindparam("p_latency"), attempts=bindparam("p_attempts"),
    updated_at=bindparam("p_updated", type_=_d.c.updated_at.type),
    receipt_deadline=bindparam("p_deadline", type_=_d.c.receipt_deadline.type))


@dataclass
class DeliveryReport:
    delivery_id: int
    channel: str
    destination: str
    gateway: str
    status: str
    error: str | None = None


def gateway_for(rt: Runtime, config: OtpConfig, channel: Channel, test_number: bool) -> Gateway | None:
    """Runtime.choose_gateway's answer: the one the console shows (test numbers only ever reach the outbox)."""
    return rt.choose_gateway(config.org_id, config.action, channel, test_number=test_number).gateway


def gateway_label(gateway: Gateway | None) -> str:
    return gateway.name if gateway is not None else "none"


def insert_delivery(conn: Connection, *, org_id: int, request_id: int, code_id: int, target: ChannelTarget,
                     gateway: Gateway | None, step: int, now: datetime, status: str = "queued",
                     error: str | None = None, attempts: int = 0, latency_ms: float | None = None) -> int:
    return _INSERT_DELIVERY.scalar(conn, {  # type: ignore[return-value]
        "org_id": org_id, "request_id": request_id, "code_id": code_id, "channel": target.channel.value,
        "destination": target.destination, "gateway": gateway_label(gateway), "status": status, "error": error,
        "attempts": attempts, "latency_ms": latency_ms, "created_at": now, "updated_at": now, "failover_step": step})


def _variables(rt: Runtime, config: OtpConfig, code: str) -> dict[str, object]:
    return template_variables(code=code, action=config.action.value, validity_minutes=config.validity_minutes,
                              brand=rt.org(config.org_id).brand)  # the organisation's brand


def _render(template: ResolvedTemplate, *, delivery_id: int, destination: str, code: str,
            variables: dict[str, object], org_id: int) -> tuple[OutgoingMessage | None, str | None]:
    """The message, or None and the delivery's error text when the template cannot be rendered."""
    try:
        return render_message(template, delivery_id=delivery_id, destination=destination, code=code,
                              variables=variables, org_id=org_id), None
    except RenderError as exc:
        return None, f"template failed to render: {str(exc)[:1000]}"


def send_within(conn: Connection, rt: Runtime, config: OtpConfig, *, request_id: int, issued: IssuedCode,
                 sends: list[tuple[ChannelTarget, Gateway | None]], templates: dict[Channel, ResolvedTemplate],
                 now: datetime) -> list[DeliveryReport]:
    """Send through local gateways (the outbox) inside the issuing transaction, recording each delivery.

    A local send is a write to our own database, not a network call, so it may share the transaction;
    the code, its deliveries and its messages then commit together.
    """
    variables = _variables(rt, config, issued.code)
    reports = []
    for target, gateway in sends:
        started = time.perf_counter()
        message, error = _render(templates[target.channel], delivery_id=0, destination=target.destination,
                                 code=issued.code, variables=variables, org_id=config.org_id)
        status = "failed" if message is None else "delivered"
        delivery_id = insert_delivery(conn, org_id=config.org_id, request_id=request_id, code_id=issued.code_id, target=target,
                                       gateway=gateway, step=0, now=now, status=status, error=error,
                                       attempts=0 if message is None else 1,
                                       latency_ms=None if message is None else (time.perf_counter() - started) * 1000)
        if message is not None:
            gateway.send_within(conn, replace(message, delivery_id=delivery_id))  # type: ignore[union-attr]
            metrics.gateway_send(gateway_label(gateway), target.channel.value, time.perf_counter() - started,
                                 failed=False)
        reports.append(DeliveryReport(delivery_id, target.channel.value, target.destination,
                                      gateway_label(gateway), status, error))
    return reports


def public_reason(report: DeliveryReport) -> str:
    """What an API client may learn about a failed delivery; the delivery row keeps the full error."""
    if report.gateway == "none":
        return "no gateway is configured for this channel"
    if report.error and report.error.startswith("template failed to render"):
        return "the template failed to render"
    return "the gateway did not accept the message"


@dataclass(frozen=True)
class Send:
    delivery_id: int
    target: ChannelTarget
    gateway: Gateway | None
    template: ResolvedTemplate


async def deliver(rt: Runtime, config: OtpConfig, sends: list[Send], code: str, *,
                   await_receipt: bool) -> list[DeliveryReport]:
    """Render, send concurrently (no transaction open), then record each outcome in one short transaction.

    With await_receipt, a delivery that was only 'sent' gets a deadline: without a 'delivered' receipt by
    then, the failover sends the next channel of the plan.
    """
    variables = _variables(rt, config, code)
    pairs, render_failures = [], {}
    for send in sends:
        message, error = _render(send.template, delivery_id=send.delivery_id, destination=send.target.destination,
                                 code=code, variables=variables, org_id=config.org_id)
        if message is None:
            render_failures[send.delivery_id] = error
        else:
            pairs.append((send.gateway, message))
    results = dict(zip((m.delivery_id for _g, m in pairs), await dispatch(pairs, rt.settings.gateway_timeout_seconds)))

    reports: list[DeliveryReport] = []
    finished = rt.clock()
    deadline = finished + timedelta(seconds=config.failover_seconds) if await_receipt else None
    rows = []
    for send in sends:
        result = results.get(send.delivery_id)
        status = result.status if result else "failed"
        error = result.error if result else render_failures[send.delivery_id]
        rows.append({"p_id": send.delivery_id, "p_status": status, "p_error": error,
                     "p_message_id": result.provider_message_id if result else None,
                     "p_http_status": result.http_status if result else None,
                     "p_latency": result.latency_ms if result else None,
                     "p_attempts": result.attempts if result else 0, "p_updated": finished,
                     "p_deadline": deadline if status == "sent" else None})
        reports.append(DeliveryReport(send.delivery_id, send.target.channel.value, send.target.destination,
                                      gateway_label(send.gateway), status, error))

    def record(conn: Connection) -> None:
        conn.execute(_RECORD_DELIVERY, rows)
        for result in results.values():
            if result.record is not None:
                result.record(conn)

    # The messages went out: losing their status must not turn into an error, but a delivery left 'queued'
    # would never get its receipt deadline, so its failover would never fire. Hence the retries.
    await _write_after_send(rt, record, "delivery results")
    return reports


_WRITE_RETRY_DELAYS = (0.05, 0.2, 1.0)


async def _write_after_send(rt: Runtime, write, what: str) -> bool:  # type: ignore[no-untyped-def]
    """Run a write that follows a send (its record, or a give-back), retrying a storage failure a few times.

    The send cannot be undone, so a transient failure (a deadlock, a lost connection, a busy file) must not lose
    what it left to record. Returns whether the write was made.
    """
    for delay in (*_WRITE_RETRY_DELAYS, None):
        try:
            await rt.writer.run(write)
            return True
        except DBAPIError as exc:
            if delay is None:
                log.error("could not record %s: %s", what, type(exc).__name__)
                metrics.database_error(exc)
                return False
            log.warning("recording %s failed (%s); retrying", what, type(exc).__name__)
            await asyncio.sleep(delay)
    return False


def failed_sends(counted: list[Counter], reports: list[DeliveryReport]) -> list[Counter]:
    """The send counters of sends that reached no one: a failed send's destination, and the budgets of a channel
    none of whose sends got through (a request counts a channel's budget once, however many sends it has)."""
    failed = {(r.channel, r.destination) for r in reports if r.status == "failed"}
    failed_channels = {channel for channel, _d in failed}
    through = {r.channel for r in reports if r.status != "failed"}
    return [c for c in counted
            if (c.target is not None and (c.target.channel.value, c.target.destination) in failed)
            or (c.channel is not None and c.channel.value in failed_channels and c.channel.value not in through)]


async def give_back_counts(rt: Runtime, counters: list[Counter], *, code_id: int | None = None) -> None:
    """Give back what sends that reached no one counted (and, for a whole request, the code's send), in one
    short transaction after the sends: a fault costs the customer nothing."""
    if not counters and code_id is None:
        return

    def undo(conn: Connection) -> None:
        give_back(conn, counters)
        if code_id is not None:
            give_back_send(conn, code_id)

    await _write_after_send(rt, undo, "the give-back of a failed send's counts")
