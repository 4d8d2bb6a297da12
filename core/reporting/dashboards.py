"""Dashboard figures (daily usage, delivery, rate limits), each computed in SQL that runs on SQLite and PostgreSQL.

Datetimes are stored in UTC, while staff read days in a time zone of their choice. Every query that groups by
day joins a small list of the local days in the range, each with its UTC start and end computed in Python
(so DST days of 23 or 25 hours are right), instead of asking the database to convert time zones.

Usage and delivery figures read the rollup tables of core.reporting.rollups (counts per 15-minute UTC bucket), which
are brought up to date before each query; a local day of any time zone in use is a whole run of buckets, so
the counts are exact. Percentiles are nearest-rank (the value at rank ceil(p * n)), read from the rollups'
histograms and reported as the upper edge of the bin holding that rank (core.histogram: bins about 6% wide).
The rate-limit figures read the raw tables through their indexes. No function here reads or returns a code, and
none writes (lifting a limit by hand is core.admin.unblock).

Every figure is of one organisation (Filters.org_id, or org_id=...), or of every organisation (None) for platform
admins, with org_breakdown() splitting the totals per organisation. Each function first asks core.reporting.access
whether the signed-in person (staff_id) may read that, then reads only that organisation's rows: the rollups and
the raw tables lead their indexes with org_id, and "every organisation" is the list of them (an IN the indexes
can seek), never an unfiltered scan.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Integer, String, and_, case, column, func, literal, or_, select, union_all, values
from sqlalchemy.sql.expression import ColumnElement
from sqlmodel.sql.sqltypes import UTCDateTime

from core.db.models import Delivery, LimitEvent, OtpCode, OtpRequest, OtpValidation, UsageCounter
from core.enums import EntityType
from core.histogram import percentile
from core.issuing.entities import NormalisedEntity, mask, split_user_key
from core.issuing.entities import user_key as customer_key
from core.issuing.limits import Refusal, explain_refusal, suited_targets
from core.reporting import access, rollups
from core.reporting.access import NotAllowed
from core.settings import Settings

_request = OtpRequest.__table__
_code = OtpCode.__table__
_validation = OtpValidation.__table__
_delivery = Delivery.__table__
_limit = LimitEvent.__table__
_usage = UsageCounter.__table__

PERCENTILES = (50, 95, 99)
# The days of a range become one SELECT each in a UNION ALL; SQLite allows 500 of them.
MAX_DAYS = 400


# --- filters and days -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """What every dashboard is filtered by: local days first..last (inclusive) in tz, an action, a channel, and
    the organisation (None: every organisation, platform admins only), asked by staff_id (None: the service)."""
    first: date
    last: date
    tz: str = "UTC"
    action: str | None = None
    channel: str | None = None
    org_id: int | None = 1
    staff_id: int | None = None

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


def _orgs(conn: Connection, org_id: int | None, staff_id: int | None) -> list[int]:
    """The organisations a question may read, after checking that staff_id may ask it (NotAllowed if not)."""
    access.check(conn, staff_id=staff_id, org_id=org_id)
    return access.org_ids(conn, org_id)


def _of(column, orgs: list[int]) -> ColumnElement:  # type: ignore[no-untyped-def]
    """column (an org_id) in orgs: one equality for one organisation, else an IN the index seeks per value."""
    return column == orgs[0] if len(orgs) == 1 else column.in_(orgs)


def _scope(conn: Connection, filters: Filters) -> list[int]:
    return _orgs(conn, filters.org_id, filters.staff_id)


def _on_day(days, created_at):  # type: ignore[no-untyped-def]
    return and_(created_at >= days.c.day_start, created_at < days.c.day_end)


def _count_if(condition) -> ColumnElement:  # type: ignore[no-untyped-def]
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(float(value), digits)


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


# --- reading the rollups ----------------------------------------------------------------------------------

def _fresh(conn: Connection) -> None:
    """Bring the rollups up to date (on a connection of its own) before conn reads them."""
    rollups.refresh(conn.engine)


def _bucket(moment: datetime) -> int:
    if moment.timestamp() % rollups.QUARTER:
        raise ValueError(f"a day in this range begins at {moment:%H:%M:%S} UTC, not on a quarter hour: "
                         "its time zone had an offset the 15-minute rollups cannot split exactly")
    return rollups.bucket_of(moment)


def _buckets(filters: Filters):  # type: ignore[no-untyped-def]
    """The quarter hours of the whole range: first and stop (exclusive)."""
    return _bucket(filters.start), _bucket(filters.end)


def _rows(runs: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
    """The (span, bucket) of every rollup row in runs (of rollups.cover)."""
    return [(span, bucket) for span, first, stop in runs for bucket in range(first, stop, span)]


def _range_rows(filters: Filters):  # type: ignore[no-untyped-def]
    """The rollup rows of the whole range as a small table: span, bucket (rollups.cover), joined by equality.

    Equality, not a range per run: PostgreSQL estimates a join on bucket ranges so poorly that it hashed on span
    and filtered every row of the organisations (0.7-1 s at 10 organisations); on (span, bucket) it probes the
    primary key, as SQLite does either way."""
    rows = _rows(rollups.cover(*_buckets(filters)))
    return values(column("span", Integer()), column("bucket", Integer()), name="runs").data(rows).cte("runs")


def _bucket_days(filters: Filters):  # type: ignore[no-untyped-def]
    """The local days of the range as a small table of the rollup rows of each: day (text), span, bucket.

    A VALUES list named in its CTE (SQLite names no VALUES columns elsewhere, and allows 500 UNION terms)."""
    rows = [(d.day.isoformat(), *row) for d in filters.days()
            for row in _rows(rollups.cover(_bucket(d.start), _bucket(d.end)))]
    return values(column("day", String()), column("span", Integer()), column("bucket", Integer()),
                  name="days").data(rows).cte("days")


def _on_row(listed, table):  # type: ignore[no-untyped-def]
    """table's rows listed in listed (of _range_rows or _bucket_days)."""
    return and_(table.c.span == listed.c.span, table.c.bucket == listed.c.bucket)


