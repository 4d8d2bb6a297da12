"""Dashboard figures against counts made independently in Python from the raw rows, and the three pages."""
from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import insert, select, text

from core import histogram as H
from core.admin.staff import PermissionDenied
from core.admin.unblock import unblock
from core.clock import FrozenClock
from core.db.models import (AuditLog, Delivery, FailureCounter, LimitEvent, OtpCode, OtpRequest, OtpValidation,
                            UsageCounter)
from core.enums import Action
from core.errors import OtpError
from core.reporting import dashboards as D
from core.runtime import run
from core.services.generation import generate
from core.services.validation import validate
from simulate import simulate
from tests.conftest import code_sent_to
from tests.console_app import frame_with, on_page, signed_in

KOLKATA = "Asia/Kolkata"


@pytest.fixture(autouse=True)
def _clear_streamlit_caches():
    import streamlit as st
    st.cache_data.clear()
    st.cache_resource.clear()
    yield


@pytest.fixture
def traffic(rt):
    """Three days of simulated traffic ending at the test clock's now, with every limit met once."""
    report = simulate(rt, days=3, users=300, per_day=40, seed=7, small=True, end=rt.clock())
    assert report.generates > 100 and report.refused > 0
    return report


# --- the independent reference: raw rows, counted in Python --------------------------------------------

def raw(rt, model) -> list:
    with rt.db.connect() as conn:
        return list(conn.execute(select(model.__table__)))


def day_of(moment: datetime, tz: str) -> str:
    return moment.astimezone(ZoneInfo(tz)).date().isoformat()


def in_filters(moment: datetime, f: D.Filters) -> bool:
    return f.first.isoformat() <= day_of(moment, f.tz) <= f.last.isoformat()


def nearest_rank(values: list[float], p: int) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[math.ceil(p / 100 * len(ordered)) - 1]


def binned_rank(values: list, p: int, edges: tuple = H.EDGES, scale: float = 1) -> float | None:
    """The nearest-rank percentile as the dashboards report it: the upper edge of the histogram bin holding the
    value at that rank (the largest value itself above the last edge). Values and edges in the same unit; the
    result divided by scale (µs to s)."""
    value = nearest_rank(values, p)
    if value is None:
        return None
    index = bisect_left(edges, value)  # edges[index - 1] < value <= edges[index]
    return (edges[index] if index < len(edges) else max(values)) / scale


def test_binned_rank_is_the_upper_edge_of_the_exact_percentile():
    assert binned_rank([20.0, 30.0], 50) == 20.0 and binned_rank([20.0, 30.0], 99) == 31.6
    assert binned_rank([0.2, 150_000.0], 99) == 150_000.0  # above the last edge: the largest value
    assert H.percentile([0, 1, 0, 2], 50) == H.EDGES[3] and H.percentile([0] * H.BINS, 50) is None
    for value in (0.5, 1.0, 1.0001, 19.95, 20.0, 99_999.0, 100_000.0):
        index = H.bin_of(value)
        assert (index == 0 or H.EDGES[index - 1] < value) and (index == H.OVERFLOW or value <= H.EDGES[index])
    assert max(b / a for a, b in zip(H.EDGES, H.EDGES[1:])) < 1.065  # bins at most 6.5% wide


def channels_by(rt, key: str) -> dict[int, set[str]]:
    found: dict[int, set[str]] = defaultdict(set)
    for d in raw(rt, Delivery):
        found[getattr(d, key)].add(d.channel)
    return found


def expected_usage(rt, f: D.Filters) -> dict[tuple[str, str], D.UsageRow]:
    by_request, by_code = channels_by(rt, "request_id"), channels_by(rt, "code_id")
    counts: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for r in raw(rt, OtpRequest):
        if in_filters(r.created_at, f) and f.action in (None, r.action) and \
                (f.channel is None or f.channel in by_request[r.id]):
            c = counts[(day_of(r.created_at, f.tz), r.action)]
            c["requests"] += 1
            c[r.kind] += 1
    for v in raw(rt, OtpValidation):
        if in_filters(v.created_at, f) and f.action in (None, v.action) and \
                (f.channel is None or f.channel in by_code.get(v.code_id, set())):
            c = counts[(day_of(v.created_at, f.tz), v.action)]
            c["validations"] += 1
            c["ok"] += v.outcome == "ok"
    for code in raw(rt, OtpCode):
        if in_filters(code.created_at, f) and f.action in (None, code.action) and \
                (f.channel is None or f.channel in by_code[code.id]):
            c = counts[(day_of(code.created_at, f.tz), code.action)]
            c["codes"] += 1
            c["used"] += code.state == "used"
    return {k: D.UsageRow(k[0], k[1], c["requests"], c["issued"], c["resent"], c["validations"], c["ok"],
                          c["codes"], c["used"]) for k, c in counts.items()}


