"""Dashboard figures (daily usage, delivery, rate limits), each computed in SQL that runs on SQLite and PostgreSQL.

Datetimes are stored in UTC, while staff read days in a time zone of their choice. Every query that groups by
day joins a small list of the local days in the range, each with its UTC start and end computed in Python
(so DST days of 23 or 25 hours are right), instead of asking the database to convert time zones: SQLite
cannot, and the range join uses the created_at indexes on both databases.

Percentiles are nearest-rank (the value at rank ceil(p * n)), computed in SQL with window functions or
ORDER BY ... OFFSET, never by loading rows into Python. No function here reads or returns a code.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Float, Integer, String, and_, case, column, delete, exists, func, literal, \
    select, union_all, update
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement
from sqlalchemy.sql.functions import FunctionElement
from sqlmodel import Session
from sqlmodel.sql.sqltypes import UTCDateTime

from core import audit
from core.entities import mask
from core.models import Delivery, FailureCounter, LimitEvent, OtpCode, OtpRequest, OtpValidation, UsageCounter
from core.ratelimit import local_day, window_start
from core.staff import StaffIdentity, require

_request = OtpRequest.__table__
_code = OtpCode.__table__
_validation = OtpValidation.__table__
_delivery = Delivery.__table__
_limit = LimitEvent.__table__
_usage = UsageCounter.__table__
_failures = FailureCounter.__table__

PERCENTILES = (50, 95, 99)
# The days of a range become one SELECT each in a UNION ALL; SQLite allows 500 of them.
MAX_DAYS = 400


# --- filters and days -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Filters:
    """What every dashboard is filtered by: local days first..last (inclusive) in tz, an action, a channel."""
    first: date
    last: date
    tz: str = "UTC"
    action: str | None = None
    channel: str | None = None

    def __post_init__(self) -> None:
        if self.last < self.first:
            raise ValueError("the last day is before the first day")
        if self.day_count > MAX_DAYS:
            raise ValueError(f"choose at most {MAX_DAYS} days")
        ZoneInfo(self.tz)  # an unknown zone fails here, not inside a query

    @property
    def day_count(self) -> int:
        return (self.last - self.first).days + 1

    def previous(self) -> "Filters":
        """The period of the same length just before this one, for the KPI deltas."""
        return replace(self, first=self.first - timedelta(days=self.day_count),
                       last=self.first - timedelta(days=1))

    def days(self) -> list["LocalDay"]:
        zone = ZoneInfo(self.tz)
        return [LocalDay.of(self.first + timedelta(days=i), zone) for i in range(self.day_count)]

    @property
    def start(self) -> datetime:
        return utc_midnight(self.first, ZoneInfo(self.tz))

    @property
    def end(self) -> datetime:
        return utc_midnight(self.last + timedelta(days=1), ZoneInfo(self.tz))


def utc_midnight(day: date, zone: ZoneInfo) -> datetime:
    """The UTC instant at which day begins in zone."""
    return datetime.combine(day, time.min, tzinfo=zone).astimezone(timezone.utc)


@dataclass(frozen=True)
class LocalDay:
    day: date
    start: datetime  # UTC, inclusive
    end: datetime  # UTC, exclusive

    @classmethod
    def of(cls, day: date, zone: ZoneInfo) -> "LocalDay":
        return cls(day, utc_midnight(day, zone), utc_midnight(day + timedelta(days=1), zone))


def _days_table(filters: Filters):  # type: ignore[no-untyped-def]
    """The local days of the range as a small table: day (text), day_start, day_end (UTC instants).

    A UNION ALL of one-row SELECTs, since SQLite does not name the columns of a VALUES list.
    """
    rows = [select(literal(d.day.isoformat(), String()).label("day"),
                   literal(d.start, UTCDateTime()).label("day_start"),
                   literal(d.end, UTCDateTime()).label("day_end")) for d in filters.days()]
    return (union_all(*rows) if len(rows) > 1 else rows[0]).subquery("days")


def _in_range(created_at, filters: Filters):  # type: ignore[no-untyped-def]
    return and_(created_at >= filters.start, created_at < filters.end)


def _on_day(days, created_at):  # type: ignore[no-untyped-def]
    return and_(created_at >= days.c.day_start, created_at < days.c.day_end)


def _sent_on_channel(filters: Filters, *, request_id=None, code_id=None):  # type: ignore[no-untyped-def]
    """EXISTS a delivery over the filtered channel for this request (or code)."""
    link = _delivery.c.request_id == request_id if request_id is not None else _delivery.c.code_id == code_id
    return exists().where(link, _delivery.c.channel == filters.channel)


def _count_if(condition) -> ColumnElement:  # type: ignore[no-untyped-def]
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


class seconds_between(FunctionElement):
    """seconds_between(later, earlier): later - earlier in seconds, as a float, on both databases."""
    type = Float()
    inherit_cache = True
    name = "seconds_between"


@compiles(seconds_between)
def _seconds_between_default(element, compiler, **kw):  # type: ignore[no-untyped-def]
    later, earlier = (compiler.process(c, **kw) for c in element.clauses)
    return f"EXTRACT(EPOCH FROM ({later} - {earlier}))"


@compiles(seconds_between, "sqlite")
def _seconds_between_sqlite(element, compiler, **kw):  # type: ignore[no-untyped-def]
    later, earlier = (compiler.process(c, **kw) for c in element.clauses)
    return f"((julianday({later}) - julianday({earlier})) * 86400.0)"


def _rank(n, p: int):  # type: ignore[no-untyped-def]
    """Nearest rank ceil(p/100 * n) in integer arithmetic (SQLite may lack ceil())."""
    return (n * p + 99) // 100


def _window_percentiles(inner, group_columns: list[str], value: str, percentiles=PERCENTILES):  # type: ignore[no-untyped-def]
    """Per group, the nearest-rank percentiles of value, from a subquery with group_columns and value."""
    sub = inner.subquery("ranked_source")
    groups = [sub.c[g] for g in group_columns]
    ranked = select(*groups, sub.c[value].label("v"),
                    func.row_number().over(partition_by=groups, order_by=sub.c[value]).label("rn"),
                    func.count().over(partition_by=groups).label("n")).subquery("ranked")
    rgroups = [ranked.c[g] for g in group_columns]
    picks = [func.max(case((ranked.c.rn == _rank(ranked.c.n, p), ranked.c.v))).label(f"p{p}") for p in percentiles]
    return select(*rgroups, func.max(ranked.c.n).label("n"), *picks).group_by(*rgroups)


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(float(value), digits)


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


# --- daily usage ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class UsageRow:
    day: str
    action: str
    requests: int = 0
    issued: int = 0
    resent: int = 0
    validations: int = 0
    validated: int = 0  # successful validations
    codes_issued: int = 0  # codes first issued that day (the cohort of the conversion rate)
    codes_used: int = 0  # of those, used by now

    @property
    def conversion(self) -> float | None:
        return _ratio(self.codes_used, self.codes_issued)


def _request_counts(conn: Connection, filters: Filters) -> dict[tuple[str, str], tuple[int, int, int]]:
    days = _days_table(filters)
    r = _request
    query = (select(days.c.day, r.c.action, func.count().label("requests"), _count_if(r.c.kind == "issued"),
                    _count_if(r.c.kind == "resent"))
             .select_from(days).join(r, _on_day(days, r.c.created_at)).group_by(days.c.day, r.c.action))
    if filters.action:
        query = query.where(r.c.action == filters.action)
    if filters.channel:
        query = query.where(_sent_on_channel(filters, request_id=r.c.id))
    return {(row[0], row[1]): (int(row[2]), int(row[3]), int(row[4])) for row in conn.execute(query)}


def _validation_counts(conn: Connection, filters: Filters) -> dict[tuple[str, str], tuple[int, int]]:
    days = _days_table(filters)
    v = _validation
    query = (select(days.c.day, v.c.action, func.count(), _count_if(v.c.outcome == "ok"))
             .select_from(days).join(v, _on_day(days, v.c.created_at)).group_by(days.c.day, v.c.action))
    if filters.action:
        query = query.where(v.c.action == filters.action)
    if filters.channel:
        query = query.where(_sent_on_channel(filters, code_id=v.c.code_id))
    return {(row[0], row[1]): (int(row[2]), int(row[3])) for row in conn.execute(query)}


def _code_cohorts(conn: Connection, filters: Filters) -> dict[tuple[str, str], tuple[int, int]]:
    days = _days_table(filters)
    c = _code
    query = (select(days.c.day, c.c.action, func.count(), _count_if(c.c.state == "used"))
             .select_from(days).join(c, _on_day(days, c.c.created_at)).group_by(days.c.day, c.c.action))
    if filters.action:
        query = query.where(c.c.action == filters.action)
    if filters.channel:
        query = query.where(_sent_on_channel(filters, code_id=c.c.id))
    return {(row[0], row[1]): (int(row[2]), int(row[3])) for row in conn.execute(query)}


def daily_usage(conn: Connection, filters: Filters) -> list[UsageRow]:
    """Per local day and action: requests, codes issued, re-sends, validations (all and successful) and the
    issued codes of that day that were used. Only days and actions with activity are listed."""
    requests = _request_counts(conn, filters)
    validations = _validation_counts(conn, filters)
    cohorts = _code_cohorts(conn, filters)
    rows = []
    for key in sorted(set(requests) | set(validations) | set(cohorts)):
        req, val, coh = requests.get(key, (0, 0, 0)), validations.get(key, (0, 0)), cohorts.get(key, (0, 0))
        rows.append(UsageRow(key[0], key[1], *req, *val, *coh))
    return rows


@dataclass(frozen=True)
class ValidateTimes:
    """Seconds from a code's issue to its successful validation, nearest-rank percentiles."""
    count: int
    p50: float | None
    p95: float | None