def _histogram(table) -> list[ColumnElement]:  # type: ignore[no-untyped-def]
    return [func.sum(table.c[h]) for h in rollups.HISTOGRAM]


def _percentiles(counts, largest: float | None, percentiles=PERCENTILES, digits: int = 3) -> tuple:  # type: ignore[no-untyped-def]
    counts = [int(c or 0) for c in counts]
    return tuple(_round(percentile(counts, p, largest), digits) for p in percentiles)


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


def _usage_rows(filters: Filters, orgs: list[int]):  # type: ignore[no-untyped-def]
    """usage_rollup rows of the organisations, the filtered channel ('*' for all) and action ('*' for all)."""
    u = rollups.usage
    return u, and_(_of(u.c.org_id, orgs), u.c.channel == (filters.channel or rollups.ALL),
                   u.c.action == (filters.action or rollups.ALL))


def daily_usage(conn: Connection, filters: Filters) -> list[UsageRow]:
    """Per local day and action: requests, codes issued, re-sends, validations (all and successful) and the
    issued codes of that day that were used. Only days and actions with activity are listed."""
    _fresh(conn)  # first: on SQLite a writable conn that has read holds the write lock the refresh needs
    orgs = _scope(conn, filters)
    days = _bucket_days(filters)
    u = rollups.usage
    action = u.c.action == filters.action if filters.action else u.c.action != rollups.ALL
    query = (select(days.c.day, u.c.action, *[func.sum(u.c[n]) for n in rollups.USAGE_COUNTS])
             .select_from(days).join(u, _on_row(days, u))
             .where(_of(u.c.org_id, orgs), u.c.channel == (filters.channel or rollups.ALL), action)
             .group_by(days.c.day, u.c.action).order_by(days.c.day, u.c.action))
    return [UsageRow(row[0], row[1], *(int(x) for x in row[2:])) for row in conn.execute(query)]


@dataclass(frozen=True)
class ValidateTimes:
    """Seconds from a code's issue to its successful validation, nearest-rank percentiles (bin upper edges)."""
    count: int
    p50: float | None
    p95: float | None


def _validate_times(histogram, largest_us) -> ValidateTimes:  # type: ignore[no-untyped-def]
    counts = [int(c or 0) for c in histogram]
    largest = None if largest_us is None else int(largest_us) / 1_000_000
    return ValidateTimes(sum(counts), *_percentiles(counts, largest, (50, 95)))


def time_to_validate(conn: Connection, filters: Filters) -> ValidateTimes:
    """Over the codes issued in the range and used since."""
    return usage_totals(conn, filters).ttv


