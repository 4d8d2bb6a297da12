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
from core.codes import CheckOutcome, CodeSendsExhausted, IssuedCode, LiveCodeRace, check_code, issue_or_resend, \
    locked_until, record_failure, reset_failures
from core.dispatch import dispatch
from core.gateways import Gateway, OutgoingMessage, is_local
from core.gateways.http import close_shared_client
from core.entities import NormalisedEntity, mask, region_of
from core.enums import Action, Channel, EntityType
from core.errors import OtpError, Problem
from core.faults import storage_failure
from core.messages import ResolvedTemplate, failover_plan, plan_channels, render_message, resolve_all
from core.models import Delivery, LimitEvent, OtpCode, OtpRequest, OtpValidation, SecurityEvent, UsageCounter
from core.otpconfig import OtpConfig, effective_limit
from core.ratelimit import bump, local_day, seconds_until_next_day, window_start
from core.requests import ChannelTarget, GenerateRequest, parse_generate, parse_validate, template_fields
from core.runtime import Runtime
from core.safemode import budgets_for, refusal_message, reroute, spent_channels, trip_detail
from core.sql import Prepared
from core.templates import RenderError, sample_variables, template_variables

log = logging.getLogger(__name__)

# Built once, executed with parameters (see core.sql for why).
_INSERT_REQUEST = Prepared(lambda insert: insert(OtpRequest.__table__).returning(OtpRequest.__table__.c.id))
_INSERT_DELIVERY = Prepared(lambda insert: insert(Delivery.__table__).returning(Delivery.__table__.c.id))
_INSERT_LIMIT_EVENT = insert(LimitEvent.__table__)
_INSERT_VALIDATION = insert(OtpValidation.__table__)
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


class _Refused(Exception):
    """Raised inside a transaction to roll it back and refuse the request with a limit error.

    event, when given, is a (kind, detail) security event to record with the refusal.
    """

    def __init__(self, limit_type: str, message: str, retry_after: int,
                 event: tuple[str, str] | None = None) -> None:
        super().__init__(message)
        self.limit_type, self.message, self.retry_after, self.event = limit_type, message, retry_after, event


def _security_event(conn: Connection, kind: str, *, user_key: str, action: str, now: datetime,
                    detail: str | None = None) -> None:
    conn.execute(_INSERT_SECURITY_EVENT, {"created_at": now, "kind": kind, "user_key": user_key, "action": action,
                                          "detail": detail})


def _seconds_until(moment: datetime, now: datetime) -> int:
    return max(1, math.ceil((moment - now).total_seconds()))


def _storage_error(exc: Exception) -> OtpError:
    return storage_failure(exc, "unable to generate OTP at the moment: storage is unavailable")


