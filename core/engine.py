"""Generate and validate: the two operations of the service, shared by the API and the console.

Each operation holds a database transaction only around its SQL, and every write goes through rt.writer
(core.groupcommit). Network gateways are called after commit, with no transaction open; the development
outbox, whose send is itself a write to our database, sends inside the issuing transaction (is_local).
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from sqlalchemy import Connection, bindparam, func, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from core import errors as E
from core import metrics
from core.codes import CheckOutcome, CodeSendsExhausted, IssuedCode, LiveCodeRace, check_code, give_back_send, \
    issue_or_resend, read_for_validation, record_failure, reset_failures
from core.dispatch import dispatch
from core.gateways import Gateway, OutgoingMessage, is_local
from core.gateways.http import close_shared_client
from core.entities import NormalisedEntity, mask, region_of
from core.enums import Action, Channel, EntityType
from core.errors import OtpError, Problem
from core.limits import Counter, Refusal, Refused, count, explain_refusal, generate_counters, give_back, send_counters, \
    validate_counter
from core.faults import storage_failure
from core.messages import ResolvedTemplate, failover_plan, plan_channels, render_message, resolve_all
from core.models import Delivery, LimitEvent, OtpCode, OtpRequest, OtpValidation, SecurityEvent, UsageCounter
from core.otpconfig import OtpConfig
from core.ratelimit import local_day
from core.requests import ChannelTarget, GenerateRequest, parse_generate, parse_validate, template_fields
from core.runtime import Runtime
from core.safemode import reroute
from core.sql import Prepared
from core.templates import RenderError, sample_variables, template_variables

log = logging.getLogger(__name__)

# Built once, executed with parameters (see core.sql for why).
_INSERT_REQUEST = Prepared(lambda insert: insert(OtpRequest.__table__).returning(OtpRequest.__table__.c.id))
_INSERT_DELIVERY = Prepared(lambda insert: insert(Delivery.__table__).returning(Delivery.__table__.c.id))
_INSERT_LIMIT_EVENT = insert(LimitEvent.__table__)
_INSERT_VALIDATION = Prepared(lambda insert: insert(OtpValidation.__table__))
_INSERT_SECURITY_EVENT = insert(SecurityEvent.__table__)
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


@dataclass
class GenerateResult:
    created_id: int
    resent: bool
    warnings: list[Problem] = field(default_factory=list)
    deliveries: list[DeliveryReport] = field(default_factory=list)
    request_id: int = 0
    code_id: int = 0

    def body(self) -> dict:
        return {"createdId": self.created_id, "warnings": [w.as_dict() for w in self.warnings]}


@dataclass
class ValidateResult:
    valid: bool
    warnings: list[Problem] = field(default_factory=list)

    def body(self) -> dict:
        return {"entity": self.valid, "warnings": [w.as_dict() for w in self.warnings]}


def _security_event(conn: Connection, kind: str, *, user_key: str, action: str, now: datetime,
                    detail: str | None = None) -> None:
    conn.execute(_INSERT_SECURITY_EVENT, {"created_at": now, "kind": kind, "user_key": user_key, "action": action,
                                          "detail": detail})


def _seconds_until(moment: datetime, now: datetime) -> int:
    return max(1, math.ceil((moment - now).total_seconds()))


def _storage_error(exc: Exception) -> OtpError:
    return storage_failure(exc, "unable to generate OTP at the moment: storage is unavailable")


async def _record_refusal(rt: Runtime, refused: Refused, *, user_key: str, action: str, client_id: int | None,
                          now: datetime) -> OtpError:
    def record(conn: Connection) -> None:
        conn.execute(_INSERT_LIMIT_EVENT, {"created_at": now, "user_key": user_key, "action": action,
                                           "limit_type": refused.limit_type, "client_id": client_id})
        if refused.event:
            _security_event(conn, refused.event[0], user_key=user_key, action=action, detail=refused.event[1],
                            now=now)

    try:
        await rt.writer.run(record)
    except DBAPIError as exc:  # the refusal stands even if it cannot be recorded
        log.warning("could not record a %s refusal: %s", refused.limit_type, type(exc).__name__)
        metrics.database_error(exc)
    log.info("refused %s for %s (%s)", action, mask(user_key), refused.limit_type)
    metrics.refused(refused.limit_type)
    return OtpError.single(E.RATE_LIMITED, refused.message, 429, refused.retry_after, reason=refused.limit_type)


def _gateway_for(rt: Runtime, config: OtpConfig, channel: Channel, test_number: bool) -> Gateway | None:
    """Runtime.choose_gateway's answer: the one the console shows (test numbers only ever reach the outbox)."""
    return rt.choose_gateway(config.action, channel, test_number=test_number).gateway