def _used_codes(filters: Filters, days=None):  # type: ignore[no-untyped-def]
    c = _code
    seconds = seconds_between(c.c.used_at, c.c.created_at).label("seconds")
    if days is None:
        query = select(literal("all").label("day"), seconds).where(_in_range(c.c.created_at, filters))
    else:
        query = select(days.c.day, seconds).select_from(days).join(c, _on_day(days, c.c.created_at))
    query = query.where(c.c.state == "used", c.c.used_at.is_not(None))
    if filters.action:
        query = query.where(c.c.action == filters.action)
    if filters.channel:
        query = query.where(_sent_on_channel(filters, code_id=c.c.id))
    return query


def time_to_validate(conn: Connection, filters: Filters) -> ValidateTimes:
    """Over the codes issued in the range and used since."""
    row = conn.execute(_window_percentiles(_used_codes(filters), ["day"], "seconds", (50, 95))).first()
    if row is None:
        return ValidateTimes(0, None, None)
    return ValidateTimes(int(row.n), _round(row.p50), _round(row.p95))


def time_to_validate_by_day(conn: Connection, filters: Filters) -> dict[str, ValidateTimes]:
    query = _window_percentiles(_used_codes(filters, _days_table(filters)), ["day"], "seconds", (50, 95))
    return {row.day: ValidateTimes(int(row.n), _round(row.p50), _round(row.p95)) for row in conn.execute(query)}


