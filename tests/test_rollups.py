"""The dashboard rollups stay equal to a rebuild from the raw rows while rows arrive and change after the fact."""
from __future__ import annotations

import itertools
import json
import threading
import time
from datetime import date, datetime, timedelta, timezone

import pytest
from sqlalchemy import insert, select, text, update

from core.admin.gateways import save_gateway
from core.db.models import Delivery, GatewayConfigBase, OtpCode, OtpRequest, OtpValidation
from core.reporting import dashboards as D
from core.reporting import rollups as R
from core.services.receipts import apply_receipt, webhook_signature
from simulate import simulate

DAY = date(2026, 11, 20)
NOON = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
ONE_DAY = D.Filters(DAY, DAY, "UTC")
_numbers = itertools.count(9955882233)


def add_code(conn, at: datetime, *, action="COUPON", channel="SMS", status="delivered", latency=100.0,
             message_id=None, gateway="gw") -> tuple[int, int, int]:
    """A code (for a user of its own), its issuing request and one delivery, written directly:
    (code id, request id, delivery id)."""
    user_key = f"MOBILE:+91{next(_numbers)}"
    code_id = conn.execute(insert(OtpCode).values(
        org_id=1, user_key=user_key, entity_type="MOBILE", action=action, code_hmac=b"x", created_at=at,
        expires_at=at + timedelta(minutes=10), state="active").returning(OtpCode.id)).scalar_one()
    request_id = conn.execute(insert(OtpRequest).values(
        org_id=1, created_at=at, code_id=code_id, user_key=user_key, action=action, kind="issued")
        .returning(OtpRequest.id)).scalar_one()
    delivery_id = add_delivery(conn, at, request_id, code_id, channel=channel, status=status, latency=latency,
                               message_id=message_id, gateway=gateway)
    return code_id, request_id, delivery_id


def add_delivery(conn, at, request_id, code_id, *, channel="SMS", status="delivered", latency=100.0,
                 message_id=None, gateway="gw") -> int:
    return conn.execute(insert(Delivery).values(
        org_id=1, request_id=request_id, code_id=code_id, channel=channel, destination="+919955882233", gateway=gateway,
        status=status, latency_ms=latency, attempts=1, created_at=at, updated_at=at,
        provider_message_id=message_id).returning(Delivery.id)).scalar_one()


def use_code(conn, code_id: int, at: datetime) -> None:
    """What validate does with a right code: mark it used and record the validation, in one transaction."""
    conn.execute(update(OtpCode).where(OtpCode.id == code_id).values(state="used", used_at=at, code_enc=None))
    conn.execute(insert(OtpValidation).values(org_id=1, created_at=at, user_key="MOBILE:+919955882233", action="COUPON",
                                              code_id=code_id, outcome="ok"))


def snapshot(rt) -> dict[str, list]:
    """Every rollup row (failure rows without their id), in a stable order."""
    with rt.db.connect() as conn:
        return {
            "usage": [tuple(r) for r in conn.execute(select(R.usage).order_by(*R.usage.primary_key.columns))],
            "delivery": [tuple(r) for r in conn.execute(select(R.deliveries)
                                                        .order_by(*R.deliveries.primary_key.columns))],
            "failure": sorted(tuple(r)[1:] for r in conn.execute(select(R.failures))),
        }


def test_incremental_refreshes_equal_a_rebuild(rt):
    end = rt.clock()
    simulate(rt, days=2, users=200, per_day=25, seed=3, small=True, end=end - timedelta(days=2))
    first = R.refresh(rt.db)
    assert first is not None and first.full
    assert R.refresh(rt.db) is None  # nothing new: a few indexed lookups, no writes
    assert not R.needs_refresh(rt.db)
    # Later traffic, older traffic written afterwards (ids out of time order), and a receipt-less status change.
    simulate(rt, days=1, users=200, per_day=25, seed=4, small=True, end=end)
    simulate(rt, days=1, users=200, per_day=10, seed=5, small=True, end=end - timedelta(days=6))
    step = R.refresh(rt.db)
    assert step is not None and not step.full and 0 < step.usage_buckets < first.usage_buckets
    incremental = snapshot(rt)
    assert incremental["usage"] and incremental["delivery"] and incremental["failure"]
    R.rebuild(rt.db)
    assert snapshot(rt) == incremental


def test_a_queued_delivery_is_counted_again_when_its_send_result_arrives(rt):
    with rt.db.begin() as conn:
        _code, _request, delivery_id = add_code(conn, NOON, status="queued", latency=None)
    with rt.db.connect() as conn:
        [row] = D.delivery_summary(conn, ONE_DAY)
    assert (row.queued, row.delivered, row.p50_ms) == (1, 0, None)
    # The engine records the send result with an UPDATE only: no new row says the bucket changed.
    with rt.db.begin() as conn:
        conn.execute(update(Delivery).where(Delivery.id == delivery_id).values(status="delivered", latency_ms=250.0))
    assert R.needs_refresh(rt.db)
    with rt.db.connect() as conn:
        [row] = D.delivery_summary(conn, ONE_DAY)
    assert (row.queued, row.delivered, row.p50_ms) == (0, 1, 251.0)
    assert not R.needs_refresh(rt.db)