def _gateway_label(gateway: Gateway | None) -> str:
    return gateway.name if gateway is not None else "none"


def _count(conn: Connection, counters: list[Counter], *, action: str, now: datetime) -> list[Counter]:
    """Count a request against counters (core.limits); the counters counted, for a give-back if its sends fail.

    The send that spends a channel budget records one budget_trip security event (rolled back with the request
    if a later limit refuses it); the sends refused after it are limit events.
    """
    counted = []
    for counter, got in count(conn, counters, now=now):
        if counter.trip is not None and got == counter.limit:
            _security_event(conn, "budget_trip", user_key="", action=action, now=now, detail=counter.trip)
        counted.append(counter)
    return counted


def _check_countries(rt: Runtime, targets: list[ChannelTarget]) -> None:
    """Refuse, before anything is counted or sent, a destination outside its channel's allowed countries."""
    problems = []
    for target in targets:
        allowed = rt.settings.countries_for(target.channel.value)
        if allowed and target.channel.needs_phone:
            country = region_of(target.destination)
            if country not in allowed:
                problems.append(Problem(E.COUNTRY_NOT_ALLOWED, f"{target.channel.value} may not send to "
                                        f"{country or 'that country'} (allowed: {', '.join(sorted(allowed))})"))
    if problems:
        raise OtpError(problems, 422)


def _issue(conn: Connection, rt: Runtime, *, entity: NormalisedEntity, config: OtpConfig,
           counters: list[Counter], client_id: int | None, now: datetime, test_number: bool,
           body_templates: str | None = None) -> tuple[IssuedCode, int, list[Counter]]:
    """The write transaction of a generate up to its deliveries: count, issue or re-send, record the request.

    Returns what was counted too, so that a request whose sends all fail can give it back.
    """
    user_key = entity.user_key
    entity_type = entity.entity_type.value
    counted = [] if test_number else _count(conn, counters, action=config.action.value, now=now)
    try:
        issued = issue_or_resend(conn, rt.keys, user_key=user_key, entity_type=entity_type, config=config, now=now,
                                 fixed_code=rt.settings.test_code if test_number else None)
    except CodeSendsExhausted as exc:
        raise Refused("code_sends", f"this code was already sent {config.max_sends_per_code} times; "
                      "a new one can be requested when it expires", _seconds_until(exc.expires_at, now)) from None
    row = {"created_at": now, "code_id": issued.code_id, "user_key": user_key, "action": config.action.value,
           "kind": "resent" if issued.resent else "issued", "client_id": client_id}
    if body_templates is not None:
        row["body_templates"] = body_templates
    request_id = _INSERT_REQUEST.scalar(conn, row)
    return issued, request_id, counted  # type: ignore[return-value]


def _insert_delivery(conn: Connection, *, request_id: int, code_id: int, target: ChannelTarget,
                     gateway: Gateway | None, step: int, now: datetime, status: str = "queued",
                     error: str | None = None, attempts: int = 0, latency_ms: float | None = None) -> int:
    return _INSERT_DELIVERY.scalar(conn, {  # type: ignore[return-value]
        "request_id": request_id, "code_id": code_id, "channel": target.channel.value,
        "destination": target.destination, "gateway": _gateway_label(gateway), "status": status, "error": error,
        "attempts": attempts, "latency_ms": latency_ms, "created_at": now, "updated_at": now, "failover_step": step})


def _variables(rt: Runtime, config: OtpConfig, code: str) -> dict[str, object]:
    return template_variables(code=code, action=config.action.value, validity_minutes=config.validity_minutes,
                              brand=rt.settings.brand)