@dataclass(frozen=True)
class UsageTotals:
    requests: int
    issued: int
    resent: int
    validations: int
    validated: int
    codes_issued: int
    codes_used: int
    ttv: ValidateTimes

    @property
    def conversion(self) -> float | None:
        return _ratio(self.codes_used, self.codes_issued)


def usage_totals(conn: Connection, filters: Filters) -> UsageTotals:
    """The KPI row of the daily-usage page: sums over the whole range."""
    r, v, c = _request, _validation, _code
    req = select(func.count(), _count_if(r.c.kind == "issued"), _count_if(r.c.kind == "resent")).where(
        _in_range(r.c.created_at, filters))
    val = select(func.count(), _count_if(v.c.outcome == "ok")).where(_in_range(v.c.created_at, filters))
    coh = select(func.count(), _count_if(c.c.state == "used")).where(_in_range(c.c.created_at, filters))
    if filters.action:
        req, val, coh = (req.where(r.c.action == filters.action), val.where(v.c.action == filters.action),
                         coh.where(c.c.action == filters.action))
    if filters.channel:
        req = req.where(_sent_on_channel(filters, request_id=r.c.id))
        val = val.where(_sent_on_channel(filters, code_id=v.c.code_id))
        coh = coh.where(_sent_on_channel(filters, code_id=c.c.id))
    a, b, d = conn.execute(req).one(), conn.execute(val).one(), conn.execute(coh).one()
    return UsageTotals(int(a[0]), int(a[1]), int(a[2]), int(b[0]), int(b[1]), int(d[0]), int(d[1]),
                       time_to_validate(conn, filters))