def test_a_receipt_moves_a_sent_delivery_to_failed(rt, team):
    with rt.session() as db:
        save_gateway(db, rt.box, actor=team["admin"], credentials={"webhook_secret": "whsec"}, config=GatewayConfigBase(
            name="hook", channel="SMS", provider="webhook_sms", endpoint="http://127.0.0.1:9/send", is_default=False), org_id=1)
    rt.configuration_changed()
    with rt.db.begin() as conn:
        add_code(conn, NOON, status="sent", message_id="msg-1", gateway="hook")
    with rt.db.connect() as conn:
        assert [(r.sent, r.failed) for r in D.delivery_summary(conn, ONE_DAY)] == [(1, 0)]
        assert D.failures_by_error(conn, ONE_DAY) == []
    body = json.dumps({"message_id": "msg-1", "status": "failed"}).encode()
    now = str(int(time.time()))
    apply_receipt(rt, "hook", url="", headers={"X-Timestamp": now, "X-Signature": webhook_signature("whsec", now, body)},
                  body=body, org_id=1)
    with rt.db.connect() as conn:
        assert [(r.sent, r.failed) for r in D.delivery_summary(conn, ONE_DAY)] == [(0, 1)]
        assert [(f.gateway, f.error, f.count) for f in D.failures_by_error(conn, ONE_DAY)] == \
            [("hook", R.NO_ERROR_TEXT, 1)]
        assert [(d.day, d.failed) for d in D.delivery_by_day(conn, ONE_DAY)] == [("2026-11-20", 1)]


def test_a_later_delivery_on_another_channel_counts_earlier_rows_under_it(rt):
    with rt.db.begin() as conn:
        code_id, request_id, _ = add_code(conn, NOON, channel="WHATSAPP")
        use_code(conn, code_id, NOON + timedelta(minutes=40))  # validated in a later bucket
    sms = D.Filters(DAY, DAY, "UTC", channel="SMS")
    with rt.db.connect() as conn:
        assert D.usage_totals(conn, sms).requests == 0
    # Failover sends SMS 50 minutes later: the request, its code and the code's validation now count under SMS.
    with rt.db.begin() as conn:
        add_delivery(conn, NOON + timedelta(minutes=50), request_id, code_id, channel="SMS")
    with rt.db.connect() as conn:
        totals = D.usage_totals(conn, sms)
        [usage] = D.daily_usage(conn, sms)
    assert (totals.requests, totals.validated, totals.codes_issued, totals.codes_used) == (1, 1, 1, 1)
    assert (usage.requests, usage.validations, usage.codes_used) == (1, 1, 1)
    assert totals.ttv.p50 == 2510.0  # 40 minutes = 2400 s, in the bin ending at 2510 s


def test_a_code_used_days_later_joins_the_cohort_of_its_issue_day(rt):
    with rt.db.begin() as conn:
        code_id, _, _ = add_code(conn, NOON)
    with rt.db.connect() as conn:
        assert (D.usage_totals(conn, ONE_DAY).codes_used, D.usage_totals(conn, ONE_DAY).ttv.count) == (0, 0)
    with rt.db.begin() as conn:
        use_code(conn, code_id, NOON + timedelta(days=2, seconds=1))
    with rt.db.connect() as conn:
        totals = D.usage_totals(conn, ONE_DAY)
        by_day = D.time_to_validate_by_day(conn, D.Filters(DAY, DAY + timedelta(days=2), "UTC"))
    assert (totals.codes_issued, totals.codes_used, totals.validations) == (1, 1, 0)  # validated on another day
    assert totals.ttv.p95 == 172_801.0  # above the last edge (100,000 s): the largest value itself
    assert list(by_day) == ["2026-11-20"]


# PostgreSQL only: SQLite serialises writers, so its ids are assigned in commit order.
@pytest.mark.parametrize("db_url", [pytest.param("postgresql", marks=pytest.mark.postgresql)], indirect=True)
def test_a_late_commit_below_the_high_water_mark_is_noticed(rt):
    early = rt.db.connect()
    early.begin()
    add_code(early, NOON)  # takes the smaller ids, commits last
    with rt.db.begin() as conn:
        add_code(conn, NOON)
    with rt.db.connect() as conn:
        assert D.usage_totals(conn, ONE_DAY).requests == 1
    early.commit()
    early.close()
    assert R.needs_refresh(rt.db)
    with rt.db.connect() as conn:
        assert D.usage_totals(conn, ONE_DAY).requests == 2
        assert [r.messages for r in D.delivery_summary(conn, ONE_DAY)] == [2]


def test_concurrent_refreshes_agree_with_a_rebuild(rt):
    with rt.db.begin() as conn:
        for minutes in range(0, 600, 7):
            code_id, _, _ = add_code(conn, NOON + timedelta(minutes=minutes), channel="SMS" if minutes % 2 else "EMAIL")
            if minutes % 3:
                use_code(conn, code_id, NOON + timedelta(minutes=minutes, seconds=20))
    errors = []

    def run() -> None:
        try:
            R.refresh(rt.db)
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    together = snapshot(rt)
    R.rebuild(rt.db)
    assert snapshot(rt) == together


