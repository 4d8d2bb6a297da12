"""Delivery receipts (core.services.receipts): the receipt's lookup stays on its index on SQLite and PostgreSQL."""
from __future__ import annotations

from sqlalchemy import insert

from core.db.models import Delivery
from core.runtime import run
from core.services.generation import generate
from core.services.receipts import delivery_for_receipt


def _plan(conn, statement) -> str:  # type: ignore[no-untyped-def]
    """The database's own plan for statement, as text."""
    sql = str(statement.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    if conn.dialect.name == "sqlite":
        return "\n".join(row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
    # A few rows make a sequential scan the cheapest plan; forbidding it (and bitmap scans) leaves the index
    # scan when the index can answer the query, and a (disabled, still chosen) Seq Scan when it cannot.
    conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
    conn.exec_driver_sql("SET LOCAL enable_bitmapscan = off")
    return "\n".join(row[0] for row in conn.exec_driver_sql(f"EXPLAIN {sql}"))


def test_a_receipt_finds_its_delivery_through_the_receipt_index(rt):
    """The receipt's read runs inside its write transaction: a scan of every delivery there holds SQLite's
    write lock (and every request waiting for it) for as long as the table is long."""
    issued = run(generate(rt, {"entityType": "MOBILE", "entityValue": "+919955882233", "action": "COUPON"}, org_id=1))
    request_id = issued.request_id
    with rt.db.begin() as conn:
        conn.execute(insert(Delivery), [
            dict(org_id=1, request_id=request_id, code_id=1, channel="SMS", destination="+919955882233", gateway=gateway,
                 status="sent", provider_message_id=message_id, created_at=rt.clock(), updated_at=rt.clock())
            for gateway, message_id in [("twilio", "SM1"), ("twilio", "SM2"), ("hook", "SM1"), ("outbox", None)]])
        plan = _plan(conn, delivery_for_receipt("twilio", "SM2"))
        found = conn.execute(delivery_for_receipt("twilio", "SM2")).all()
    assert len(found) == 1
    if rt.db.dialect.name == "sqlite":
        assert "USING INDEX ix_delivery_receipt" in plan, plan
    else:
        assert "Index Scan using ix_delivery_receipt" in plan and "Seq Scan" not in plan, plan