def expected_ttv(rt, f: D.Filters) -> dict[str, list[int]]:
    """Times to validate per local day, in whole microseconds (exact, as the rollups bin them)."""
    by_code = channels_by(rt, "code_id")
    found: dict[str, list[int]] = defaultdict(list)
    for code in raw(rt, OtpCode):
        if code.state == "used" and in_filters(code.created_at, f) and f.action in (None, code.action) and \
                (f.channel is None or f.channel in by_code[code.id]):
            found[day_of(code.created_at, f.tz)].append((code.used_at - code.created_at) // timedelta(microseconds=1))
    return found


def ttv_rank(micros: list[int], p: int) -> float | None:
    return binned_rank(micros, p, H.EDGES_US, 1_000_000)


def filter_sets(rt) -> list[D.Filters]:
    today = rt.clock().date()
    return [
        D.Filters(today - timedelta(days=2), today, "UTC"),
        D.Filters(today - timedelta(days=2), today, KOLKATA),
        D.Filters(today - timedelta(days=3), today, "America/New_York"),
        D.Filters(today - timedelta(days=1), today - timedelta(days=1), KOLKATA),  # one day
        D.Filters(today - timedelta(days=2), today, KOLKATA, action="COUPON"),
        D.Filters(today - timedelta(days=2), today, "UTC", channel="SMS"),
        D.Filters(today - timedelta(days=2), today, "UTC", action="REGISTRATION", channel="WHATSAPP"),
        D.Filters(today - timedelta(days=40), today - timedelta(days=20), "UTC"),  # empty
    ]


# --- daily usage -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("index", range(8))
def test_daily_usage_matches_the_raw_rows(rt, traffic, index):
    f = filter_sets(rt)[index]
    expected = expected_usage(rt, f)
    with rt.db.connect() as conn:
        rows = D.daily_usage(conn, f)
        totals = D.usage_totals(conn, f)
        by_day = D.time_to_validate_by_day(conn, f)
    assert {(r.day, r.action): r for r in rows} == expected
    assert totals.requests == sum(r.requests for r in expected.values())
    assert totals.issued == sum(r.issued for r in expected.values())
    assert totals.resent == sum(r.resent for r in expected.values())
    assert totals.validations == sum(r.validations for r in expected.values())
    assert totals.validated == sum(r.validated for r in expected.values())
    assert (totals.codes_issued, totals.codes_used) == (sum(r.codes_issued for r in expected.values()),
                                                        sum(r.codes_used for r in expected.values()))
    times = expected_ttv(rt, f)
    everything = [s for values in times.values() for s in values]
    assert totals.ttv.count == len(everything)
    for p in (50, 95):
        assert getattr(totals.ttv, f"p{p}") == ttv_rank(everything, p)
    assert set(by_day) == set(times)
    for day, values in times.items():
        assert by_day[day].count == len(values)
        assert (by_day[day].p50, by_day[day].p95) == (ttv_rank(values, 50), ttv_rank(values, 95))
    if index == 7:
        assert rows == [] and totals.requests == 0 and totals.ttv.p50 is None


def test_previous_period_has_the_same_length():
    f = D.Filters(date(2026, 11, 20), date(2026, 11, 26), KOLKATA)
    assert f.previous() == D.Filters(date(2026, 11, 13), date(2026, 11, 19), KOLKATA)
    with pytest.raises(ValueError):
        D.Filters(date(2026, 11, 2), date(2026, 11, 1))


def _add_request(conn, at: datetime, *, action="COUPON", kind="issued", channel="SMS", latency=100.0,
                 status="delivered", error=None) -> int:
    code_id = conn.execute(insert(OtpCode).values(
        org_id=1, user_key="MOBILE:+919955882233", entity_type="MOBILE", action=action, code_hmac=b"x", created_at=at,
        expires_at=at + timedelta(minutes=10), state="expired").returning(OtpCode.id)).scalar_one()
    request_id = conn.execute(insert(OtpRequest).values(
        org_id=1, created_at=at, code_id=code_id, user_key="MOBILE:+919955882233", action=action, kind=kind)
        .returning(OtpRequest.id)).scalar_one()
    conn.execute(insert(Delivery).values(
        org_id=1, request_id=request_id, code_id=code_id, channel=channel, destination="+919955882233", gateway="gw",
        status=status, error=error, latency_ms=latency, attempts=1, created_at=at, updated_at=at))
    return request_id


def test_a_day_boundary_in_a_non_utc_zone(rt):
    # Midnight in Kolkata is 18:30 UTC: one microsecond either side lands on different local days.
    midnight = datetime(2026, 11, 25, 18, 30, tzinfo=timezone.utc)
    with rt.db.begin() as conn:
        _add_request(conn, midnight - timedelta(microseconds=1), latency=10.0)
        _add_request(conn, midnight, latency=20.0)
        _add_request(conn, midnight + timedelta(hours=5, minutes=29), latency=30.0)  # 23:59 UTC, still the 26th
        conn.execute(insert(LimitEvent).values(org_id=1, created_at=midnight - timedelta(seconds=1),
                                               user_key="MOBILE:+919955882233", action="COUPON", limit_type="daily"))
    with rt.db.connect() as conn:
        kolkata = D.daily_usage(conn, D.Filters(date(2026, 11, 25), date(2026, 11, 26), KOLKATA))
        utc = D.daily_usage(conn, D.Filters(date(2026, 11, 25), date(2026, 11, 26), "UTC"))
        one_day = D.Filters(date(2026, 11, 26), date(2026, 11, 26), KOLKATA)
        deliveries = D.delivery_by_day(conn, D.Filters(date(2026, 11, 25), date(2026, 11, 26), KOLKATA))
        summary = D.delivery_summary(conn, one_day)
        refusals = D.refusals_by_day(conn, D.Filters(date(2026, 11, 25), date(2026, 11, 26), KOLKATA))
        assert D.usage_totals(conn, one_day).requests == 2
    assert [(r.day, r.requests) for r in kolkata] == [("2026-11-25", 1), ("2026-11-26", 2)]
    assert [(r.day, r.requests) for r in utc] == [("2026-11-25", 3)]
    assert [(d.day, d.messages) for d in deliveries] == [("2026-11-25", 1), ("2026-11-26", 2)]
    # Latency percentiles are bin upper edges: 20 ms is an edge, 30 ms lies in the bin ending at 31.6 ms.
    assert [(s.messages, s.p50_ms, s.p99_ms) for s in summary] == [(2, 20.0, 31.6)]
    assert refusals == [("2026-11-25", "daily", 1)]


def test_a_dst_day_has_25_hours():
    [day] = D.Filters(date(2026, 11, 1), date(2026, 11, 1), "America/New_York").days()
    assert (day.end - day.start) == timedelta(hours=25)


# --- delivery ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("index", [0, 1, 3, 5, 6, 7])
def test_delivery_figures_match_the_raw_rows(rt, traffic, index):
    f = filter_sets(rt)[index]
    actions = {r.id: r.action for r in raw(rt, OtpRequest)}
    rows = [d for d in raw(rt, Delivery) if in_filters(d.created_at, f) and f.channel in (None, d.channel)
            and f.action in (None, actions[d.request_id])]
    with rt.db.connect() as conn:
        summary = D.delivery_summary(conn, f)
        by_day = D.delivery_by_day(conn, f)
        failures = D.failures_by_error(conn, f, top=1000)
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for d in rows:
        groups[(d.channel, d.gateway)].append(d)
    assert [(s.channel, s.gateway) for s in summary] == sorted(groups)
    for s in summary:
        mine = groups[(s.channel, s.gateway)]
        status = Counter(d.status for d in mine)
        assert (s.messages, s.queued, s.sent, s.delivered, s.failed) == \
            (len(mine), status["queued"], status["sent"], status["delivered"], status["failed"])
        latencies = [d.latency_ms for d in mine if d.latency_ms is not None]
        for p in (50, 95, 99):
            assert getattr(s, f"p{p}_ms") == binned_rank(latencies, p)
    per_day = Counter((day_of(d.created_at, f.tz), d.channel) for d in rows)
    assert {(d.day, d.channel): d.messages for d in by_day} == per_day
    assert {(d.day, d.channel): d.failed for d in by_day} == \
        Counter((day_of(d.created_at, f.tz), d.channel) for d in rows if d.status == "failed") | \
        {k: 0 for k in per_day if not any(d.status == "failed" and (day_of(d.created_at, f.tz), d.channel) == k
                                          for d in rows)}
    errors = Counter((d.channel, d.gateway, d.error or "(no error text)") for d in rows if d.status == "failed")
    assert {(x.channel, x.gateway, x.error): x.count for x in failures} == errors
    if index == 7:
        assert summary == [] and by_day == [] and failures == []


def test_live_panel_counts_the_last_minutes(rt, traffic):
    now = rt.clock()
    rows = [d for d in raw(rt, Delivery) if now - timedelta(minutes=60) <= d.created_at <= now]
    with rt.db.connect() as conn:
        live = D.live_delivery(conn, now=now, minutes=60, org_id=1)
    assert {x.channel: x.messages for x in live} == Counter(d.channel for d in rows)


def test_request_timeline_masks_the_recipient_and_never_shows_the_code(rt):
    payload = {"entityType": "MOBILE", "entityValue": "9955882233", "action": "COUPON"}
    created = run(generate(rt, payload, org_id=1))
    code = code_sent_to(rt, "+919955882233")
    run(validate(rt, {**payload, "code": "000000" if code != "000000" else "111111"}, org_id=1))
    run(validate(rt, {**payload, "code": code}, org_id=1))
    with rt.db.connect() as conn:
        assert D.find_requests(conn, recipient="+919955882233", org_id=1) == [created.created_id]
        timeline = D.request_timeline(conn, created.created_id, org_id=1)
        assert D.request_timeline(conn, 999, org_id=1) is None
    shown = " ".join(f"{e.event} {e.detail}" for e in timeline.events) + timeline.user
    assert code not in shown and "9955882233" not in shown
    assert [e.event for e in timeline.events] == ["request accepted", "SMS queued", "SMS delivered",
                                                  "validation", "validation"]
    assert [e.detail for e in timeline.events][-2:] == ["wrong", "ok"]


# --- rate limits -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("index", [0, 1, 4, 7])
def test_refusal_figures_match_the_raw_rows(rt, traffic, index):
    f = filter_sets(rt)[index]
    events = [e for e in raw(rt, LimitEvent) if in_filters(e.created_at, f) and f.action in (None, e.action)]
    burned = [v for v in raw(rt, OtpValidation) if in_filters(v.created_at, f) and f.action in (None, v.action)
              and v.outcome == "burned"]
    with rt.db.connect() as conn:
        by_type = D.refusals_by_type(conn, f)
        by_day = D.refusals_by_day(conn, f)
        users = D.top_refused_users(conn, f, top=1000)
        prefixes = D.top_refused_prefixes(conn, f, digits=7, top=1000)
    expected = Counter(e.limit_type for e in events)
    assert by_type == {t: expected.get(t, 0) for t in D.LIMIT_TYPES} | {"attempts": len(burned)}
    assert Counter({(d, t): n for d, t, n in by_day}) == Counter((day_of(e.created_at, f.tz), e.limit_type)
                                                                 for e in events)
    assert {u.user_key: u.refusals for u in users} == Counter(e.user_key for e in events)
    for u in users:
        mine = [e for e in events if e.user_key == u.user_key]
        assert u.last_at == max(e.created_at for e in mine)
        assert u.kinds == ", ".join(sorted({e.limit_type for e in mine}))
        assert "+91" not in u.user or "*" in u.user  # masked
    phones = [e for e in events if e.user_key.startswith("MOBILE:")]
    assert {p: n for p, n, _ in prefixes} == Counter(e.user_key[7:15] for e in phones)
    if index == 0:
        assert by_type["code_sends"] and by_type["validate"] and by_type["lock"] and by_type["attempts"]
        assert prefixes[0][0] == "+9190000"  # the burst
    if index == 7:
        assert users == [] and by_day == [] and sum(by_type.values()) == 0


def test_nearest_daily_limit_reads_todays_counters(rt, traffic):
    today = rt.clock().astimezone(rt.settings.tz).date().isoformat()
    counters = [u for u in raw(rt, UsageCounter) if u.scope == "daily:*" and u.period == today]
    with rt.db.connect() as conn:
        near = D.nearest_daily_limit(conn, day=today, limit=rt.settings.daily_limit, top=5, org_id=1)
    assert [n.count for n in near] == sorted((u.count for u in counters), reverse=True)[:5]
    assert all(n.share == n.count / rt.settings.daily_limit for n in near)


def _configs(rt) -> dict:
    return {a.value: c for a, c in rt.active_configs(1).items()}


def test_why_refused_says_when_a_lock_lifts_and_an_admin_unblocks_it(rt, team, clock: FrozenClock):
    payload = {"entityType": "MOBILE", "entityValue": "9955882233", "action": "COUPON"}
    user_key = "MOBILE:+919955882233"
    config = rt.config_for(1, Action.COUPON)
    for n in range(config.max_consecutive_failures):
        if n % config.attempts_per_code == 0:
            clock.advance(minutes=config.validate_window_minutes)
            run(generate(rt, payload, org_id=1))
        run(validate(rt, {**payload, "code": "000000" if code_sent_to(rt, "+919955882233") != "000000" else "1"}, org_id=1))
    locked_at = clock()
    clock.advance(minutes=config.validate_window_minutes)  # a fresh validate window: only the lock refuses
    with pytest.raises(OtpError) as refused:
        run(validate(rt, {**payload, "code": "123456"}, org_id=1))
    assert refused.value.http_status == 429
    with rt.db.connect() as conn:
        limits = D.why_refused(conn, rt.settings, user_key=user_key, now=clock(), configs=_configs(rt), org_id=1)
    [lock] = [b for b in limits.blocks if b.limit_type == "lock"]
    assert lock.action == "COUPON"
    assert lock.lifts_at == locked_at + timedelta(minutes=config.lock_minutes)
    assert limits.recent[0][1] == "lock"
    assert limits.user == "MOBILE:+91********33"

    with rt.session() as session, pytest.raises(PermissionDenied):
        unblock(session, actor=team["editor"], user_key=user_key, limit_type="lock", action="COUPON",
                  reason="customer called", now=clock(), tz=rt.settings.tz, org_id=1)
    with rt.session() as session, pytest.raises(ValueError):
        unblock(session, actor=team["admin"], user_key=user_key, limit_type="lock", action="COUPON",
                  reason=" ", now=clock(), tz=rt.settings.tz, org_id=1)
    with rt.session() as session:
        assert unblock(session, actor=team["admin"], user_key=user_key, limit_type="lock", action="COUPON",
                         reason="customer called", now=clock(), tz=rt.settings.tz, org_id=1) == 1
    with rt.db.connect() as conn:
        after = D.why_refused(conn, rt.settings, user_key=user_key, now=clock(), configs=_configs(rt), org_id=1)
        audit = conn.execute(select(AuditLog.actor, AuditLog.action, AuditLog.target, AuditLog.reason)
                             .where(AuditLog.action == "limits.unblock")).all()
    assert [b for b in after.blocks if b.limit_type == "lock"] == []
    assert audit == [("ada", "limits.unblock", f"user:{user_key}", "customer called")]


def test_why_refused_explains_the_daily_limit_until_local_midnight(rt, db_url, tmp_path):
    from core.runtime import Runtime
    from tests.conftest import make_settings
    clock = FrozenClock(datetime(2026, 11, 25, 18, 0, tzinfo=timezone.utc))  # 23:30 in Kolkata
    small = Runtime(make_settings(db_url, tmp_path, daily_limit=2, timezone=KOLKATA), clock=clock, prepare=False)
    payload = {"entityType": "MOBILE", "entityValue": "9955882233", "action": "COUPON"}
    run(generate(small, payload, org_id=1))
    run(generate(small, payload, org_id=1))
    with pytest.raises(OtpError):
        run(generate(small, payload, org_id=1))
    with small.db.connect() as conn:
        limits = D.why_refused(conn, small.settings, user_key="MOBILE:+919955882233", now=clock(),
                               configs=_configs(small), org_id=1)
        near = D.nearest_daily_limit(conn, day="2026-11-25", limit=2, org_id=1)
    [daily] = limits.blocks
    assert daily.limit_type == "daily" and daily.lifts_at == datetime(2026, 11, 25, 18, 30, tzinfo=timezone.utc)
    assert [(n.count, n.share) for n in near] == [(2, 1.0)]
    small.db.dispose()


# --- the pages ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("page", ["pages/dash_usage.py", "pages/dash_delivery.py", "pages/dash_limits.py"])
def test_each_dashboard_opens_empty_for_a_viewer(rt, team, page):
    at = on_page(rt, team["viewer"], page)
    assert not at.exception, page
    assert at.metric  # the KPI row is there even with no traffic


def test_usage_page_shows_the_figures(rt, team, traffic):
    at = on_page(rt, team["viewer"], "pages/dash_usage.py")
    assert not at.exception
    f = D.Filters(rt.clock().date() - timedelta(days=6), rt.clock().date(), rt.settings.timezone)
    with rt.db.connect() as conn:
        totals = D.usage_totals(conn, f)
    assert at.metric[0].value == f"{totals.requests:,}"
    table = at.dataframe[0].value
    assert int(table["requests"].sum()) == totals.requests
    at.selectbox(key="usage_action").select("COUPON").run()
    assert not at.exception
    assert set(at.dataframe[0].value["action"]) == {"COUPON"}
    assert "+91" not in at.dataframe[0].value.to_csv()


def test_delivery_page_and_timeline(rt, team, traffic):
    at = on_page(rt, team["viewer"], "pages/dash_delivery.py")
    assert not at.exception
    assert len(at.dataframe[0].value) >= 3
    with rt.db.connect() as conn:
        request_id, destination = conn.execute(text("SELECT request_id, destination FROM delivery "
                                                    "WHERE channel = 'SMS' ORDER BY id LIMIT 1")).one()
    at.text_input(key="delivery_search").input(str(request_id)).run()
    assert not at.exception
    timeline = frame_with(at, "event")
    assert "request accepted" in list(timeline["event"])
    assert destination not in timeline.to_csv()
    at.text_input(key="delivery_search").input(destination).run()
    assert not at.exception and destination not in frame_with(at, "event").to_csv()


def test_limits_page_explains_and_admin_unblocks(rt, team, traffic):
    with rt.db.connect() as conn:
        user_key = conn.execute(text("SELECT user_key FROM limit_event WHERE limit_type = 'lock' LIMIT 1")).scalar()
    # The simulated lock was set a day or two ago: look at the console from a minute before it lifts.
    with rt.db.connect() as conn:
        until = conn.execute(select(FailureCounter.locked_until).where(FailureCounter.user_key == user_key)).scalar()
    rt.clock.now = until - timedelta(minutes=1)
    viewer = signed_in(rt, team["viewer"]).run()
    viewer.switch_page("pages/dash_limits.py").run()
    assert not viewer.exception
    viewer.text_input(key="limits_user").input(user_key.split(":", 1)[1]).run()
    assert not viewer.exception
    assert "Lock" in list(frame_with(viewer, "why")["limit"])
    assert not [b for b in viewer.button if b.key == "limits_unblock"]  # viewers cannot unblock

    admin = signed_in(rt, team["admin"]).run()
    admin.switch_page("pages/dash_limits.py").run()
    admin.text_input(key="limits_user").input(user_key.split(":", 1)[1]).run()
    admin.text_input(key="limits_unblock_reason").input("verified by phone")
    admin.button(key="limits_unblock").click().run()
    assert not admin.exception
    assert any("Lifted the lock" in s.value for s in admin.success)
    with rt.db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM audit_log WHERE action = 'limits.unblock'")).scalar() == 1


def test_home_button_simulates_for_editors_only(rt, team):
    viewer = signed_in(rt, team["viewer"]).run()
    assert not [b for b in viewer.button if b.key == "home_simulate"]
    editor = signed_in(rt, team["editor"]).run()
    editor.button(key="home_simulate").click().run()
    assert not editor.exception
    assert any("Simulated" in s.value for s in editor.success)
    with rt.db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM otp_request")).scalar() > 50
        # The simulated gateways keep no readable code.
        assert conn.execute(text("SELECT count(*) FROM outbox_message")).scalar() == 0


def test_demo_traffic_can_keep_its_messages_in_the_outbox(rt):
    """keep_outbox: the simulated gateways pass the outbox's recording through, so each delivered message is kept."""
    report = simulate(rt, days=1, users=50, per_day=10, seed=11, small=True, end=rt.clock(), keep_outbox=True)
    with rt.read_db.connect() as conn:
        kept = conn.execute(text("SELECT count(*) FROM outbox_message")).scalar_one()
        sent = conn.execute(text("SELECT count(*) FROM delivery WHERE status IN ('sent', 'delivered')")).scalar_one()
    assert report.generates > 0 and kept == sent > 0