def test_rebuild_after_raw_rows_were_deleted(rt):
    with rt.db.begin() as conn:
        add_code(conn, NOON)
        code_id, request_id, delivery_id = add_code(conn, NOON + timedelta(days=3))
    later = D.Filters(DAY + timedelta(days=3), DAY + timedelta(days=3), "UTC")
    with rt.db.connect() as conn:
        assert (D.usage_totals(conn, ONE_DAY).requests, D.usage_totals(conn, later).requests) == (1, 1)
    with rt.db.begin() as conn:  # a purge of the newest rows, which refresh does not follow
        conn.execute(Delivery.__table__.delete().where(Delivery.id == delivery_id))
        conn.execute(OtpRequest.__table__.delete().where(OtpRequest.id == request_id))
        conn.execute(OtpCode.__table__.delete().where(OtpCode.id == code_id))
    R.rebuild(rt.db)
    with rt.db.connect() as conn:
        assert (D.usage_totals(conn, ONE_DAY).requests, D.usage_totals(conn, later).requests) == (1, 0)
        assert D.delivery_summary(conn, later) == []


def test_days_not_on_a_quarter_hour_are_refused():
    # In 1900 Kolkata kept local mean time, +5:53:20: its midnights fall between buckets.
    with pytest.raises(ValueError, match="quarter hour"):
        D._buckets(D.Filters(date(1900, 1, 1), date(1900, 1, 2), "Asia/Kolkata"))
    assert D._buckets(D.Filters(date(2026, 11, 26), date(2026, 11, 26), "Asia/Kathmandu"))  # +5:45 is fine


def test_cover_reads_each_quarter_hour_once_through_the_coarsest_rows_that_fit():
    import random
    rng = random.Random(5)
    for _ in range(3000):
        first = rng.randrange(0, 5000)
        stop = first + rng.randrange(1, 3000)
        runs = R.cover(first, stop)
        assert [q for _, lo, hi in runs for q in range(lo, hi)] == list(range(first, stop))
        assert all(span in R.SPANS and lo % span == 0 and hi % span == 0 for span, lo, hi in runs)
    # 30 local days in Kolkata (+5:30): 29 whole UTC days, and around them the half hours, hours and six hours
    # from 18:30 to midnight and from midnight to 18:30.
    kolkata = R.bucket_of(datetime(2026, 10, 31, 18, 30, tzinfo=timezone.utc))
    assert [(span, lo - kolkata, hi - kolkata) for span, lo, hi in R.cover(kolkata, kolkata + 30 * R.DAY)] == [
        (R.HALF, 0, 2), (R.HOUR, 2, 22), (R.DAY, 22, 22 + 29 * R.DAY), (R.SIX_HOURS, 22 + 29 * R.DAY, 94 + 29 * R.DAY),
        (R.HALF, 94 + 29 * R.DAY, 96 + 29 * R.DAY)]


def _refresh_waiting_for_the_lock(engine) -> bool:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return bool(conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'advisory' "
            "AND query LIKE 'SELECT pg_advisory_lock(%'")).scalar_one())


def test_a_refresh_waits_for_one_in_its_own_schema_only(rt):
    """The refresh lock is per schema: a first build elsewhere in the same database (another installation, a
    benchmark) holds it for minutes and must not stall this one; one in the same schema still takes turns."""
    if rt.db.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's advisory locks are per database; SQLite has one file per installation")
    from core.db.engine import make_engine, schema_advisory_lock, schema_advisory_unlock
    from core.db.schemas import PrivateSchema
    from tests.conftest import PG_URL
    from tests.fakes import wait_for

    def hold(engine):  # type: ignore[no-untyped-def]
        conn = engine.connect()
        schema_advisory_lock(conn, R._LOCK_KEY)
        conn.commit()
        return conn

    def rebuild_in_thread() -> threading.Thread:
        worker = threading.Thread(target=R.rebuild, args=(rt.db,), daemon=True)
        worker.start()
        return worker

    with PrivateSchema(PG_URL, "otp_elsewhere") as elsewhere_url:
        elsewhere = make_engine(elsewhere_url)
        held = hold(elsewhere)
        try:
            worker = rebuild_in_thread()
            worker.join(60)
            assert not worker.is_alive(), "a refresh waited for another schema's refresh"
        finally:
            held.close()
            elsewhere.dispose()

    held = hold(rt.db)  # the same schema: the rebuild waits until it is released
    try:
        worker = rebuild_in_thread()
        wait_for(lambda: _refresh_waiting_for_the_lock(rt.db), timeout=60)
        assert worker.is_alive()
    finally:
        schema_advisory_unlock(held, R._LOCK_KEY)  # a session lock outlives pooling
        held.commit()
        held.close()
    worker.join(60)
    assert not worker.is_alive()