def _render(template: ResolvedTemplate, *, delivery_id: int, destination: str, code: str,
            variables: dict[str, object]) -> tuple[OutgoingMessage | None, str | None]:
    """The message, or None and the delivery's error text when the template cannot be rendered."""
    try:
        return render_message(template, delivery_id=delivery_id, destination=destination, code=code,
                              variables=variables), None
    except RenderError as exc:
        return None, f"template failed to render: {str(exc)[:1000]}"


def _send_within(conn: Connection, rt: Runtime, config: OtpConfig, *, request_id: int, issued: IssuedCode,
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
                                 code=issued.code, variables=variables)
        status = "failed" if message is None else "delivered"
        delivery_id = _insert_delivery(conn, request_id=request_id, code_id=issued.code_id, target=target,
                                       gateway=gateway, step=0, now=now, status=status, error=error,
                                       attempts=0 if message is None else 1,
                                       latency_ms=None if message is None else (time.perf_counter() - started) * 1000)
        if message is not None:
            gateway.send_within(conn, replace(message, delivery_id=delivery_id))  # type: ignore[union-attr]
            metrics.gateway_send(_gateway_label(gateway), target.channel.value, time.perf_counter() - started,
                                 failed=False)
        reports.append(DeliveryReport(delivery_id, target.channel.value, target.destination,
                                      _gateway_label(gateway), status, error))
    return reports


def _public_reason(report: DeliveryReport) -> str:
    """What an API client may learn about a failed delivery; the delivery row keeps the full error."""
    if report.gateway == "none":
        return "no gateway is configured for this channel"
    if report.error and report.error.startswith("template failed to render"):
        return "the template failed to render"
    return "the gateway did not accept the message"


@dataclass(frozen=True)
class _Send:
    delivery_id: int
    target: ChannelTarget
    gateway: Gateway | None
    template: ResolvedTemplate


async def _deliver(rt: Runtime, config: OtpConfig, sends: list[_Send], code: str, *,
                   await_receipt: bool) -> list[DeliveryReport]:
    """Render, send concurrently (no transaction open), then record each outcome in one short transaction.

    With await_receipt, a delivery that was only 'sent' gets a deadline: without a 'delivered' receipt by
    then, the failover sends the next channel of the plan.
    """
    variables = _variables(rt, config, code)
    pairs, render_failures = [], {}
    for send in sends:
        message, error = _render(send.template, delivery_id=send.delivery_id, destination=send.target.destination,
                                 code=code, variables=variables)
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
                                      _gateway_label(send.gateway), status, error))

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


def _failed_sends(counted: list[Counter], reports: list[DeliveryReport]) -> list[Counter]:
    """The send counters of sends that reached no one: a failed send's destination, and the budgets of a channel
    none of whose sends got through (a request counts a channel's budget once, however many sends it has)."""
    failed = {(r.channel, r.destination) for r in reports if r.status == "failed"}
    failed_channels = {channel for channel, _d in failed}
    through = {r.channel for r in reports if r.status != "failed"}
    return [c for c in counted
            if (c.target is not None and (c.target.channel.value, c.target.destination) in failed)
            or (c.channel is not None and c.channel.value in failed_channels and c.channel.value not in through)]


async def _give_back(rt: Runtime, counters: list[Counter], *, code_id: int | None = None) -> None:
    """Give back what sends that reached no one counted (and, for a whole request, the code's send), in one
    short transaction after the sends: a fault costs the customer nothing."""
    if not counters and code_id is None:
        return

    def undo(conn: Connection) -> None:
        give_back(conn, counters)
        if code_id is not None:
            give_back_send(conn, code_id)

    await _write_after_send(rt, undo, "the give-back of a failed send's counts")


