"""The raw-driver reference for PostgreSQL: a generate's transaction sent through psycopg 3 directly.

    python bench/rawpg.py URL [--transactions 2000] [--processes 2]

One transaction has the shape of a generate for a new user with the outbox gateway, with the very statements the
engine sends (core.issuing.counters, core.issuing.codes, core.services, core.delivery.gateways.outbox), written out here so that this
reference does not move when the service changes: the daily counter's upsert, the code's insert, the request's,
the delivery's and the outbox message's (each with RETURNING, each result read before the next statement is sent,
as an application does), then COMMIT (synchronous_commit as the server has it: on). BEGIN is psycopg's own.

--processes processes (default 2, as the API's 2 workers) each send their share of --transactions one after the
other on one connection, all starting together; the rate is all transactions over the slowest process's time.
No HTTP, no SQLAlchemy, no event loop: the rate the database and the driver allow this machine, which
bench/load.py prints the API's rates against. Rows go into the tables of the schema the URL names.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import time
from datetime import datetime, timedelta, timezone

BUMP = ("INSERT INTO usage_counter (scope, user_key, period, count) VALUES (%s, %s, %s, 1) "
        "ON CONFLICT (scope, user_key, period) DO UPDATE SET count = usage_counter.count + 1 "
        "WHERE usage_counter.count < %s RETURNING usage_counter.count")
INSERT_CODE = ("INSERT INTO otp_code (org_id, user_key, entity_type, action, code_hmac, code_enc, created_at, "
               "expires_at, state, failed_attempts, send_count) "
               "VALUES (1, %s, 'MOBILE', 'COUPON', %s, %s, %s, %s, 'active', 0, 1) "
               "ON CONFLICT (org_id, user_key, action) WHERE state = 'active' DO NOTHING RETURNING otp_code.id")
INSERT_REQUEST = ("INSERT INTO otp_request (org_id, created_at, code_id, user_key, action, kind, client_id) "
                  "VALUES (1, %s, %s, %s, 'COUPON', 'issued', NULL) RETURNING otp_request.id")
INSERT_DELIVERY = ("INSERT INTO delivery (org_id, request_id, code_id, channel, destination, gateway, status, error, "
                   "latency_ms, attempts, created_at, updated_at, failover_step) "
                   "VALUES (1, %s, %s, 'SMS', %s, 'outbox', 'delivered', NULL, 0.1, 1, %s, %s, 0) RETURNING delivery.id")
INSERT_OUTBOX = ("INSERT INTO outbox_message (org_id, created_at, delivery_id, channel, recipient, subject, body, "
                 "is_html) VALUES (1, %s, %s, 'SMS', %s, NULL, %s, false) RETURNING outbox_message.id")


def libpq_url(url: str) -> str:
    """A SQLAlchemy URL (postgresql+psycopg://...) as libpq takes it."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _one_process(url: str, count: int, tag: str, barrier, results) -> None:  # type: ignore[no-untyped-def]
    import psycopg

    with psycopg.connect(libpq_url(url)) as conn:
        cur = conn.cursor()
        day = datetime.now(timezone.utc).date().isoformat()

        def one(i: int) -> None:
            now = datetime.now(timezone.utc)
            user = f"MOBILE:+9198{tag}{i:06d}"
            cur.execute(BUMP, ("daily:*", user, day, 500))
            assert cur.fetchone() is not None
            cur.execute(INSERT_CODE, (user, os.urandom(32), os.urandom(40), now, now + timedelta(minutes=10)))
            code_id = cur.fetchone()[0]
            cur.execute(INSERT_REQUEST, (now, code_id, user))
            request_id = cur.fetchone()[0]
            cur.execute(INSERT_DELIVERY, (request_id, code_id, user[7:], now, now))
            delivery_id = cur.fetchone()[0]
            cur.execute(INSERT_OUTBOX, (now, delivery_id, user[7:], "Your COUPON code is: 000000"))
            cur.fetchone()
            conn.commit()

        for i in range(min(100, count)):  # warm: connection, plans, caches
            one(count + i)
        barrier.wait()
        started = time.perf_counter()
        for i in range(count):
            one(i)
        results.put(time.perf_counter() - started)


def raw_rate(url: str, transactions: int = 2000, processes: int = 2) -> float:
    """Generate-shaped transactions per second through psycopg, `processes` connections in parallel."""
    ctx = multiprocessing.get_context("spawn")  # no inherited state (an SQLAlchemy pool, a loop)
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    share = max(1, transactions // processes)
    run = f"{random.randrange(10_000):04d}"  # users of their own per call (each transaction is a first generate)
    procs = [ctx.Process(target=_one_process, args=(url, share, f"{run}{p}"[-5:], barrier, results))
             for p in range(processes)]
    for proc in procs:
        proc.start()
    try:
        times = [results.get(timeout=300) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    return share * processes / max(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="postgresql+psycopg://... of a migrated schema (search_path in options)")
    parser.add_argument("--transactions", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    print(f"{raw_rate(args.url, args.transactions, args.processes):.0f} transactions/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