async def _record_refusal(rt: Runtime, refused: _Refused, *, user_key: str, action: str, client_id: int | None,
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
    """Test numbers only ever reach the outbox; everyone else the action's gateway for the channel."""
    return rt.outbox if test_number else rt.gateway_for(config.action, channel)


def _gateway_label(gateway: Gateway | None) -> str:
    return gateway.name if gateway is not None else "none"


def _window(now: datetime, minutes: int) -> tuple[str, int]:
    """The fixed window holding now (its start, as a period), and seconds until it ends."""
    start = window_start(now, minutes)
    return str(start), max(1, start + minutes * 60 - int(now.timestamp()))


def _count_sends(conn: Connection, rt: Runtime, config: OtpConfig, *,
                 sends: list[tuple[ChannelTarget, Gateway | None]], now: datetime) -> None:
    """The limits on what is sent (per destination, per channel budget): counted for every send, a failover's too.

    Each send counts against its channel's service-wide budget and the action's own (core.safemode.budgets_for).
    The send that spends a budget records the budget_trip security event, once per trip (rolled back with the
    request if another limit refuses it); the sends refused after it are limit events.
    Counters shared between requests are taken in one canonical (sorted) order, so that on PostgreSQL two
    transactions never wait for each other's rows in a cycle (a deadlock, whichever order the channels came in).
    """
    s = rt.settings
    destination_limit = effective_limit(config, s, "destination_limit")
    if destination_limit:
        minutes = effective_limit(config, s, "destination_window_minutes")
        period, wait = _window(now, minutes)
        for target in sorted({t for t, _g in sends}, key=lambda t: (t.channel.value, t.destination)):
            if bump(conn, scope=f"dest:{target.channel.value}", user_key=target.destination, period=period,
                    limit=destination_limit) is None:
                raise _Refused("destination", f"at most {destination_limit} codes per {minutes} minutes "
                               "to one destination", wait)
    for channel in sorted({t.channel for t, _g in sends}, key=lambda c: c.value):
        for scope, budget in budgets_for(s, config, channel):
            count = bump(conn, scope=scope, user_key=channel.value, period=local_day(now, s.tz),
                         limit=budget) if budget > 0 else None
            if count is None:
                raise _Refused("budget", refusal_message(s, config, scope, channel, budget),
                               seconds_until_next_day(now, s.tz))
            if count == budget:
                _security_event(conn, "budget_trip", user_key="", action=config.action.value, now=now,
                                detail=trip_detail(scope, channel))


def _count_requester(conn: Connection, rt: Runtime, config: OtpConfig, *,
                     sends: list[tuple[ChannelTarget, Gateway | None]], entity: NormalisedEntity,
                     client_id: int | None, client_ip: str | None, now: datetime) -> None:
    """The limits on who asks (API client, client IP, number prefix): counted once per generate."""
    s = rt.settings

    def limit(name: str) -> int:
        return effective_limit(config, s, name)

    if limit("client_limit") and client_id is not None:
        period, wait = _window(now, 1)
        if bump(conn, scope="client", user_key=str(client_id), period=period, limit=limit("client_limit")) is None:
            raise _Refused("client", f"at most {limit('client_limit')} generates per minute for this API client",
                           wait)
    if limit("ip_limit") and client_ip:
        minutes = limit("ip_window_minutes")
        period, wait = _window(now, minutes)
        if bump(conn, scope="ip", user_key=client_ip, period=period, limit=limit("ip_limit")) is None:
            raise _Refused("ip", f"at most {limit('ip_limit')} generates per {minutes} minutes from one address",
                           wait)
    if limit("prefix_limit"):
        minutes = limit("prefix_window_minutes")
        period, wait = _window(now, minutes)
        prefixes = {t.destination[:-4] for t, _g in sends if t.channel.needs_phone}
        if entity.entity_type is EntityType.MOBILE:
            prefixes.add(entity.value[:-4])
        for prefix in sorted(prefixes):
            if bump(conn, scope="prefix", user_key=prefix, period=period, limit=limit("prefix_limit")) is None:
                raise _Refused("prefix", f"too many codes to numbers starting {prefix} in {minutes} minutes", wait,
                               event=("prefix_block", prefix))


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


def _issue(conn: Connection, rt: Runtime, *, user_key: str, entity: NormalisedEntity, config: OtpConfig,
           sends: list[tuple[ChannelTarget, Gateway | None]], client_id: int | None, client_ip: str | None,
           now: datetime, test_number: bool, body_templates: str | None = None) -> tuple[IssuedCode, int]:
    """The write transaction of a generate up to its deliveries: count, issue or re-send, record the request."""
    tz = rt.settings.tz
    day = local_day(now, tz)
    entity_type = entity.entity_type.value
    if not test_number:
        if bump(conn, scope="daily:*", user_key=user_key, period=day, limit=rt.settings.daily_limit) is None:
            raise _Refused("daily", f"daily limit of {rt.settings.daily_limit} OTP requests reached for this user",
                           seconds_until_next_day(now, tz))
        if config.daily_cap is not None and bump(conn, scope=f"daily:{config.action.value}", user_key=user_key,
                                                 period=day, limit=config.daily_cap) is None:
            raise _Refused("action_daily", f"daily limit of {config.daily_cap} OTP requests for "
                           f"{config.action.value} reached for this user", seconds_until_next_day(now, tz))
        _count_sends(conn, rt, config, sends=sends, now=now)
        _count_requester(conn, rt, config, sends=sends, entity=entity, client_id=client_id, client_ip=client_ip,
                         now=now)
    try:
        issued = issue_or_resend(conn, rt.keys, user_key=user_key, entity_type=entity_type, config=config, now=now,
                                 fixed_code=rt.settings.test_code if test_number else None)
    except CodeSendsExhausted as exc:
        raise _Refused("code_sends", f"this code was already sent {config.max_sends_per_code} times; "
                       "a new one can be requested when it expires", _seconds_until(exc.expires_at, now)) from None
    row = {"created_at": now, "code_id": issued.code_id, "user_key": user_key, "action": config.action.value,
           "kind": "resent" if issued.resent else "issued", "client_id": client_id}
    if body_templates is not None:
        row["body_templates"] = body_templates
    request_id = _INSERT_REQUEST.scalar(conn, row)
    return issued, request_id  # type: ignore[return-value]


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

    try:
        await rt.writer.run(record)
    except DBAPIError as exc:  # the messages went out; losing their status must not turn into an error
        log.error("could not record delivery results: %s", type(exc).__name__)
        metrics.database_error(exc)
    return reports


async def _fail_over(rt: Runtime, config: OtpConfig, *, request_id: int, code_id: int, code: str, user_key: str,
                     plan: list[ChannelTarget], templates: dict[Channel, ResolvedTemplate], from_step: int,
                     test_number: bool = False) -> list[DeliveryReport]:
    """Send the same code over the plan's next channels, one after another, until one is not refused.

    Each step counts against the send limits (destination, channel budget) like any send; a refused step
    ends the failover with a recorded refusal.
    """
    reports: list[DeliveryReport] = []
    for step in range(from_step + 1, len(plan)):
        target = plan[step]
        gateway = _gateway_for(rt, config, target.channel, test_number)
        now = rt.clock()

        def queue(conn: Connection) -> int:
            if not test_number:
                _count_sends(conn, rt, config, sends=[(target, gateway)], now=now)
            return _insert_delivery(conn, request_id=request_id, code_id=code_id, target=target, gateway=gateway,
                                    step=step, now=now)

        try:
            delivery_id = await rt.writer.run(queue)
        except _Refused as refused:
            await _record_refusal(rt, refused, user_key=user_key, action=config.action.value, client_id=None,
                                  now=now)
            break
        log.info("failover of request %s to %s (step %s)", request_id, target.channel.value, step)
        report = (await _deliver(rt, config, [_Send(delivery_id, target, gateway, templates[target.channel])], code,
                                 await_receipt=step < len(plan) - 1))[0]
        reports.append(report)
        if report.status != "failed":
            break
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

    def issue(conn: Connection) -> tuple[IssuedCode, int, list[DeliveryReport], list[_Send]]:
        issued, request_id = _issue(conn, rt, user_key=user_key, entity=request.entity, config=config, sends=sends,
                                    client_id=client_id, client_ip=client_ip, now=now, test_number=test_number,
                                    body_templates=body_templates)
        if local:
            return issued, request_id, _send_within(conn, rt, config, request_id=request_id, issued=issued,
                                                    sends=sends, templates=templates, now=now), []
        return issued, request_id, [], [
            _Send(_insert_delivery(conn, request_id=request_id, code_id=issued.code_id, target=t, gateway=g,
                                   step=0, now=now), t, g, templates[t.channel]) for t, g in sends]

    for attempt in range(2):
        try:
            issued, request_id, reports, queued = await rt.writer.run(issue)
            break
        except _Refused as refused:
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
    if reports and len(failed) == len(reports):
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
        period, wait = _window(now, config.validate_window_minutes)
        if not exempt and bump(conn, scope=f"validate:{action}", user_key=user_key, period=period,
                               limit=config.validate_limit) is None:
            raise _Refused("validate", f"at most {config.validate_limit} validations per "
                           f"{config.validate_window_minutes} minutes", wait)
        lock = None if exempt else locked_until(conn, user_key=user_key, action=action, now=now)
        if lock is not None:
            raise _Refused("lock", "too many failed validations; this user is locked for this action",
                           _seconds_until(lock, now))
        outcome = check_code(conn, rt.keys, user_key=user_key, config=config, submitted=submitted, now=now)
        if outcome.outcome == "ok":
            reset_failures(conn, user_key=user_key, action=action)
        elif outcome.outcome in ("wrong", "burned"):
            failures = record_failure(conn, user_key=user_key, config=config, now=now)
            if failures == config.max_consecutive_failures:
                _security_event(conn, "lock", user_key=user_key, action=action, now=now,
                                detail=f"{failures} consecutive failures")
        if outcome.outcome in ("burned", "replayed"):
            _security_event(conn, f"{outcome.outcome}_code", user_key=user_key, action=action, now=now)
        conn.execute(_INSERT_VALIDATION, {"created_at": now, "user_key": user_key, "action": action,
                                          "code_id": outcome.code_id, "outcome": outcome.outcome})
        return outcome

    try:
        outcome = await rt.writer.run(check)
    except _Refused as refused:
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


def dry_run(rt: Runtime, payload: object) -> DryRun:
    """Check and render a generate request with a sample code, and report the limits it would meet."""
    request = parse_generate(payload, rt.settings)
    config = rt.config_for(request.action)
    targets, rerouted = reroute(rt, config, request, plan_channels(request, config))
    templates = resolve_all(targets, request.action, rt.active_templates(), request)
    now = rt.clock()
    user_key = request.entity.user_key
    spent = spent_channels(rt, config, [t.channel for t in targets], now)
    with rt.read_db.connect() as conn:
        used = conn.execute(select(func.coalesce(func.max(UsageCounter.count), 0)).where(
            UsageCounter.scope == "daily:*", UsageCounter.user_key == user_key,
            UsageCounter.period == local_day(now, rt.settings.tz))).scalar_one()
        live = conn.execute(select(OtpCode.send_count).where(
            OtpCode.user_key == user_key, OtpCode.action == config.action.value, OtpCode.state == "active",
            OtpCode.expires_at > now)).scalar()
    variables = sample_variables(action=config.action.value, code_length=config.code_length,
                                 validity_minutes=config.validity_minutes, brand=rt.settings.brand)
    problems: list[Problem] = list(rerouted)  # 7004: a phone channel in email-only safe mode goes by EMAIL
    problems += [Problem(E.RATE_LIMITED, f"the daily {c.value} budget is spent: the channel is in safe mode "
                         "and would be refused") for c in dict.fromkeys(t.channel for t in targets) if c in spent]
    if used >= rt.settings.daily_limit:
        problems.append(Problem(E.RATE_LIMITED, f"the daily limit of {rt.settings.daily_limit} is reached"))
    if live is not None and live >= config.max_sends_per_code:
        problems.append(Problem(E.RATE_LIMITED, "the live code has been sent as often as allowed"))
    messages = []
    for index, target in enumerate(targets):
        try:
            messages.append(render_message(templates[target.channel], delivery_id=-(index + 1),
                                           destination=target.destination,
                                           code=str(variables["validation_code"]), variables=variables))
        except RenderError as exc:
            problems.append(Problem(E.TEMPLATE_PROBLEM, f"{target.channel.value}: {exc}"))
    return DryRun(messages, {c.value: f"{t.origin}: {t.reason}" for c, t in templates.items()},
                  live is not None, int(used), rt.settings.daily_limit, problems)


def run(coro):  # type: ignore[no-untyped-def]
    """Run an engine coroutine from synchronous code (the console, scripts, tests)."""
    async def main():  # type: ignore[no-untyped-def]
        try:
            return await coro
        finally:
            await close_shared_client()  # the loop ends here, and its pooled connections with it
    return asyncio.run(main())