async def _fail_over(rt: Runtime, config: OtpConfig, *, request_id: int, code_id: int, code: str, user_key: str,
                     plan: list[ChannelTarget], templates: dict[Channel, ResolvedTemplate], from_step: int,
                     test_number: bool = False) -> list[DeliveryReport]:
    """Send the same code over the plan's next channels, one after another, until one is not refused.

    Each step counts against the send limits (destination, channel budget) like any send, and gives them back
    when it fails; a refused step ends the failover with a recorded refusal.
    """
    reports: list[DeliveryReport] = []
    for step in range(from_step + 1, len(plan)):
        target = plan[step]
        gateway = _gateway_for(rt, config, target.channel, test_number)
        now = rt.clock()

        counters = [] if test_number else send_counters(rt.settings, config, [target], now=now)

        def queue(conn: Connection) -> int:
            _count(conn, counters, action=config.action.value, now=now)
            return _insert_delivery(conn, request_id=request_id, code_id=code_id, target=target, gateway=gateway,
                                    step=step, now=now)

        try:
            delivery_id = await rt.writer.run(queue)
        except Refused as refused:
            await _record_refusal(rt, refused, user_key=user_key, action=config.action.value, client_id=None,
                                  now=now)
            break
        log.info("failover of request %s to %s (step %s)", request_id, target.channel.value, step)
        report = (await _deliver(rt, config, [_Send(delivery_id, target, gateway, templates[target.channel])], code,
                                 await_receipt=step < len(plan) - 1))[0]
        reports.append(report)
        if report.status != "failed":
            break
        await _give_back(rt, counters)  # this step reached no one
    return reports