# --- delivery ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DeliveryRow:
    channel: str
    gateway: str
    messages: int
    queued: int
    sent: int  # accepted by the gateway, no receipt yet
    delivered: int
    failed: int
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None

    @property
    def delivery_rate(self) -> float | None:
        return _ratio(self.delivered, self.messages)

    @property
    def failure_rate(self) -> float | None:
        return _ratio(self.failed, self.messages)


def _delivery_filters(query, filters: Filters):  # type: ignore[no-untyped-def]
    d = _delivery
    query = query.where(_in_range(d.c.created_at, filters))
    if filters.channel:
        query = query.where(d.c.channel == filters.channel)
    if filters.action:  # delivery rows do not name the action: ask their request
        query = query.where(exists().where(_request.c.id == d.c.request_id, _request.c.action == filters.action))
    return query


def latency_percentiles(conn: Connection, filters: Filters) -> dict[tuple[str, str], tuple[float | None, ...]]:
    """Gateway latency p50/p95/p99 (ms) per channel and gateway.

    One count per pair, then each percentile is one indexed ORDER BY ... LIMIT 1 OFFSET k, read from
    whichever end of the order is nearer (p99 is 1% from the top), so no full sort is needed.
    """
    d = _delivery
    timed = d.c.latency_ms.is_not(None)
    counts = conn.execute(_delivery_filters(
        select(d.c.channel, d.c.gateway, func.count()).where(timed).group_by(d.c.channel, d.c.gateway), filters))
    found: dict[tuple[str, str], tuple[float | None, ...]] = {}
    for channel, gateway, n in counts.all():
        picks = []
        for p in PERCENTILES:
            rank = (n * p + 99) // 100  # 1-based
            from_top = rank > n - rank
            order = d.c.latency_ms.desc() if from_top else d.c.latency_ms.asc()
            offset = n - rank if from_top else rank - 1
            query = _delivery_filters(select(d.c.latency_ms).where(
                timed, d.c.channel == channel, d.c.gateway == gateway), filters)
            picks.append(_round(conn.execute(query.order_by(order).limit(1).offset(offset)).scalar(), 1))
        found[(channel, gateway)] = tuple(picks)
    return found


def delivery_summary(conn: Connection, filters: Filters) -> list[DeliveryRow]:
    """Per channel and gateway: messages by status and latency percentiles."""
    d = _delivery
    query = _delivery_filters(select(
        d.c.channel, d.c.gateway, func.count(), _count_if(d.c.status == "queued"), _count_if(d.c.status == "sent"),
        _count_if(d.c.status == "delivered"), _count_if(d.c.status == "failed"),
    ).group_by(d.c.channel, d.c.gateway).order_by(d.c.channel, d.c.gateway), filters)
    latency = latency_percentiles(conn, filters)
    rows = []
    for channel, gateway, *counts in conn.execute(query):
        rows.append(DeliveryRow(channel, gateway, *(int(x) for x in counts),
                                *latency.get((channel, gateway), (None, None, None))))
    return rows


@dataclass(frozen=True)
class DeliveryDay:
    day: str
    channel: str
    messages: int
    delivered: int
    failed: int


def delivery_by_day(conn: Connection, filters: Filters) -> list[DeliveryDay]:
    days = _days_table(filters)
    d = _delivery
    query = (select(days.c.day, d.c.channel, func.count(), _count_if(d.c.status == "delivered"),
                    _count_if(d.c.status == "failed"))
             .select_from(days).join(d, _on_day(days, d.c.created_at))
             .group_by(days.c.day, d.c.channel).order_by(days.c.day, d.c.channel))
    if filters.channel:
        query = query.where(d.c.channel == filters.channel)
    if filters.action:
        query = query.where(exists().where(_request.c.id == d.c.request_id, _request.c.action == filters.action))
    return [DeliveryDay(row[0], row[1], int(row[2]), int(row[3]), int(row[4])) for row in conn.execute(query)]


@dataclass(frozen=True)
class FailureCount:
    channel: str
    gateway: str
    error: str
    count: int