def time_to_validate_by_day(conn: Connection, filters: Filters) -> dict[str, ValidateTimes]:
    _fresh(conn)  # first: on SQLite a writable conn that has read holds the write lock the refresh needs
    orgs = _scope(conn, filters)
    days = _bucket_days(filters)
    u, chosen = _usage_rows(filters, orgs)
    query = (select(days.c.day, func.max(u.c.ttv_max_us), *_histogram(u)).select_from(days)
             .join(u, _on_row(days, u)).where(chosen, u.c.codes_used > 0).group_by(days.c.day))
    found = {row[0]: _validate_times(row[2:], row[1]) for row in conn.execute(query)}
    return {day: times for day, times in found.items() if times.count}


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
    """The KPI row of the daily-usage page: sums over the whole range, and time to validate."""
    _fresh(conn)  # first: on SQLite a writable conn that has read holds the write lock the refresh needs
    orgs = _scope(conn, filters)
    runs = _range_rows(filters)
    u, chosen = _usage_rows(filters, orgs)
    row = conn.execute(select(*[func.sum(u.c[n]) for n in rollups.USAGE_COUNTS], func.max(u.c.ttv_max_us),
                              *_histogram(u)).select_from(runs).join(u, _on_row(runs, u)).where(chosen)).one()
    counts = [int(x or 0) for x in row[:len(rollups.USAGE_COUNTS)]]
    rest = row[len(rollups.USAGE_COUNTS):]
    return UsageTotals(*counts, _validate_times(rest[1:], rest[0]))


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


def _delivery_rows(table, filters: Filters, orgs: list[int]):  # type: ignore[no-untyped-def]
    """Rows of a delivery rollup for the organisations, the filtered action ('*' for all) and channel."""
    chosen = and_(_of(table.c.org_id, orgs), table.c.action == (filters.action or rollups.ALL))
    return and_(chosen, table.c.channel == filters.channel) if filters.channel else chosen


def delivery_summary(conn: Connection, filters: Filters) -> list[DeliveryRow]:
    """Per channel and gateway: messages by status and gateway latency p50/p95/p99 (ms, bin upper edges)."""
    _fresh(conn)  # first: on SQLite a writable conn that has read holds the write lock the refresh needs
    orgs = _scope(conn, filters)
    runs = _range_rows(filters)
    d = rollups.deliveries
    query = (select(d.c.channel, d.c.gateway, *[func.sum(d.c[n]) for n in rollups.DELIVERY_COUNTS],
                    func.max(d.c.latency_max_ms), *_histogram(d))
             .select_from(runs).join(d, _on_row(runs, d)).where(_delivery_rows(d, filters, orgs))
             .group_by(d.c.channel, d.c.gateway).order_by(d.c.channel, d.c.gateway))
    rows = []
    width = len(rollups.DELIVERY_COUNTS)
    for row in conn.execute(query):
        counts = [int(x) for x in row[2:2 + width]]
        largest, histogram = row[2 + width], row[3 + width:]
        rows.append(DeliveryRow(row[0], row[1], *counts, *_percentiles(histogram, largest, PERCENTILES, 1)))
    return rows


def latency_percentiles(conn: Connection, filters: Filters) -> dict[tuple[str, str], tuple[float | None, ...]]:
    """Gateway latency p50/p95/p99 (ms) per channel and gateway."""
    return {(r.channel, r.gateway): (r.p50_ms, r.p95_ms, r.p99_ms) for r in delivery_summary(conn, filters)}


@dataclass(frozen=True)
class DeliveryDay:
    day: str
    channel: str
    messages: int
    delivered: int
    failed: int


def delivery_by_day(conn: Connection, filters: Filters) -> list[DeliveryDay]:
    _fresh(conn)  # first: on SQLite a writable conn that has read holds the write lock the refresh needs
    orgs = _scope(conn, filters)
    days = _bucket_days(filters)
    d = rollups.deliveries
    query = (select(days.c.day, d.c.channel, func.sum(d.c.messages), func.sum(d.c.delivered), func.sum(d.c.failed))
             .select_from(days).join(d, _on_row(days, d)).where(_delivery_rows(d, filters, orgs))
             .group_by(days.c.day, d.c.channel).order_by(days.c.day, d.c.channel))
    return [DeliveryDay(row[0], row[1], int(row[2]), int(row[3]), int(row[4])) for row in conn.execute(query)]


@dataclass(frozen=True)
class FailureCount:
    channel: str
    gateway: str
    error: str
    count: int