async def generate(rt: Runtime, payload: object, *, client_id: int | None = None,
                   client_ip: str | None = None) -> GenerateResult:
    """Issue (or re-send) a code and send it over every planned channel at once.

    Raises OtpError with Capillary's codes; a failed channel is a 7001 warning while another succeeded.
    With a failover plan and no channels in the request, the plan's first channel is sent and the next
    ones get the same code if it fails (now) or is not delivered in time (later, run_due_failovers).
    """
    request = parse_generate(payload, rt.settings)
    config = rt.config_for(request.action)
    plan = failover_plan(request.entity, config) if request.channels is None else []
    targets = plan[:1] if plan else plan_channels(request, config)
    targets, rerouted = reroute(rt, config, request, targets)  # email-only safe mode: phone channels go by EMAIL
    templates = resolve_all(plan or targets, request.action, rt.active_templates(), request)
    user_key = request.entity.user_key
    test_number = rt.settings.is_test_number(request.entity.value)
    if not test_number:
        _check_countries(rt, plan or targets)
    gateways = [_gateway_for(rt, config, t.channel, test_number) for t in targets]
    sends = list(zip(targets, gateways))
    # A later failover step (the poller's) must send with this request's own templates.
    kept = template_fields(request) if len(plan) > 1 else None
    body_templates = json.dumps(kept) if kept else None
    # Local gateways (the outbox) send inside the issuing transaction: one transaction per generate.
    local = all(is_local(g) for g in gateways)
    now = rt.clock()
    counters = [] if test_number else generate_counters(rt.settings, config, entity=request.entity, targets=targets,
                                                        client_id=client_id, client_ip=client_ip, now=now)

    def issue(conn: Connection) -> tuple[IssuedCode, int, list[Counter], list[DeliveryReport], list[_Send]]:
        issued, request_id, counted = _issue(conn, rt, entity=request.entity, config=config, counters=counters,
                                             client_id=client_id, now=now, test_number=test_number,
                                             body_templates=body_templates)
        if local:
            return issued, request_id, counted, _send_within(conn, rt, config, request_id=request_id,
                                                             issued=issued, sends=sends, templates=templates,
                                                             now=now), []
        return issued, request_id, counted, [], [
            _Send(_insert_delivery(conn, request_id=request_id, code_id=issued.code_id, target=t, gateway=g,
                                   step=0, now=now), t, g, templates[t.channel]) for t, g in sends]

    for attempt in range(2):
        try:
            issued, request_id, counted, reports, queued = await rt.writer.run(issue)
            break
        except Refused as refused:
            raise await _record_refusal(rt, refused, user_key=user_key, action=config.action.value,
                                        client_id=client_id, now=now) from None
        except (IntegrityError, LiveCodeRace):
            # Two first requests raced to insert the live code (possible on PostgreSQL only); the
            # loser rolled back and now finds the winner's code to re-send.
            if attempt:
                raise _storage_error(RuntimeError("repeated conflict")) from None
        except DBAPIError as exc:
            raise _storage_error(exc) from None

    if not local:  # network gateways: sent with no transaction open, then recorded
        reports = await _deliver(rt, config, queued, issued.code, await_receipt=len(plan) > 1)
    if plan and reports and reports[0].status == "failed":
        reports += await _fail_over(rt, config, request_id=request_id, code_id=issued.code_id, code=issued.code,
                                    user_key=user_key, plan=plan, templates=templates, from_step=0,
                                    test_number=test_number)

    log.info("%s code %s for %s action %s over %s", "re-sent" if issued.resent else "issued", issued.code_id,
             mask(request.entity.value), config.action.value, ",".join(r.channel for r in reports))
    failed = [r for r in reports if r.status == "failed"]
    for report in reports:
        metrics.generated(config.action.value, report.channel,
                          "failed" if report.status == "failed" else "resent" if issued.resent else "sent")
    warnings = [Problem(E.GATEWAY_ERROR, f"{r.channel} to {mask(r.destination)} failed: {_public_reason(r)}")
                for r in failed]
    nobody = bool(reports) and len(failed) == len(reports)
    if nobody:
        # Nobody received anything: the request costs nothing, and the live code waits to be sent again.
        # (A failover step already gave back its own counts.)
        await _give_back(rt, counted, code_id=None if test_number else issued.code_id)
    elif failed:
        await _give_back(rt, _failed_sends(counted, reports))
    if nobody:
        error = OtpError(warnings, 502)
        error.warnings.extend(rerouted)  # the email was tried and failed: say why the phone channel was not
        raise error
    if issued.resent:
        warnings.insert(0, Problem(E.RESENT_SAME_CODE, "the code issued earlier is still valid and was sent again"))
    warnings += rerouted
    return GenerateResult(1 if issued.resent else request_id, issued.resent, warnings, reports,
                          request_id, issued.code_id)


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
        origin = conn.execute(select(OtpRequest.action, OtpRequest.user_key, OtpRequest.body_templates).where(
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
    config = rt.config_for(action)
    entity_type, _, value = origin.user_key.partition(":")
    entity = NormalisedEntity(EntityType(entity_type), value)
    plan = failover_plan(entity, config)
    if claimed.failover_step + 1 >= len(plan):
        return []
    code = rt.keys.decrypt_code(origin.user_key, action.value, code_row.code_enc)
    try:
        body = GenerateRequest(entity, action, None, **json.loads(origin.body_templates)) \
            if origin.body_templates else None
        templates = resolve_all(plan, action, rt.active_templates(), body)
    except OtpError as exc:
        log.warning("failover of request %s impossible: %s", claimed.request_id, exc.problems[0].message)
        return []
    return await _fail_over(rt, config, request_id=claimed.request_id, code_id=claimed.code_id, code=code,
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


_WARNINGS = {
    "none": Problem(E.NO_VALID_OTP, "no valid OTP found for this user and action"),
    "expired": Problem(E.OTP_INVALID, "the OTP has expired"),
    "wrong": Problem(E.OTP_INVALID, "the OTP is invalid"),
    "used_elsewhere": Problem(E.OTP_INVALID, "the OTP was already used"),
    # A replay answers like any absent code; only the security event tells them apart.
    "replayed": Problem(E.NO_VALID_OTP, "no valid OTP found for this user and action"),
    "burned": Problem(E.ATTEMPTS_EXHAUSTED, "OTP validation failed: attempts exhausted, the code is burned"),
}


async def validate(rt: Runtime, payload: object, *, client_id: int | None = None) -> ValidateResult:
    """Check a code: single use, attempts per code, the validate window and the consecutive-failure lock."""
    request = parse_validate(payload, rt.settings)
    config = rt.config_for(request.action)
    user_key = request.entity.user_key
    action = config.action.value
    submitted = request.code.upper() if config.alphanumeric else request.code
    now = rt.clock()
    exempt = rt.settings.is_test_number(request.entity.value)

    def check(conn: Connection) -> CheckOutcome:
        if not exempt:
            count(conn, [validate_counter(config, user_key=user_key, now=now)], now=now)
        read = read_for_validation(conn, user_key=user_key, action=action, now=now, read_lock=not exempt)
        if read.locked_until is not None:
            raise Refused("lock", "too many failed validations; this user is locked for this action",
                          _seconds_until(read.locked_until, now))
        outcome = check_code(conn, rt.keys, user_key=user_key, config=config, submitted=submitted, now=now,
                             read=read)
        if outcome.outcome == "ok":
            reset_failures(conn, user_key=user_key, action=action, failures=read.failures)
        elif outcome.outcome in ("wrong", "burned"):
            failures = record_failure(conn, user_key=user_key, config=config, now=now)
            if failures >= config.max_consecutive_failures:  # this failure locked the user: every lock is an event
                _security_event(conn, "lock", user_key=user_key, action=action, now=now,
                                detail=f"{failures} consecutive failures")
        if outcome.outcome in ("burned", "replayed"):
            _security_event(conn, f"{outcome.outcome}_code", user_key=user_key, action=action, now=now)
        _INSERT_VALIDATION.execute(conn, {"created_at": now, "user_key": user_key, "action": action,
                                          "code_id": outcome.code_id, "outcome": outcome.outcome})
        return outcome

    try:
        outcome = await rt.writer.run(check)
    except Refused as refused:
        raise await _record_refusal(rt, refused, user_key=user_key, action=action, client_id=client_id,
                                    now=now) from None
    except DBAPIError as exc:
        raise _storage_error(exc) from None
    log.info("validation for %s action %s: %s", mask(request.entity.value), action, outcome.outcome)
    metrics.validated(action, outcome.outcome)
    if outcome.outcome == "ok":
        return ValidateResult(True)
    return ValidateResult(False, [_WARNINGS[outcome.outcome]])


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


def dry_run(rt: Runtime, payload: object) -> DryRun:
    """Check and render a generate request with a sample code, and report the limits it would meet."""
    request = parse_generate(payload, rt.settings)
    config = rt.config_for(request.action)
    targets, rerouted = reroute(rt, config, request, plan_channels(request, config))
    templates = resolve_all(targets, request.action, rt.active_templates(), request)
    now = rt.clock()
    user_key = request.entity.user_key
    with rt.read_db.connect() as conn:
        used = conn.execute(select(func.coalesce(func.max(UsageCounter.count), 0)).where(
            UsageCounter.scope == "daily:*", UsageCounter.user_key == user_key,
            UsageCounter.period == local_day(now, rt.settings.tz))).scalar_one()
        live = conn.execute(select(OtpCode.id).where(
            OtpCode.user_key == user_key, OtpCode.action == config.action.value, OtpCode.state == "active",
            OtpCode.expires_at > now)).scalar()
        # The limits a real generate would meet, from the engine's own counters (the caller's IP and API client
        # are not known here).
        refusals = [r for r in explain_refusal(conn, rt.settings, config, entity=request.entity, targets=targets,
                                               now=now) if r.refuses == "generate"]
    variables = sample_variables(action=config.action.value, code_length=config.code_length,
                                 validity_minutes=config.validity_minutes, brand=rt.settings.brand)
    problems: list[Problem] = list(rerouted)  # 7004: a phone channel in email-only safe mode goes by EMAIL
    problems += [Problem(E.RATE_LIMITED, text) for text in dict.fromkeys(_dry_run_refusal(r) for r in refusals)]
    messages = []
    for index, target in enumerate(targets):
        try:
            messages.append(render_message(templates[target.channel], delivery_id=-(index + 1),
                                           destination=target.destination,
                                           code=str(variables["validation_code"]), variables=variables))
        except RenderError as exc:
            problems.append(Problem(E.TEMPLATE_PROBLEM, f"{target.channel.value}: {exc}"))
    test_number = rt.settings.is_test_number(request.entity.value)
    chosen = {t.channel: rt.choose_gateway(config.action, t.channel, test_number=test_number) for t in targets}
    return DryRun(messages, {c.value: f"{t.origin}: {t.reason}" for c, t in templates.items()},
                  live is not None, int(used), rt.settings.daily_limit, problems,
                  {c.value: f"{g.name} ({g.why})" for c, g in chosen.items()})


def run(coro):  # type: ignore[no-untyped-def]
    """Run an engine coroutine from synchronous code (the console, scripts, tests)."""
    async def main():  # type: ignore[no-untyped-def]
        try:
            return await coro
        finally:
            await close_shared_client()  # the loop ends here, and its pooled connections with it
    return asyncio.run(main())
