"""Generate: issue (or re-send) a code and send it over every planned channel at once.

The write transaction holds only the SQL (count, issue, record the request and its deliveries) and goes through
rt.writer (core.db.groupcommit); network gateways are called after commit (core.services.sending).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError

from core import errors as E
from core import metrics
from core.db.models import OtpRequest
from core.db.prepared import Prepared
from core.delivery.gateways import is_local
from core.delivery.messages import resolve_all
from core.errors import OtpError, Problem
from core.issuing.action_config import OtpConfig
from core.issuing.channels import failover_plan, plan_channels
from core.issuing.codes import CodeSendsExhausted, IssuedCode, LiveCodeRace, issue_or_resend
from core.issuing.entities import NormalisedEntity, mask, region_of
from core.issuing.limits import Counter, Refused, generate_counters
from core.issuing.requests import ChannelTarget, parse_generate, template_fields
from core.issuing.safe_mode import reroute
from core.runtime import Runtime
from core.services.failover import fail_over
from core.services.refusals import count_request, record_refusal, seconds_until, storage_error
from core.services.sending import (DeliveryReport, Send, deliver, failed_sends, gateway_for, give_back_counts,
                                   insert_delivery, public_reason, send_within)

log = logging.getLogger(__name__)

# Built once, executed with parameters (see core.db.prepared for why).
_INSERT_REQUEST = Prepared(lambda insert: insert(OtpRequest.__table__).returning(OtpRequest.__table__.c.id))


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
    counted = [] if test_number else count_request(conn, counters, org_id=config.org_id, action=config.action.value,
                                                   now=now)
    try:
        issued = issue_or_resend(conn, rt.keys, user_key=user_key, entity_type=entity_type, config=config, now=now,
                                 fixed_code=rt.settings.test_code if test_number else None)
    except CodeSendsExhausted as exc:
        raise Refused("code_sends", f"this code was already sent {config.max_sends_per_code} times; "
                      "a new one can be requested when it expires", seconds_until(exc.expires_at, now)) from None
    row = {"org_id": config.org_id, "created_at": now, "code_id": issued.code_id, "user_key": user_key, "action": config.action.value,
           "kind": "resent" if issued.resent else "issued", "client_id": client_id}
    if body_templates is not None:
        row["body_templates"] = body_templates
    request_id = _INSERT_REQUEST.scalar(conn, row)
    return issued, request_id, counted  # type: ignore[return-value]


async def generate(rt: Runtime, payload: object, *, org_id: int, client_id: int | None = None,
                   client_ip: str | None = None) -> GenerateResult:
    """Issue (or re-send) a code for a customer of organisation org_id and send it over every planned channel at once.

    Raises OtpError with Capillary's codes; a failed channel is a 7001 warning while another succeeded.
    With a failover plan and no channels in the request, the plan's first channel is sent and the next
    ones get the same code if it fails (now) or is not delivered in time (later, run_due_failovers).
    The organisation's phone region reads the numbers, its time zone starts its days, its configuration,
    templates and gateways are used; the destination, prefix, IP and platform budget limits see every
    organisation's traffic (core.issuing.limits).
    """
    org = rt.org(org_id)
    request = parse_generate(payload, org.settings, org_id=org_id)
    config = rt.config_for(org_id, request.action)
    plan = failover_plan(request.entity, config) if request.channels is None else []
    targets = plan[:1] if plan else plan_channels(request, config)
    targets, rerouted = reroute(rt.read_db, org.settings, config, request, targets,
                                 rt.clock())  # email-only safe mode: phone channels go by EMAIL
    templates = resolve_all((t.channel for t in plan or targets), request.action, rt.active_templates(org_id),
                            request)
    user_key = request.entity.user_key
    test_number = rt.settings.is_test_number(request.entity.value)
    if not test_number:
        _check_countries(rt, plan or targets)
    gateways = [gateway_for(rt, config, t.channel, test_number) for t in targets]
    sends = list(zip(targets, gateways))
    # A later failover step (the poller's) must send with this request's own templates.
    kept = template_fields(request) if len(plan) > 1 else None
    body_templates = json.dumps(kept) if kept else None
    # Local gateways (the outbox) send inside the issuing transaction: one transaction per generate.
    local = all(is_local(g) for g in gateways)
    now = rt.clock()
    counters = [] if test_number else generate_counters(org.settings, config, entity=request.entity, targets=targets,
                                                        client_id=client_id, client_ip=client_ip, now=now)

    def issue(conn: Connection) -> tuple[IssuedCode, int, list[Counter], list[DeliveryReport], list[Send]]:
        issued, request_id, counted = _issue(conn, rt, entity=request.entity, config=config, counters=counters,
                                             client_id=client_id, now=now, test_number=test_number,
                                             body_templates=body_templates)
        if local:
            return issued, request_id, counted, send_within(conn, rt, config, request_id=request_id,
                                                             issued=issued, sends=sends, templates=templates,
                                                             now=now), []
        return issued, request_id, counted, [], [
            Send(insert_delivery(conn, org_id=org_id, request_id=request_id, code_id=issued.code_id, target=t, gateway=g,
                                   step=0, now=now), t, g, templates[t.channel]) for t, g in sends]

    for attempt in range(2):
        try:
            issued, request_id, counted, reports, queued = await rt.writer.run(issue)
            break
        except Refused as refused:
            raise await record_refusal(rt, refused, org_id=org_id, user_key=user_key, action=config.action.value,
                                        client_id=client_id, now=now) from None
        except (IntegrityError, LiveCodeRace):
            # Two first requests raced to insert the live code (possible on PostgreSQL only); the
            # loser rolled back and now finds the winner's code to re-send.
            if attempt:
                raise storage_error(RuntimeError("repeated conflict")) from None
        except DBAPIError as exc:
            raise storage_error(exc) from None

    if not local:  # network gateways: sent with no transaction open, then recorded
        reports = await deliver(rt, config, queued, issued.code, await_receipt=len(plan) > 1)
    if plan and reports and reports[0].status == "failed":
        reports += await fail_over(rt, config, request_id=request_id, code_id=issued.code_id, code=issued.code,
                                    user_key=user_key, plan=plan, templates=templates, from_step=0,
                                    test_number=test_number)

    if log.isEnabledFor(logging.INFO):  # the masked value and the channel list are built only when logged
        log.info("%s code %s for %s action %s over %s", "re-sent" if issued.resent else "issued", issued.code_id,
                 mask(request.entity.value), config.action.value, ",".join(r.channel for r in reports))
    failed = [r for r in reports if r.status == "failed"]
    for report in reports:
        metrics.generated(config.action.value, report.channel,
                          "failed" if report.status == "failed" else "resent" if issued.resent else "sent")
    warnings = [Problem(E.GATEWAY_ERROR, f"{r.channel} to {mask(r.destination)} failed: {public_reason(r)}")
                for r in failed]
    nobody = bool(reports) and len(failed) == len(reports)
    if nobody:
        # Nobody received anything: the request costs nothing, and the live code waits to be sent again.
        # (A failover step already gave back its own counts.)
        await give_back_counts(rt, counted, code_id=None if test_number else issued.code_id)
    elif failed:
        await give_back_counts(rt, failed_sends(counted, reports))
    if nobody:
        error = OtpError(warnings, 502)
        error.warnings.extend(rerouted)  # the email was tried and failed: say why the phone channel was not
        raise error
    if issued.resent:
        warnings.insert(0, Problem(E.RESENT_SAME_CODE, "the code issued earlier is still valid and was sent again"))
    warnings += rerouted
    return GenerateResult(1 if issued.resent else request_id, issued.resent, warnings, reports,
                          request_id, issued.code_id)