def failures_by_error(conn: Connection, filters: Filters, *, top: int = 20) -> list[FailureCount]:
    d = _delivery
    error = func.coalesce(d.c.error, "(no error text)")
    query = _delivery_filters(select(d.c.channel, d.c.gateway, error.label("error"), func.count().label("n"))
                              .where(d.c.status == "failed").group_by(d.c.channel, d.c.gateway, error)
                              .order_by(func.count().desc(), d.c.channel, d.c.gateway, error).limit(top), filters)
    return [FailureCount(row[0], row[1], row[2], int(row[3])) for row in conn.execute(query)]


@dataclass(frozen=True)
class LiveChannel:
    channel: str
    messages: int
    delivered: int
    failed: int
    queued: int


def live_delivery(conn: Connection, *, now: datetime, minutes: int = 15) -> list[LiveChannel]:
    """The last few minutes per channel, for the self-refreshing panel."""
    d = _delivery
    query = (select(d.c.channel, func.count(), _count_if(d.c.status == "delivered"), _count_if(d.c.status == "failed"),
                    _count_if(d.c.status.in_(("queued", "sent"))))
             .where(d.c.created_at >= now - timedelta(minutes=minutes), d.c.created_at <= now)
             .group_by(d.c.channel).order_by(d.c.channel))
    return [LiveChannel(row[0], *(int(x) for x in row[1:])) for row in conn.execute(query)]


@dataclass(frozen=True)
class TimelineEvent:
    at: datetime
    event: str
    detail: str


@dataclass(frozen=True)
class RequestTimeline:
    request_id: int
    action: str
    kind: str
    user: str  # masked
    events: list[TimelineEvent] = field(default_factory=list)


def find_requests(conn: Connection, *, recipient: str, limit: int = 50) -> list[int]:
    """Ids of the newest requests sent to recipient (a destination exactly as stored, e.g. +919955882233)."""
    value = recipient.strip().lower()
    if not value:
        return []
    d = _delivery
    query = (select(d.c.request_id).where(d.c.destination == value).group_by(d.c.request_id)
             .order_by(d.c.request_id.desc()).limit(limit))
    return [int(r) for r in conn.execute(query).scalars()]


def request_timeline(conn: Connection, request_id: int) -> RequestTimeline | None:
    """What happened to one request: its acceptance, each delivery, and the validations of its code.

    Recipients are masked; the code itself is never selected.
    """
    req = conn.execute(select(_request.c.id, _request.c.created_at, _request.c.action, _request.c.kind,
                              _request.c.user_key, _request.c.code_id).where(_request.c.id == request_id)).first()
    if req is None:
        return None
    events = [TimelineEvent(req.created_at, "request accepted", f"{req.kind} code #{req.code_id}")]
    d = _delivery
    for row in conn.execute(select(d.c.created_at, d.c.updated_at, d.c.channel, d.c.gateway, d.c.destination,
                                   d.c.status, d.c.error, d.c.latency_ms, d.c.attempts)
                            .where(d.c.request_id == request_id).order_by(d.c.id)):
        events.append(TimelineEvent(row.created_at, f"{row.channel} queued",
                                    f"to {mask(row.destination)} via {row.gateway}"))
        latency = f", {row.latency_ms:.0f} ms" if row.latency_ms is not None else ""
        detail = f"{row.status} after {row.attempts} attempt(s){latency}"
        if row.error:
            detail += f": {row.error}"
        events.append(TimelineEvent(row.updated_at, f"{row.channel} {row.status}", detail))
    v = _validation
    for row in conn.execute(select(v.c.created_at, v.c.outcome).where(v.c.code_id == req.code_id,
                                                                      v.c.created_at >= req.created_at)
                            .order_by(v.c.id)):
        events.append(TimelineEvent(row.created_at, "validation", row.outcome))
    events.sort(key=lambda e: e.at)
    return RequestTimeline(req.id, req.action, req.kind, mask(req.user_key.split(":", 1)[-1]), events)


# --- rate limits ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NearLimit:
    user_key: str
    user: str  # masked
    count: int
    limit: int

    @property
    def share(self) -> float:
        return self.count / self.limit


def nearest_daily_limit(conn: Connection, *, day: str, limit: int, top: int = 20) -> list[NearLimit]:
    """The users with the most accepted generates on day (the limit's local day), highest first."""
    u = _usage
    query = (select(u.c.user_key, u.c.count).where(u.c.scope == "daily:*", u.c.period == day)
             .order_by(u.c.count.desc(), u.c.user_key).limit(top))
    return [NearLimit(key, mask_user(key), int(n), limit) for key, n in conn.execute(query)]


