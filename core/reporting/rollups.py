"""The dashboards' rollup tables: counts and histograms per 15-minute UTC bucket, kept up to date from the raw rows.

    python -m core.reporting.rollups            # bring the rollups up to date now (the first run reads every raw row)

Three tables (core.db.models): usage_rollup (requests, validations and the day's code cohort per bucket, channel
and action, with a time-to-validate histogram), delivery_rollup (deliveries per bucket, action, channel and
gateway by status, with a latency histogram) and failure_rollup (failed deliveries per error text). A bucket
is 15 minutes of UTC (epoch seconds // 900), so the local days of every time zone in use, :30 and :45 offsets
included, are whole runs of buckets and the figures stay exact. Every row is also summed under action '*'
(and usage rows under channel '*'), so an unfiltered query reads one row per bucket and group.

How they stay right: a bucket's rollup rows are always recomputed whole from the raw rows of that bucket
(delete, then insert the aggregate), never incremented, so recomputing is idempotent and whatever changed in
the bucket is picked up. What remains is knowing which buckets changed since the last refresh. The source
tables only grow, and every change the dashboards see comes with a new row:

- otp_request, otp_code, otp_validation, delivery, delivery_receipt: rows with an id above the high-water
  mark kept in rollup_state are new. A new validation also dirties its code's bucket (an 'ok' one uses the
  code, in the same transaction), a new delivery also dirties the usage buckets of its request, its code and
  the code's validations (the channel filter counts them under the new channel).
- A receipt (a new delivery_receipt row, written in the same transaction as the status change) dirties its
  delivery's bucket: this is how 'sent' becoming 'delivered' or 'failed' later is seen.
- The one change without a new row is a 'queued' delivery getting its send result a moment after it was
  inserted. Buckets whose rollup still counts queued deliveries are checked at each refresh (an indexed count)
  and recomputed when that count moved.

Times in the rows are never trusted for this (clocks differ between processes and the simulator writes the
past). On SQLite, writers are serialised, so ids are assigned in commit order. On PostgreSQL a transaction can
take an id and commit after a larger one: the count of rows in the last WINDOW ids below the mark is kept,
and when it changes those rows' buckets are recomputed too.

Spans: every figure is kept per quarter hour (span 1) and again per UTC half hour, hour, six hours and day
(spans 2, 4, 24, 96, SPANS); a row's bucket is the first quarter hour it covers. Each coarser row is the sum of
the rows of the span below it, recomputed in the same transaction whenever one of its quarters is. A range of
local days is read through cover(): whole UTC days in the middle, then ever shorter spans towards its edges, so
a local day of Kolkata reads 10 rows per group instead of 96 and a 30-day range about 20 instead of 2,880,
exactly, in any time zone.

A refresh runs before each dashboard query (core.reporting.dashboards) and costs a few indexed lookups when nothing is
new. Deleting raw rows is not followed: after a purge, call rebuild().
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Iterator

from sqlalchemy import (BigInteger, Connection, Engine, Integer, String, and_, case, delete, func, insert, literal,
                        literal_column, null, select, text, union, union_all)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

from core.clock import utcnow
from core.db.engine import READ_ONLY, schema_advisory_lock, schema_advisory_unlock
from core.db.models import (Delivery, DeliveryReceipt, DeliveryRollup, FailureRollup, OtpCode, OtpRequest,
                            OtpValidation, RollupState, UsageRollup)
from core.histogram import BINS, EDGES, EDGES_US

QUARTER = 900  # seconds in a bucket
# Spans, in quarter hours, each a multiple of the one before: half hours and hours for the :30 and :45 zones and
# the hours around a local midnight, six hours and days for the rest of a local day or range.
HALF, HOUR, SIX_HOURS, DAY = 2, 4, 24, 96
SPANS = (1, HALF, HOUR, SIX_HOURS, DAY)
ALL = "*"
NO_ERROR_TEXT = "(no error text)"
# PostgreSQL: how many ids below the high-water mark are re-counted for late commits (see the docstring).
WINDOW = 5000
# Buckets recomputed per write transaction (a day): keeps SQLite's write lock short during a first build.
BATCH_BUCKETS = 96

_request = OtpRequest.__table__
_code = OtpCode.__table__
_validation = OtpValidation.__table__
_delivery = Delivery.__table__
_receipt = DeliveryReceipt.__table__
_state = RollupState.__table__
usage = UsageRollup.__table__
deliveries = DeliveryRollup.__table__
failures = FailureRollup.__table__

SOURCES = {t.name: t for t in (_request, _code, _validation, _delivery, _receipt)}
HISTOGRAM = [f"h{i}" for i in range(BINS)]
USAGE_COUNTS = ["requests", "issued", "resent", "validations", "validated", "codes", "codes_used"]
DELIVERY_COUNTS = ["messages", "queued", "sent", "delivered", "failed"]


# --- portable SQL pieces ----------------------------------------------------------------------------------

class quarter_of(FunctionElement):
    """The 15-minute UTC bucket of a timestamp: epoch seconds // 900, in integer arithmetic on both databases."""
    type = Integer()
    inherit_cache = True
    name = "quarter_of"