def failures_by_error(conn: Connection, filters: Filters, *, top: int = 20) -> list[FailureCount]:
    _fresh(conn)  # first: on SQLite a writable conn that has read holds the write lock the refresh needs
    orgs = _scope(conn, filters)
    runs = _range_rows(filters)
    f = rollups.failures
    n = func.sum(f.c.failures)
    query = (select(f.c.channel, f.c.gateway, f.c.error, n)
             .select_from(runs).join(f, _on_row(runs, f)).where(_delivery_rows(f, filters, orgs))
             .group_by(f.c.channel, f.c.gateway, f.c.error).order_by(n.desc(), f.c.channel, f.c.gateway, f.c.error)
             .limit(top))
    return [FailureCount(row[0], row[1], row[2], int(row[3])) for row in conn.execute(query)]


@dataclass(frozen=True)
class LiveChannel:
    channel: str
    messages: int
    delivered: int
    failed: int
    queued: int


def live_delivery(conn: Connection, *, now: datetime, minutes: int = 15, org_id: int | None,
                  staff_id: int | None = None) -> list[LiveChannel]:
    """The last few minutes per channel, for the self-refreshing panel."""
    orgs = _orgs(conn, org_id, staff_id)
    d = _delivery
    query = (select(d.c.channel, func.count(), _count_if(d.c.status == "delivered"), _count_if(d.c.status == "failed"),
                    _count_if(d.c.status.in_(("queued", "sent"))))
             .where(_of(d.c.org_id, orgs), d.c.created_at >= now - timedelta(minutes=minutes), d.c.created_at <= now)
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


def find_requests(conn: Connection, *, recipient: str, limit: int = 50, org_id: int | None,
                  staff_id: int | None = None) -> list[int]:
    """Ids of the organisation's newest requests sent to recipient (a destination exactly as stored, e.g.
    +919955882233; the same number may be a customer of several organisations)."""
    orgs = _orgs(conn, org_id, staff_id)
    value = recipient.strip().lower()
    if not value:
        return []
    d = _delivery
    query = (select(d.c.request_id).where(d.c.destination == value, _of(d.c.org_id, orgs)).group_by(d.c.request_id)
             .order_by(d.c.request_id.desc()).limit(limit))
    return [int(r) for r in conn.execute(query).scalars()]


def request_timeline(conn: Connection, request_id: int, *, org_id: int | None,
                     staff_id: int | None = None) -> RequestTimeline | None:
    """What happened to one request of the organisation: its acceptance, each delivery, and the validations of
    its code. Another organisation's request id answers None, like a missing one.

    Recipients are masked; the code itself is never selected.
    """
    orgs = _orgs(conn, org_id, staff_id)
    req = conn.execute(select(_request.c.id, _request.c.created_at, _request.c.action, _request.c.kind,
                              _request.c.user_key, _request.c.code_id)
                       .where(_request.c.id == request_id, _of(_request.c.org_id, orgs))).first()
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
    return RequestTimeline(req.id, req.action, req.kind, mask(split_user_key(req.user_key)[2]), events)


# --- every organisation ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class OrgFigures:
    """One organisation's line of the all-organisations view (the filters' days, action and channel)."""
    org_id: int
    requests: int = 0
    issued: int = 0
    validated: int = 0
    codes_issued: int = 0
    codes_used: int = 0
    messages: int = 0
    delivered: int = 0
    failed: int = 0
    refusals: int = 0

    @property
    def conversion(self) -> float | None:
        return _ratio(self.codes_used, self.codes_issued)

    @property
    def delivery_rate(self) -> float | None:
        return _ratio(self.delivered, self.messages)


def org_breakdown(conn: Connection, filters: Filters) -> list[OrgFigures]:
    """Per organisation (of the filters: every one for None), the headline figures of the three dashboards;
    their sums are the all-organisations totals. Organisations with no activity in the range are left out."""
    _fresh(conn)  # first: on SQLite a writable conn that has read holds the write lock the refresh needs
    orgs = _scope(conn, filters)
    runs = _range_rows(filters)
    found: dict[int, dict[str, int]] = {}
    u, chosen = _usage_rows(filters, orgs)
    for org, *counts in conn.execute(
            select(u.c.org_id, func.sum(u.c.requests), func.sum(u.c.issued), func.sum(u.c.validated),
                   func.sum(u.c.codes), func.sum(u.c.codes_used))
            .select_from(runs).join(u, _on_row(runs, u)).where(chosen).group_by(u.c.org_id)):
        found.setdefault(int(org), {}).update(zip(("requests", "issued", "validated", "codes_issued", "codes_used"),
                                                  (int(c or 0) for c in counts)))
    d = rollups.deliveries
    for org, *counts in conn.execute(
            select(d.c.org_id, func.sum(d.c.messages), func.sum(d.c.delivered), func.sum(d.c.failed))
            .select_from(runs).join(d, _on_row(runs, d)).where(_delivery_rows(d, filters, orgs))
            .group_by(d.c.org_id)):
        found.setdefault(int(org), {}).update(zip(("messages", "delivered", "failed"), (int(c or 0) for c in counts)))
    e = _limit
    refused = select(e.c.org_id, func.count()).where(_of(e.c.org_id, orgs), _in_range(e.c.created_at, filters))
    if filters.action:
        refused = refused.where(e.c.action == filters.action)
    for org, n in conn.execute(refused.group_by(e.c.org_id)):
        found.setdefault(int(org), {})["refusals"] = int(n)
    return [OrgFigures(org, **found[org]) for org in sorted(found)]


# --- rate limits ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NearLimit:
    user_key: str
    user: str  # masked
    count: int
    limit: int
    org_id: int = 1

    @property
    def share(self) -> float:
        return self.count / self.limit


def _customers_of(column, orgs: list[int], every: bool):  # type: ignore[no-untyped-def]
    """user_key column belongs to a customer of orgs (the key carries the organisation: core.issuing.entities)."""
    if every:
        return None
    own = [column.startswith(f"o{org}|") for org in orgs if org != 1]
    if 1 in orgs:  # the default organisation's keys carry no prefix: "MOBILE:..." / "EMAIL:..."
        own.append(or_(*[column.startswith(f"{kind.value}:") for kind in EntityType]))
    return or_(*own)


def nearest_daily_limit(conn: Connection, *, day: str, limit: int, top: int = 20, org_id: int | None,
                        staff_id: int | None = None) -> list[NearLimit]:
    """The organisation's users with the most accepted generates on day (the limit's local day), highest first.

    The daily counters carry no org_id: a customer's key names their organisation, so the filter is on its prefix
    (the scan stays on the counters index of the day, highest first)."""
    orgs = _orgs(conn, org_id, staff_id)
    u = _usage
    query = (select(u.c.user_key, u.c.count).where(u.c.scope == "daily:*", u.c.period == day)
             .order_by(u.c.count.desc(), u.c.user_key).limit(top))
    mine = _customers_of(u.c.user_key, orgs, org_id is None)
    if mine is not None:
        query = query.where(mine)
    return [NearLimit(key, mask_user(key), int(n), limit, split_user_key(key)[0]) for key, n in conn.execute(query)]


def mask_user(user_key: str) -> str:
    """A customer's key shown masked, without its organisation prefix: "MOBILE:+91******33"."""
    _, kind, value = split_user_key(user_key)
    return f"{kind}:{mask(value)}" if value else mask(user_key)


# Names staff know the limits by; 'attempts' is a code burned by too many wrong guesses (a validation
# outcome, not a refusal event).
LIMIT_TYPES = ("daily", "action_daily", "code_sends", "validate", "lock", "attempts")


def refusals_by_type(conn: Connection, filters: Filters) -> dict[str, int]:
    orgs = _scope(conn, filters)
    e, v = _limit, _validation
    query = select(e.c.limit_type, func.count()).where(_of(e.c.org_id, orgs), _in_range(e.c.created_at, filters)) \
        .group_by(e.c.limit_type)
    burned = select(func.count()).where(_of(v.c.org_id, orgs), _in_range(v.c.created_at, filters),
                                        v.c.outcome == "burned")
    if filters.action:
        query, burned = query.where(e.c.action == filters.action), burned.where(v.c.action == filters.action)
    found = {t: 0 for t in LIMIT_TYPES}
    found.update({t: int(n) for t, n in conn.execute(query)})
    found["attempts"] = int(conn.execute(burned).scalar_one())
    return found


def refusals_by_day(conn: Connection, filters: Filters) -> list[tuple[str, str, int]]:
    orgs = _scope(conn, filters)
    days = _days_table(filters)
    e = _limit
    query = (select(days.c.day, e.c.limit_type, func.count()).select_from(days)
             .join(e, and_(_of(e.c.org_id, orgs), _on_day(days, e.c.created_at))).group_by(days.c.day, e.c.limit_type)
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
    org_id: int = 1


def top_refused_users(conn: Connection, filters: Filters, *, top: int = 20) -> list[RefusedUser]:
    orgs = _scope(conn, filters)
    e = _limit
    query = (select(e.c.user_key, func.count().label("n"), func.max(e.c.created_at).label("last_at"))
             .where(_of(e.c.org_id, orgs), _in_range(e.c.created_at, filters)).group_by(e.c.user_key)
             .order_by(func.count().desc(), e.c.user_key).limit(top))
    if filters.action:
        query = query.where(e.c.action == filters.action)
    users = conn.execute(query).all()
    if not users:
        return []
    kinds_query = (select(e.c.user_key, e.c.limit_type).where(_of(e.c.org_id, orgs), _in_range(e.c.created_at, filters),
                                                              e.c.user_key.in_([u[0] for u in users]))
                   .group_by(e.c.user_key, e.c.limit_type))
    if filters.action:
        kinds_query = kinds_query.where(e.c.action == filters.action)
    kinds: dict[str, list[str]] = {}
    for key, kind in conn.execute(kinds_query):
        kinds.setdefault(key, []).append(kind)
    return [RefusedUser(key, mask_user(key), int(n), last_at, ", ".join(sorted(kinds.get(key, []))),
                        split_user_key(key)[0]) for key, n, last_at in users]


def top_refused_prefixes(conn: Connection, filters: Filters, *, digits: int = 7, top: int = 20) -> list[tuple[str, int, int]]:
    """Phone-number prefixes ('+91995588', 'MOBILE:' dropped) with the most refusals, and how many users.

    Every organisation (None) sums the organisations' prefixes: one number prefix pumped through several
    organisations is one attack."""
    orgs = _scope(conn, filters)
    e = _limit
    found: dict[str, list[int]] = {}
    for org in orgs:  # each organisation's keys start with their own prefix: one indexed query each
        head = customer_key(org, EntityType.MOBILE, "")
        prefix = func.substr(e.c.user_key, len(head) + 1, digits + 1)  # '+' and digits
        query = (select(prefix.label("prefix"), func.count(), func.count(func.distinct(e.c.user_key)))
                 .where(e.c.org_id == org, _in_range(e.c.created_at, filters), e.c.user_key.startswith(head))
                 .group_by(prefix).order_by(func.count().desc(), prefix))
        if len(orgs) == 1:
            query = query.limit(top)
        if filters.action:
            query = query.where(e.c.action == filters.action)
        for row in conn.execute(query):
            counts = found.setdefault(row[0], [0, 0])
            counts[0] += int(row[1])
            counts[1] += int(row[2])
    ranked = sorted(found.items(), key=lambda item: (-item[1][0], item[0]))[:top]
    return [(prefix, refusals, numbers) for prefix, (refusals, numbers) in ranked]


Block = Refusal  # one reason a user is refused now, and when it lifts by itself (core.issuing.limits)


@dataclass(frozen=True)
class UserLimits:
    user_key: str
    user: str
    blocks: list[Refusal]
    recent: list[tuple[datetime, str, str]]  # (at, limit_type, action) of the newest refusals


def why_refused(conn: Connection, settings: Settings, *, user_key: str, now: datetime, configs: dict,
                org_id: int, staff_id: int | None = None, recent: int = 20) -> UserLimits:
    """For one customer of organisation org_id: every limit refusing them at now and when each lifts, plus their
    newest refusals. A key of another organisation's customer is refused (NotAllowed), whoever asks.

    settings are the organisation's (rt.org(org_id).settings: its day, region); configs maps an action name
    to the organisation's OtpConfig. The answer per action is core.issuing.limits.explain_refusal for a send
    to the user on each channel the action enables (the engine's own counters); the client IP and API client
    limits are not the user's and are left out. A limit spanning actions is listed once.
    """
    _orgs(conn, org_id, staff_id)
    key_org, entity_type, value = split_user_key(user_key)
    if key_org != org_id:
        raise NotAllowed("not a customer of this organisation")
    entity = NormalisedEntity(EntityType(entity_type), value, org_id)
    blocks = list(dict.fromkeys(
        refusal for config in configs.values()
        for refusal in explain_refusal(conn, settings, config, entity=entity,
                                       targets=suited_targets(config, entity), now=now)))
    e = _limit
    events = [(row[0], row[1], row[2]) for row in conn.execute(
        select(e.c.created_at, e.c.limit_type, e.c.action).where(e.c.user_key == user_key, e.c.org_id == org_id)
        .order_by(e.c.created_at.desc(), e.c.id.desc()).limit(recent))]
    return UserLimits(user_key, mask_user(user_key), blocks, events)