def mask_user(user_key: str) -> str:
    kind, _, value = user_key.partition(":")
    return f"{kind}:{mask(value)}" if value else mask(user_key)


# Names staff know the limits by; 'attempts' is a code burned by too many wrong guesses (a validation
# outcome, not a refusal event).
LIMIT_TYPES = ("daily", "action_daily", "code_sends", "validate", "lock", "attempts")


def refusals_by_type(conn: Connection, filters: Filters) -> dict[str, int]:
    e, v = _limit, _validation
    query = select(e.c.limit_type, func.count()).where(_in_range(e.c.created_at, filters)).group_by(e.c.limit_type)
    burned = select(func.count()).where(_in_range(v.c.created_at, filters), v.c.outcome == "burned")
    if filters.action:
        query, burned = query.where(e.c.action == filters.action), burned.where(v.c.action == filters.action)
    found = {t: 0 for t in LIMIT_TYPES}
    found.update({t: int(n) for t, n in conn.execute(query)})
    found["attempts"] = int(conn.execute(burned).scalar_one())
    return found


def refusals_by_day(conn: Connection, filters: Filters) -> list[tuple[str, str, int]]:
    days = _days_table(filters)
    e = _limit
    query = (select(days.c.day, e.c.limit_type, func.count()).select_from(days)
             .join(e, _on_day(days, e.c.created_at)).group_by(days.c.day, e.c.limit_type)
             .order_by(days.c.day, e.c.limit_type))
    if filters.action:
        query = query.where(e.c.action == filters.action)
    return [(row[0], row[1], int(row[2])) for row in conn.execute(query)]


@dataclass(frozen=True)
class RefusedUser:
    user_key: str
    user: str  # masked
    refusals: int
    last_at: datetime
    kinds: str


def top_refused_users(conn: Connection, filters: Filters, *, top: int = 20) -> list[RefusedUser]:
    e = _limit
    query = (select(e.c.user_key, func.count().label("n"), func.max(e.c.created_at).label("last_at"))
             .where(_in_range(e.c.created_at, filters)).group_by(e.c.user_key)
             .order_by(func.count().desc(), e.c.user_key).limit(top))
    if filters.action:
        query = query.where(e.c.action == filters.action)
    users = conn.execute(query).all()
    if not users:
        return []
    kinds_query = (select(e.c.user_key, e.c.limit_type).where(_in_range(e.c.created_at, filters),
                                                              e.c.user_key.in_([u[0] for u in users]))
                   .group_by(e.c.user_key, e.c.limit_type))
    if filters.action:
        kinds_query = kinds_query.where(e.c.action == filters.action)
    kinds: dict[str, list[str]] = {}
    for key, kind in conn.execute(kinds_query):
        kinds.setdefault(key, []).append(kind)
    return [RefusedUser(key, mask_user(key), int(n), last_at, ", ".join(sorted(kinds.get(key, []))))
            for key, n, last_at in users]


def top_refused_prefixes(conn: Connection, filters: Filters, *, digits: int = 7, top: int = 20) -> list[tuple[str, int, int]]:
    """Phone-number prefixes ('+91995588', 'MOBILE:' dropped) with the most refusals, and how many users."""
    e = _limit
    start = len("MOBILE:") + 1
    prefix = func.substr(e.c.user_key, start, digits + 1)  # '+' and digits
    query = (select(prefix.label("prefix"), func.count(), func.count(func.distinct(e.c.user_key)))
             .where(_in_range(e.c.created_at, filters), e.c.user_key.startswith("MOBILE:"))
             .group_by(prefix).order_by(func.count().desc(), prefix).limit(top))
    if filters.action:
        query = query.where(e.c.action == filters.action)
    return [(row[0], int(row[1]), int(row[2])) for row in conn.execute(query)]


@dataclass(frozen=True)
class Block:
    """One reason a user is refused now, and when it lifts by itself."""
    limit_type: str
    action: str | None
    detail: str
    lifts_at: datetime | None


@dataclass(frozen=True)
class UserLimits:
    user_key: str
    user: str
    blocks: list[Block]
    recent: list[tuple[datetime, str, str]]  # (at, limit_type, action) of the newest refusals