@compiles(quarter_of)
def _quarter_of_default(element, compiler, **kw):  # type: ignore[no-untyped-def]
    (moment,) = (compiler.process(c, **kw) for c in element.clauses)
    return f"CAST(FLOOR(EXTRACT(EPOCH FROM {moment}) / {QUARTER}) AS INTEGER)"


# SQLite keeps times to the millisecond and rounds: strftime('%s') of '18:29:59.999999' is 18:30:00. Stored
# times are 'YYYY-MM-DD HH:MM:SS.ffffff', so the first 19 characters are the whole seconds, truncated.
_SQLITE_SECONDS = "CAST(strftime('%s', substr({0}, 1, 19)) AS INTEGER)"


@compiles(quarter_of, "sqlite")
def _quarter_of_sqlite(element, compiler, **kw):  # type: ignore[no-untyped-def]
    (moment,) = (compiler.process(c, **kw) for c in element.clauses)
    return f"({_SQLITE_SECONDS.format(moment)} / {QUARTER})"


class micros_between(FunctionElement):
    """micros_between(later, earlier): whole microseconds, exactly (no floating-point day fractions)."""
    type = BigInteger()
    inherit_cache = True
    name = "micros_between"


@compiles(micros_between)
def _micros_between_default(element, compiler, **kw):  # type: ignore[no-untyped-def]
    later, earlier = (compiler.process(c, **kw) for c in element.clauses)
    return f"CAST(ROUND(EXTRACT(EPOCH FROM ({later} - {earlier})) * 1000000) AS BIGINT)"


@compiles(micros_between, "sqlite")
def _micros_between_sqlite(element, compiler, **kw):  # type: ignore[no-untyped-def]
    # Whole seconds as in quarter_of, microseconds from the text after the point.
    later, earlier = (compiler.process(c, **kw) for c in element.clauses)
    return (f"(({_SQLITE_SECONDS.format(later)} - {_SQLITE_SECONDS.format(earlier)}) * 1000000"
            f" + CAST(substr({later}, 21, 6) AS INTEGER) - CAST(substr({earlier}, 21, 6) AS INTEGER))")


def _search(value: ColumnElement, edges: list[str], lo: int, hi: int) -> ColumnElement:
    """The bin index in lo..hi (the number of edges below value), by nested CASE: about 8 comparisons."""
    if lo == hi:
        return literal_column(str(lo), Integer())
    mid = (lo + hi) // 2
    return case((value <= literal_column(edges[mid]), _search(value, edges, lo, mid)),
                else_=_search(value, edges, mid + 1, hi))


def histogram_bin(value: ColumnElement, *, micros: bool = False) -> ColumnElement:
    """core.histogram.bin_of (or bin_of_micros) in SQL; NULL for NULL. Edges are literals, exact on both."""
    edges = [str(e) for e in EDGES_US] if micros else [repr(e) for e in EDGES]
    return case((value.is_(None), null()), else_=_search(value, edges, 0, len(edges)))


def _materialized(query, name: str):  # type: ignore[no-untyped-def]
    """query as a CTE computed once: inlined, the bin's CASE would be repeated in each of the 202 sums."""
    return query.cte(name).prefix_with("MATERIALIZED")


def _count_if(condition) -> ColumnElement:  # type: ignore[no-untyped-def]
    return func.count(case((condition, 1)))


def _pivot(bin_column) -> list[ColumnElement]:  # type: ignore[no-untyped-def]
    """h0..h201: how many rows fell in each bin (NULL for none). FILTER skips the other 201 sums per row."""
    one = literal_column("1", Integer())
    return [func.sum(one).filter(bin_column == i).label(name) for i, name in enumerate(HISTOGRAM)]


def bucket_start(bucket: int) -> datetime:
    return datetime.fromtimestamp(bucket * QUARTER, timezone.utc)


def bucket_of(moment: datetime) -> int:
    """The bucket holding moment (aware); exact for the whole-second instants local days begin at."""
    return int(moment.timestamp()) // QUARTER