def why_refused(conn: Connection, *, user_key: str, now: datetime, tz: ZoneInfo, daily_limit: int,
                configs: dict, recent: int = 20) -> UserLimits:
    """For one user: every limit refusing them at now and when each lifts, plus their newest refusals.

    configs maps an action name to its OtpConfig (caps, validate window, sends per code).
    """
    blocks: list[Block] = []
    day = local_day(now, tz)
    tomorrow = utc_midnight(date.fromisoformat(day) + timedelta(days=1), tz)
    u = _usage
    for scope, count in conn.execute(select(u.c.scope, u.c.count).where(
            u.c.user_key == user_key, u.c.period == day, u.c.scope.startswith("daily:"))):
        action = scope.split(":", 1)[1]
        if action == "*" and count >= daily_limit:
            blocks.append(Block("daily", None, f"{count} of {daily_limit} generates today", tomorrow))
        elif action != "*" and action in configs and configs[action].daily_cap is not None \
                and count >= configs[action].daily_cap:
            blocks.append(Block("action_daily", action, f"{count} of {configs[action].daily_cap} generates "
                                f"today for {action}", tomorrow))
    for action, config in configs.items():
        start = window_start(now, config.validate_window_minutes)
        count = conn.execute(select(u.c.count).where(u.c.user_key == user_key, u.c.scope == f"validate:{action}",
                                                     u.c.period == str(start))).scalar()
        if count is not None and count >= config.validate_limit:
            lifts = datetime.fromtimestamp(start + config.validate_window_minutes * 60, timezone.utc)
            blocks.append(Block("validate", action, f"{count} of {config.validate_limit} validations in this "
                                f"{config.validate_window_minutes}-minute window", lifts))
    f = _failures
    for action, until, consecutive in conn.execute(select(f.c.action, f.c.locked_until, f.c.consecutive).where(
            f.c.user_key == user_key, f.c.locked_until.is_not(None), f.c.locked_until > now)):
        blocks.append(Block("lock", action, f"locked after {consecutive} consecutive failed validations", until))
    c = _code
    for action, sends, expires in conn.execute(select(c.c.action, c.c.send_count, c.c.expires_at).where(
            c.c.user_key == user_key, c.c.state == "active", c.c.expires_at > now)):
        if action in configs and sends >= configs[action].max_sends_per_code:
            blocks.append(Block("code_sends", action, f"the live code was sent {sends} times", expires))
    e = _limit
    events = [(row[0], row[1], row[2]) for row in conn.execute(
        select(e.c.created_at, e.c.limit_type, e.c.action).where(e.c.user_key == user_key)
        .order_by(e.c.created_at.desc(), e.c.id.desc()).limit(recent))]
    return UserLimits(user_key, mask_user(user_key), blocks, events)


UNBLOCKABLE = ("daily", "action_daily", "validate", "lock")


def unblock(session: Session, *, actor: StaffIdentity, user_key: str, limit_type: str, action: str | None,
            reason: str, now: datetime, tz: ZoneInfo) -> int:
    """Lift one limit for one user now (admins only), audited in the same transaction; rows changed.

    daily / action_daily reset today's counter, validate resets the current window, lock clears the
    consecutive failures. A live code's send cap is not lifted: it ends when the code expires.
    """
    require(session, actor, "config.edit")
    if limit_type not in UNBLOCKABLE:
        raise ValueError(f"{limit_type} cannot be lifted by hand")
    if limit_type != "daily" and not action:
        raise ValueError("name the action to unblock")
    if not reason.strip():
        raise ValueError("say why (kept in the audit log)")
    u = _usage
    if limit_type in ("daily", "action_daily"):
        scope = "daily:*" if limit_type == "daily" else f"daily:{action}"
        stmt = delete(u).where(u.c.scope == scope, u.c.user_key == user_key, u.c.period == local_day(now, tz))
    elif limit_type == "validate":
        stmt = delete(u).where(u.c.scope == f"validate:{action}", u.c.user_key == user_key)
    else:
        stmt = update(_failures).where(_failures.c.user_key == user_key, _failures.c.action == action) \
            .values(consecutive=0, locked_until=None)
    changed = session.execute(stmt).rowcount or 0
    audit.record(session, actor=actor.username, action="limits.unblock", target=f"user:{user_key}",
                 detail={"limit": limit_type, "action": action, "rows": changed}, reason=reason.strip())
    session.commit()
    return changed