def cover(first: int, stop: int) -> list[tuple[int, int, int]]:
    """[first, stop) of quarter hours as (span, first, stop) runs of the coarsest rows that fit: whole UTC days
    in the middle, then six hours, hours, half hours and quarter hours towards the edges. The runs do not
    overlap and together cover exactly [first, stop)."""
    runs: list[tuple[int, int, int]] = []

    def split(lo: int, hi: int, spans: tuple[int, ...]) -> None:
        if lo >= hi:
            return
        span, finer = spans[0], spans[1:]
        inner_lo, inner_hi = -(-lo // span) * span, hi // span * span
        if not finer:
            runs.append((span, lo, hi))
        elif inner_lo < inner_hi:
            split(lo, inner_lo, finer)
            runs.append((span, inner_lo, inner_hi))
            split(inner_hi, hi, finer)
        else:
            split(lo, hi, finer)

    split(first, stop, tuple(reversed(SPANS)))
    return runs


# --- recomputing buckets ----------------------------------------------------------------------------------

def _in_range(created_at, first: int, stop: int):  # type: ignore[no-untyped-def]
    return and_(created_at >= bucket_start(first), created_at < bucket_start(stop))


def _with_channels(table, sent_on, first: int, stop: int, *columns):  # type: ignore[no-untyped-def]
    """Rows of table created in [first, stop): once under channel '*', and once under each channel of the
    deliveries matching sent_on (a join condition between table and delivery)."""
    everything = select(literal_column(f"'{ALL}'", String()).label("channel"), table.c.id, *columns) \
        .where(_in_range(table.c.created_at, first, stop))
    per_channel = select(_delivery.c.channel.label("channel"), table.c.id, *columns) \
        .select_from(table.join(_delivery, sent_on)).where(_in_range(table.c.created_at, first, stop)).distinct()
    return union_all(everything, per_channel).subquery()


def _usage_rows(first: int, stop: int):  # type: ignore[no-untyped-def]
    """usage_rollup's per-action rows for [first, stop): the counts of requests, validations and codes per
    key, joined with the time-to-validate histogram of the codes used (pivoted once, for those rows only)."""
    r, v, c, d = _request, _validation, _code, _delivery
    req = _with_channels(r, d.c.request_id == r.c.id, first, stop, r.c.org_id, r.c.created_at, r.c.action, r.c.kind)
    val = _with_channels(v, d.c.code_id == v.c.code_id, first, stop, v.c.org_id, v.c.created_at, v.c.action,
                         v.c.outcome)
    cod = _with_channels(c, d.c.code_id == c.c.id, first, stop, c.c.org_id, c.c.created_at, c.c.action, c.c.state,
                         c.c.used_at)

    def counted(source, **figures):  # type: ignore[no-untyped-def]
        columns = {name: literal_column("0", Integer()) for name in USAGE_COUNTS} | figures
        return select(source.c.org_id, source.c.channel, quarter_of(source.c.created_at).label("bucket"),
                      source.c.action, *[columns[name].label(name) for name in USAGE_COUNTS]) \
            .group_by(source.c.org_id, source.c.channel, quarter_of(source.c.created_at), source.c.action)

    parts = union_all(
        counted(req, requests=func.count(), issued=_count_if(req.c.kind == "issued"),
                resent=_count_if(req.c.kind == "resent")),
        counted(val, validations=func.count(), validated=_count_if(val.c.outcome == "ok")),
        counted(cod, codes=func.count(), codes_used=_count_if(cod.c.state == "used")),
    ).subquery()
    keys = [parts.c.org_id, parts.c.channel, parts.c.bucket, parts.c.action]
    counts = _materialized(select(*keys, *[func.sum(parts.c[name]).label(name) for name in USAGE_COUNTS])
                           .group_by(*keys), "usage_counts")

    used = select(cod.c.org_id, cod.c.channel, quarter_of(cod.c.created_at).label("bucket"), cod.c.action,
                  micros_between(cod.c.used_at, cod.c.created_at).label("us")) \
        .where(cod.c.state == "used", cod.c.used_at.is_not(None)).subquery()
    binned = _materialized(select(used, histogram_bin(used.c.us, micros=True).label("bin")), "binned_codes")
    hkeys = [binned.c.org_id, binned.c.channel, binned.c.bucket, binned.c.action]
    times = _materialized(select(*hkeys, func.max(binned.c.us).label("ttv_max_us"), *_pivot(binned.c.bin))
                          .group_by(*hkeys), "usage_times")
    joined = counts.outerjoin(times, and_(times.c.org_id == counts.c.org_id, times.c.channel == counts.c.channel,
                                          times.c.bucket == counts.c.bucket, times.c.action == counts.c.action))
    return select(counts.c.org_id, counts.c.channel, counts.c.bucket, counts.c.action,
                  *[counts.c[n] for n in USAGE_COUNTS],
                  times.c.ttv_max_us, *[times.c[h] for h in HISTOGRAM]).select_from(joined)


def _recompute_usage(conn: Connection, first: int, stop: int) -> None:
    conn.execute(delete(usage).where(_quarters(usage, first, stop)))
    conn.execute(insert(usage).from_select(["org_id", "channel", "bucket", "action", *USAGE_COUNTS, "ttv_max_us",
                                            *HISTOGRAM], _usage_rows(first, stop)))
    _sum_over_actions(conn, usage, first, stop)


def _quarters(table, first: int, stop: int) -> ColumnElement:  # type: ignore[no-untyped-def]
    """The quarter-hour rows (span 1) of table in [first, stop)."""
    return and_(table.c.span == 1, table.c.bucket >= first, table.c.bucket < stop)


def _sum_over_actions(conn: Connection, table, first: int, stop: int) -> None:  # type: ignore[no-untyped-def]
    """Add the action '*' rows of [first, stop) as sums of that range's per-action rows."""
    t = table
    identity, sums, largest = _LAYOUT[table]
    keys = [k for k in identity if k != "action"] + ["bucket"]
    columns = [t.c[k] for k in keys] + [literal_column(f"'{ALL}'", String()).label("action")] + \
        [func.sum(t.c[s]).label(s) for s in sums] + ([func.max(t.c[largest]).label(largest)] if largest else [])
    names = keys + ["action"] + sums + ([largest] if largest else [])
    conn.execute(insert(t).from_select(names, select(*columns).where(
        _quarters(t, first, stop), t.c.action != ALL).group_by(*[t.c[k] for k in keys])))


def _recompute_deliveries(conn: Connection, first: int, stop: int) -> None:
    d, r = _delivery, _request
    rows = select(d.c.org_id, r.c.action, quarter_of(d.c.created_at).label("bucket"), d.c.channel, d.c.gateway,
                  d.c.status,
                  d.c.latency_ms, histogram_bin(d.c.latency_ms).label("bin"), d.c.error) \
        .select_from(d.join(r, r.c.id == d.c.request_id)).where(_in_range(d.c.created_at, first, stop))
    rows = _materialized(rows, "binned_deliveries")
    keys = [rows.c.org_id, rows.c.action, rows.c.bucket, rows.c.channel, rows.c.gateway]
    conn.execute(delete(deliveries).where(_quarters(deliveries, first, stop)))
    conn.execute(insert(deliveries).from_select(
        ["org_id", "action", "bucket", "channel", "gateway", *DELIVERY_COUNTS, "latency_max_ms", *HISTOGRAM],
        select(*keys, func.count(), *[_count_if(rows.c.status == s) for s in DELIVERY_COUNTS[1:]],
               func.max(rows.c.latency_ms), *_pivot(rows.c.bin)).group_by(*keys)))
    _sum_over_actions(conn, deliveries, first, stop)
    error = func.coalesce(rows.c.error, NO_ERROR_TEXT)
    conn.execute(delete(failures).where(_quarters(failures, first, stop)))
    conn.execute(insert(failures).from_select(
        ["org_id", "action", "bucket", "channel", "gateway", "error", "failures"],
        select(*keys, error, func.count()).where(rows.c.status == "failed").group_by(*keys, error)))
    _sum_over_actions(conn, failures, first, stop)


# What identifies a row besides its span and bucket, what is summed and what is the largest, per rollup table.
_LAYOUT = {
    usage: (["org_id", "channel", "action"], [*USAGE_COUNTS, *HISTOGRAM], "ttv_max_us"),
    deliveries: (["org_id", "action", "channel", "gateway"], [*DELIVERY_COUNTS, *HISTOGRAM], "latency_max_ms"),
    failures: (["org_id", "action", "channel", "gateway", "error"], ["failures"], None),
}


def _roll_up(conn: Connection, tables, runs: list[tuple[int, int]]) -> None:  # type: ignore[no-untyped-def]
    """Recompute the rows of each coarser span over the quarter runs just recomputed, from the span below."""
    for finer, coarser in zip(SPANS, SPANS[1:]):
        runs = _widened(runs, coarser)
        for t in tables:
            keys, sums, largest = _LAYOUT[t]
            # The span as literal SQL text, not a bind: PostgreSQL matches the SELECT's expression to the GROUP BY's
            # only when both read the same (two binds are two expressions to it).
            quarters = literal_column(str(coarser), Integer())
            start = (t.c.bucket // quarters * quarters).label("bucket")
            columns = [*[t.c[k] for k in keys], literal(coarser, Integer()).label("span"), start,
                       *[func.sum(t.c[n]).label(n) for n in sums],
                       *([func.max(t.c[largest]).label(largest)] if largest else [])]
            for first, stop in runs:
                conn.execute(delete(t).where(t.c.span == coarser, t.c.bucket >= first, t.c.bucket < stop))
                conn.execute(insert(t).from_select(
                    [*keys, "span", "bucket", *sums, *([largest] if largest else [])],
                    select(*columns).where(t.c.span == finer, t.c.bucket >= first, t.c.bucket < stop)
                    .group_by(*[t.c[k] for k in keys], t.c.bucket // quarters)))


def _widened(runs: list[tuple[int, int]], span: int) -> list[tuple[int, int]]:
    """runs widened to whole spans, overlapping ones merged."""
    widened: list[tuple[int, int]] = []
    for first, stop in sorted((first // span * span, -(-stop // span) * span) for first, stop in runs):
        if widened and first <= widened[-1][1]:
            widened[-1] = (widened[-1][0], max(widened[-1][1], stop))
        else:
            widened.append((first, stop))
    return widened


# --- which buckets changed --------------------------------------------------------------------------------

@dataclass
class Plan:
    """What one refresh recomputes, and the source state to record afterwards."""
    usage: set[int] = field(default_factory=set)
    delivery: set[int] = field(default_factory=set)
    full: tuple[int, int] | None = None  # [first, stop) of everything, on a first build
    state: dict[str, tuple[int, int]] = field(default_factory=dict)  # source: (high water, window rows)


def _window(conn: Connection) -> int:
    return 0 if conn.dialect.name == "sqlite" else WINDOW


def _load_state(conn: Connection) -> dict[str, tuple[int, int]]:
    return {row.source: (int(row.high_water), int(row.window_rows))
            for row in conn.execute(select(_state.c.source, _state.c.high_water, _state.c.window_rows))}


def _high_waters(conn: Connection) -> dict[str, int]:
    return {name: int(conn.execute(select(func.coalesce(func.max(t.c.id), 0))).scalar_one())
            for name, t in SOURCES.items()}


def _rows_below(conn: Connection, table, mark: int, window: int) -> int:  # type: ignore[no-untyped-def]
    return int(conn.execute(select(func.count()).where(table.c.id > mark - window, table.c.id <= mark))
               .scalar_one()) if window else 0


def _new_rows(conn: Connection, state: dict[str, tuple[int, int]], marks: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Per source, the id range (after, upto] to look at: above the mark, and on PostgreSQL also the window
    below it when late commits changed its count."""
    window = _window(conn)
    ranges = {}
    for name, table in SOURCES.items():
        mark, counted = state[name]
        after = mark
        if window and _rows_below(conn, table, mark, window) != counted:
            after = max(0, mark - window)
        if marks[name] > after or after < mark:
            ranges[name] = (after, marks[name])
    return ranges


def _queued_changes(conn: Connection) -> set[int]:
    """Buckets whose rollup counts queued deliveries that have since had their send result."""
    dr, d = deliveries, _delivery
    counted = dict(conn.execute(select(dr.c.bucket, func.sum(dr.c.queued))
                                .where(dr.c.queued > 0, dr.c.action == ALL, dr.c.span == 1)
                                .group_by(dr.c.bucket)).all())
    changed = set()
    buckets = sorted(counted)
    for start in range(0, len(buckets), 200):
        parts = [select(literal(b, Integer()).label("bucket"), func.count().label("n"))
                 .where(d.c.status == "queued", _in_range(d.c.created_at, b, b + 1)) for b in buckets[start:start + 200]]
        for bucket, n in conn.execute(union_all(*parts) if len(parts) > 1 else parts[0]):
            if int(n) != int(counted[bucket]):
                changed.add(int(bucket))
    return changed


def _dirty_buckets(conn: Connection, ranges: dict[str, tuple[int, int]]) -> tuple[set[int], set[int]]:
    """The usage and delivery buckets touched by the rows in ranges (see the module docstring)."""
    r, c, v, d, x = _request, _code, _validation, _delivery, _receipt

    def ids(table):  # type: ignore[no-untyped-def]
        after, upto = ranges[table.name]
        return and_(table.c.id > after, table.c.id <= upto)

    usage_sources, delivery_sources = [], []
    if r.name in ranges:
        usage_sources.append(select(quarter_of(r.c.created_at)).where(ids(r)))
    if c.name in ranges:
        usage_sources.append(select(quarter_of(c.c.created_at)).where(ids(c)))
    if v.name in ranges:
        usage_sources += [select(quarter_of(v.c.created_at)).where(ids(v)),
                          select(quarter_of(c.c.created_at)).select_from(v.join(c, c.c.id == v.c.code_id)).where(ids(v))]
    if d.name in ranges:
        usage_sources += [
            select(quarter_of(r.c.created_at)).select_from(d.join(r, r.c.id == d.c.request_id)).where(ids(d)),
            select(quarter_of(c.c.created_at)).select_from(d.join(c, c.c.id == d.c.code_id)).where(ids(d)),
            select(quarter_of(v.c.created_at)).select_from(d.join(v, v.c.code_id == d.c.code_id)).where(ids(d)),
        ]
        delivery_sources.append(select(quarter_of(d.c.created_at)).where(ids(d)))
    if x.name in ranges:
        delivery_sources.append(select(quarter_of(d.c.created_at)).select_from(x.join(d, d.c.id == x.c.delivery_id))
                                .where(ids(x)))

    def collect(sources) -> set[int]:  # type: ignore[no-untyped-def]
        if not sources:
            return set()
        query = union(*sources) if len(sources) > 1 else sources[0].distinct()
        return {int(b) for b in conn.execute(query).scalars() if b is not None}

    return collect(usage_sources), collect(delivery_sources)


def _everything(conn: Connection) -> tuple[int, int] | None:
    """[first, stop) covering every raw row, for a first build."""
    lows, highs = [], []
    for table in (_request, _code, _validation, _delivery):
        low, high = conn.execute(select(func.min(table.c.created_at), func.max(table.c.created_at))).one()
        if low is not None:
            lows.append(bucket_of(low))
            highs.append(bucket_of(high))
    return (min(lows), max(highs) + 1) if lows else None


def plan(conn: Connection) -> Plan:
    """What a refresh has to do now (read only)."""
    state = _load_state(conn)
    marks = _high_waters(conn)
    window = _window(conn)
    found = Plan(state={name: (marks[name], _rows_below(conn, t, marks[name], window)) for name, t in SOURCES.items()})
    if set(state) != set(SOURCES):
        found.full = _everything(conn)  # None on an empty database: only the marks are recorded
        return found
    ranges = _new_rows(conn, state, marks)
    if ranges:
        found.usage, found.delivery = _dirty_buckets(conn, ranges)
    found.delivery |= _queued_changes(conn)
    if not ranges and not found.delivery:
        found.state = {}  # nothing new: nothing to record either
    return found


def _runs(buckets: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted buckets as [first, stop) runs of consecutive buckets."""
    runs: list[tuple[int, int]] = []
    for b in sorted(buckets):
        if runs and runs[-1][1] == b:
            runs[-1] = (runs[-1][0], b + 1)
        else:
            runs.append((b, b + 1))
    return runs


def _batches(runs: list[tuple[int, int]]) -> Iterator[list[tuple[int, int]]]:
    """Runs split and grouped into batches (one transaction each) of at most BATCH_BUCKETS buckets of one UTC day,
    so that a first build rolls each day up once."""
    batch: list[tuple[int, int]] = []
    size = 0
    for first, stop in runs:
        while first < stop:
            if batch and first // DAY != batch[0][0] // DAY:
                yield batch
                batch, size = [], 0
            piece = min(stop, first + BATCH_BUCKETS - size, (first // DAY + 1) * DAY)
            batch.append((first, piece))
            size += piece - first
            first = piece
            if size >= BATCH_BUCKETS:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


# --- refreshing -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Refreshed:
    usage_buckets: int
    delivery_buckets: int
    full: bool
    seconds: float


_process_lock = threading.Lock()
# The advisory lock class of the rollup refresh, per schema (core.db.engine.schema_advisory_lock): installations in
# two schemas of one database (and the tests' private schemas) must not wait for each other's refresh (a first
# build holds it for minutes).
_LOCK_KEY = 0x07_0D_A5_4B


def _writer(engine: Engine) -> Engine:
    """engine for writing (on SQLite: BEGIN IMMEDIATE, even when handed the read-only engine)."""
    return engine.execution_options(**{READ_ONLY: False})


def _reader(engine: Engine) -> Engine:
    return engine.execution_options(**{READ_ONLY: True})


def needs_refresh(engine: Engine) -> bool:
    """Cheap, read only: is there anything new since the last refresh?"""
    with _reader(engine).connect() as conn:
        state = _load_state(conn)
        if set(state) != set(SOURCES):
            return True
        return bool(_new_rows(conn, state, _high_waters(conn)) or _queued_changes(conn))


def refresh(engine: Engine, *, force_full: bool = False) -> Refreshed | None:
    """Bring the rollups up to date; None when nothing was new. Safe to call from many threads and processes."""
    if not force_full and not needs_refresh(engine):
        return None
    started = time.perf_counter()
    with _process_lock, _writer(engine).connect() as conn:
        postgres = conn.dialect.name == "postgresql"
        if postgres:
            # One refresher at a time across processes, taken before the snapshot the plan is read in.
            schema_advisory_lock(conn, _LOCK_KEY)
            conn.commit()
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        try:
            with conn.begin():
                todo = plan(conn)
                if force_full:
                    todo.full, todo.usage, todo.delivery = _everything(conn), set(), set()
            usage_runs, delivery_runs = _runs(todo.usage), _runs(todo.delivery)
            if todo.full or force_full:
                with conn.begin():  # rows outside the raw rows' range (none, unless raw rows were deleted)
                    _forget_outside(conn, todo.full)
                usage_runs = delivery_runs = [todo.full] if todo.full else []
            for batch in _batches(usage_runs):
                with conn.begin():
                    for first, stop in batch:
                        _recompute_usage(conn, first, stop)
                    _roll_up(conn, [usage], batch)
            for batch in _batches(delivery_runs):
                with conn.begin():
                    for first, stop in batch:
                        _recompute_deliveries(conn, first, stop)
                    _roll_up(conn, [deliveries, failures], batch)
            if todo.state:
                with conn.begin():
                    _save_state(conn, todo.state)
            if postgres and (todo.full or force_full):
                # Statistics now, not when autovacuum gets round to it: planned on the empty tables' estimates,
                # the dashboards' first queries after a build scanned every row of the organisations (1 s, not 0.1).
                with conn.begin():
                    conn.execute(text(f"ANALYZE {usage.name}, {deliveries.name}, {failures.name}"))
        finally:
            if postgres:
                if conn.in_transaction():
                    conn.rollback()
                schema_advisory_unlock(conn, _LOCK_KEY)
                conn.commit()
    return Refreshed(sum(stop - first for first, stop in usage_runs),
                     sum(stop - first for first, stop in delivery_runs), bool(todo.full), time.perf_counter() - started)


def _forget_outside(conn: Connection, covered: tuple[int, int] | None) -> None:
    for table in (usage, deliveries, failures):
        outside = delete(table)
        if covered:
            outside = outside.where((table.c.bucket < covered[0]) | (table.c.bucket >= covered[1]))
        conn.execute(outside)


def rebuild(engine: Engine) -> Refreshed | None:
    """Recompute every bucket from the raw rows (after raw rows were deleted, or to check the rollups)."""
    return refresh(engine, force_full=True)


def _save_state(conn: Connection, state: dict[str, tuple[int, int]]) -> None:
    now = utcnow()
    conn.execute(delete(_state).where(_state.c.source.in_(list(state))))
    conn.execute(insert(_state), [{"source": name, "high_water": mark, "window_rows": rows, "refreshed_at": now}
                                  for name, (mark, rows) in state.items()])


def main() -> None:
    from core.db.engine import make_engine, migrate
    from core.settings import get_settings
    engine = make_engine(get_settings().database_url)
    migrate(engine)
    print(f"rolling up {engine.url.render_as_string(hide_password=True)} ...", flush=True)
    done = refresh(engine)
    print("nothing new" if done is None else
          f"{'built' if done.full else 'refreshed'} {done.usage_buckets} usage and {done.delivery_buckets} "
          f"delivery buckets in {done.seconds:.1f} s")


if __name__ == "__main__":
    main()
