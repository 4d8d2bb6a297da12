"""Dashboard queries on 1,000,000 OTP requests and 2,000,000 deliveries over 30 days, against pandas.

    python bench/dashboards.py [--requests 1000000] [--orgs 10] [--path /tmp/otp-dash-bench.db] [--reuse]
    python bench/dashboards.py --reuse --postgresql postgresql+psycopg://postgres@127.0.0.1:5432/test

The rows are made inside SQLite with a recursive CTE (not through the engine: that would take hours), with
ids increasing with time as in production. Pseudo-random values come from a multiplicative hash of the row
number, since SQLite may evaluate random() more than once per row. With --postgresql the same rows are
copied into a private schema of that database, which is dropped afterwards.

The dashboards' rollups (core/reporting/rollups.py) are built first and timed on their own: the first build reads
every raw row once; then the refresh after an hour of new rows, and the check when nothing is new (which
every query below includes). Each dashboard query is timed over the whole 30 days (the worst case) and
over one day, the median of 3 runs, beside the same figure computed by loading the raw rows of the range
into pandas; the goal is under 0.5 s per query. With --orgs N the rows are spread over N organisations (each
customer's key carrying its organisation, as the engine writes it): every query is timed for one organisation
and for all of them (the platform admins' view, with its per-organisation breakdown). --reuse --orgs N must
name the N the file was built with (it only decides which scopes are timed).
"""
from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
from sqlalchemy import Engine, func, select, text, update

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.db.engine import make_engine  # noqa: E402
from core.db.schemas import PrivateSchema  # noqa: E402
from core.reporting import dashboards as D  # noqa: E402
from core.runtime import prepare_database  # noqa: E402

START = datetime(2026, 10, 28, tzinfo=timezone.utc)
DAYS = 30
ACTIONS = ["COUPON", "POINTS", "REGISTRATION", "USERGROUP", "SUBSCRIPTION", "GENERIC", "POINTSTRANSFER",
           "CUSTOMER_STATUS_UPDATE", "CUSTOMER_IDENTIFIER_CHANGE", "CUSTOMER_ISSUE_LINK_CARD"]


def h(expr: str, salt: int) -> str:
    """A pseudo-random non-negative integer from expr (an integer column), in SQL."""
    return f"((({expr}) * 2654435761 + {salt * 40503}) % 4294967296)"


def ts(seconds_expr: str) -> str:
    """The stored SQLite text of START + seconds (a float expression), with microseconds."""
    base = int(START.timestamp())
    return (f"strftime('%Y-%m-%d %H:%M:%S', {base} + CAST({seconds_expr} AS INTEGER), 'unixepoch') || '.' || "
            f"printf('%06d', CAST((({seconds_expr}) - CAST({seconds_expr} AS INTEGER)) * 1000000 AS INTEGER))")


def case_list(index_expr: str, items: list[str]) -> str:
    whens = " ".join(f"WHEN {i} THEN '{v}'" for i, v in enumerate(items))
    return f"(CASE ({index_expr}) {whens} END)"


ORG_ZONES = ["UTC", "Asia/Kolkata", "Asia/Singapore", "Europe/London", "America/New_York"]


def org_of(index_expr: str, orgs: int) -> str:
    """The organisation of row index_expr: 1..orgs, spread evenly (pseudo-randomly)."""
    return f"(1 + {h(index_expr, 15)} % {orgs})"


def keyed(org_expr: str, customer_expr: str) -> str:
    """core.issuing.entities.user_key in SQL: the customer's key, 'o<org>|' first outside organisation 1."""
    return f"(CASE WHEN {org_expr} = 1 THEN '' ELSE 'o' || ({org_expr}) || '|' END || {customer_expr})"


def build(path: Path, requests: int, orgs: int = 1) -> None:
    if path.exists():
        path.unlink()
    engine = make_engine(f"sqlite:///{path}")
    prepare_database(engine)
    engine.dispose()
    codes = int(requests * 0.85)
    span = DAYS * 86400
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    started = time.perf_counter()
    db.executemany("INSERT INTO organisation (id, slug, name, timezone, created_at) VALUES (?, ?, ?, ?, ?)",
                   [(n, f"org-{n}", f"Organisation {n}", ORG_ZONES[n % len(ORG_ZONES)], "2026-10-01 00:00:00.000000")
                    for n in range(2, orgs + 1)])
    action = case_list(f"{h('i', 1)} % 10", ACTIONS)
    org = org_of("i", orgs)
    user = keyed(org, f"'MOBILE:+9199' || printf('%08d', {h('i', 2)} % 150000)")
    created = f"(i * {span / codes!r})"
    state = (f"(CASE WHEN {h('i', 3)} % 100 < 80 THEN 'used' WHEN {h('i', 3)} % 100 < 95 THEN 'expired' "
             f"WHEN {h('i', 3)} % 100 < 97 THEN 'burned' ELSE 'expired' END)")
    db.execute(f"""
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {codes})
        INSERT INTO otp_code (org_id, id, user_key, entity_type, action, code_hmac, code_enc, created_at, expires_at,
                              state, failed_attempts, send_count, used_at)
        SELECT {org}, i, {user}, 'MOBILE', {action}, x'00', NULL, {ts(created)}, {ts(created + ' + 600')}, {state}, 0, 1,
               CASE WHEN {h('i', 3)} % 100 < 80 THEN {ts(created + f" + 3 + ({h('i', 4)} % 1000) / 10.0")} END
        FROM n""")
    # Every code's issuing request, then re-sends of some codes 40 s later (ids interleave in time order).
    db.execute("""
        INSERT INTO otp_request (org_id, created_at, code_id, user_key, action, kind, client_id)
        SELECT org_id, created_at, id, user_key, action, kind, 1 FROM (
            SELECT org_id, created_at, id, user_key, action, 'issued' AS kind FROM otp_code
            UNION ALL
            SELECT org_id, strftime('%Y-%m-%d %H:%M:%f', created_at, '+40 seconds') || '000', id, user_key, action,
                   'resent'
            FROM otp_code WHERE id % 100 < {resend_percent}
        ) ORDER BY created_at""".format(resend_percent=round((requests - codes) / codes * 100)))
    total_requests = db.execute("SELECT count(*) FROM otp_request").fetchone()[0]
    channel_a = case_list(f"{h('r.id', 5)} % 10", ["SMS"] * 6 + ["EMAIL"] * 2 + ["PHONE", "ZALO"])
    gateway = f"(CASE {h('r.id', 6)} % 3 WHEN 0 THEN 'msg91' ELSE 'twilio' END)"
    status = (f"(CASE WHEN {h('r.id * 2 + k', 7)} % 100 < 92 THEN 'delivered' "
              f"WHEN {h('r.id * 2 + k', 7)} % 100 < 95 THEN 'sent' ELSE 'failed' END)")
    error = case_list(f"{h('r.id', 8)} % 4", ["HTTP 503 from provider", "provider timed out after 10 s",
                                              "destination unreachable", "HTTP 429 from provider: throttled"])
    latency = f"(80 + {h('r.id * 2 + k', 9)} % 900 + CASE WHEN {h('r.id', 10)} % 50 = 0 THEN 4000 ELSE 0 END)"
    db.execute(f"""
        INSERT INTO delivery (org_id, request_id, code_id, channel, destination, gateway, status, provider_message_id,
                              http_status, error, latency_ms, attempts, created_at, updated_at, failover_step)
        SELECT r.org_id, r.id, r.code_id, CASE k WHEN 0 THEN {channel_a} ELSE 'WHATSAPP' END,
               substr(r.user_key, instr(r.user_key, 'MOBILE:') + 7),
               CASE k WHEN 0 THEN {gateway} ELSE 'meta' END, {status}, NULL, NULL,
               CASE WHEN {status} = 'failed' THEN {error} END, {latency}, 1, r.created_at, r.created_at, 0
        FROM otp_request r CROSS JOIN (SELECT 0 AS k UNION ALL SELECT 1) ORDER BY r.id, k""")
    db.execute(f"""
        INSERT INTO otp_validation (org_id, created_at, user_key, action, code_id, outcome)
        SELECT org_id, created_at, user_key, action, code_id, outcome FROM (
            SELECT org_id, used_at AS created_at, user_key, action, id AS code_id, 'ok' AS outcome FROM otp_code
            WHERE state = 'used'
            UNION ALL
            SELECT org_id, strftime('%Y-%m-%d %H:%M:%f', created_at, '+20 seconds') || '000', user_key, action, id,
                   CASE WHEN state = 'burned' THEN 'burned' ELSE 'wrong' END FROM otp_code
            WHERE state = 'burned' OR {h('id', 11)} % 100 < 8
        ) ORDER BY created_at""")
    kinds = case_list(f"{h('i', 12)} % 5", ["daily", "code_sends", "validate", "lock", "code_sends"])
    db.execute(f"""
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 30000)
        INSERT INTO limit_event (org_id, created_at, user_key, action, limit_type, client_id)
        SELECT {org}, {ts(f'(i * {span / 30000!r})')},
               {keyed(org, f"CASE WHEN i % 10 = 0 THEN 'MOBILE:+9190000' || printf('%05d', i % 700) "
                           f"ELSE 'MOBILE:+9199' || printf('%08d', {h('i', 13)} % 2000) END")},
               {case_list(f"{h('i', 14)} % 10", ACTIONS)}, {kinds}, 1 FROM n""")
    events = case_list(f"{h('i', 16)} % 5", ["replayed_code", "burned_code", "lock", "prefix_block", "budget_trip"])
    db.execute(f"""
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
        INSERT INTO security_event (org_id, created_at, kind, user_key, action, detail)
        SELECT {org}, {ts(f'(i * {span / 20000!r})')}, {events},
               {keyed(org, f"'MOBILE:+9199' || printf('%08d', {h('i', 17)} % 5000)")},
               {case_list(f"{h('i', 18)} % 10", ACTIONS)}, 'simulated' FROM n""")
    db.execute("""
        INSERT INTO usage_counter (scope, user_key, period, count)
        SELECT 'daily:*', user_key, substr(created_at, 1, 10), count(*) FROM otp_request GROUP BY user_key, 3""")
    db.commit()
    db.execute("ANALYZE")
    db.commit()
    counts = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
              for t in ("otp_request", "otp_code", "delivery", "otp_validation", "limit_event", "security_event",
                        "usage_counter", "organisation")}
    db.close()
    print(f"built in {time.perf_counter() - started:.0f} s: " + ", ".join(f"{t} {n:,}" for t, n in counts.items()))
    assert counts["otp_request"] == total_requests


def timed(fn, repeat: int = 3) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    """The median of repeat runs (seconds) and the last result."""
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


# --- the same figures by loading the raw rows of the range into pandas ----------------------------------------

def _read(engine, sql: str, f: D.Filters) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    """The rows of sql (with two ? for the range's UTC start and end), as a frame with UTC datetimes."""
    if engine.dialect.name == "sqlite":  # stored as text: compare with text
        start, end = (f.start.strftime("%Y-%m-%d %H:%M:%S.%f"), f.end.strftime("%Y-%m-%d %H:%M:%S.%f"))
    else:
        start, end = f.start, f.end
    with engine.connect() as conn:
        frame = pd.read_sql_query(text(sql.replace("?", ":start", 1).replace("?", ":end", 1)), conn,
                                  params={"start": start, "end": end})
    for column in frame.columns:
        if column.endswith("_at"):
            frame[column] = frame[column].dt.tz_convert("UTC") \
                if pd.api.types.is_datetime64_any_dtype(frame[column]) \
                else pd.to_datetime(frame[column], utc=True, format="ISO8601")
    return frame


def _local_day(series: pd.Series, tz: str) -> pd.Series:
    return series.dt.tz_convert(tz).dt.strftime("%Y-%m-%d")


def pandas_daily_usage(engine, f: D.Filters):  # type: ignore[no-untyped-def]
    req = _read(engine, "SELECT created_at, action, kind FROM otp_request WHERE created_at >= ? AND created_at < ?", f)
    val = _read(engine, "SELECT created_at, action, outcome FROM otp_validation WHERE created_at >= ? AND created_at < ?", f)
    cod = _read(engine, "SELECT created_at, action, state FROM otp_code WHERE created_at >= ? AND created_at < ?", f)
    req["day"], val["day"], cod["day"] = (_local_day(x["created_at"], f.tz) for x in (req, val, cod))
    a = req.groupby(["day", "action"]).agg(requests=("kind", "size"), issued=("kind", lambda k: (k == "issued").sum()))
    b = val.groupby(["day", "action"]).agg(validations=("outcome", "size"), ok=("outcome", lambda o: (o == "ok").sum()))
    c = cod.groupby(["day", "action"]).agg(codes=("state", "size"), used=("state", lambda s: (s == "used").sum()))
    return a.join(b, how="outer").join(c, how="outer")


def pandas_ttv(engine, f: D.Filters):  # type: ignore[no-untyped-def]
    cod = _read(engine, "SELECT created_at, used_at FROM otp_code WHERE state = 'used' AND created_at >= ? "
                        "AND created_at < ?", f)
    cod["day"] = _local_day(cod["created_at"], f.tz)
    cod["seconds"] = (cod["used_at"] - cod["created_at"]).dt.total_seconds()
    return cod.groupby("day")["seconds"].quantile([0.5, 0.95], interpolation="higher")


def pandas_delivery_summary(engine, f: D.Filters):  # type: ignore[no-untyped-def]
    d = _read(engine, "SELECT channel, gateway, status, latency_ms FROM delivery WHERE created_at >= ? "
                      "AND created_at < ?", f)
    counts = d.groupby(["channel", "gateway", "status"]).size().unstack(fill_value=0)
    latency = d.groupby(["channel", "gateway"])["latency_ms"].quantile([0.5, 0.95, 0.99], interpolation="higher")
    return counts, latency


def pandas_delivery_by_day(engine, f: D.Filters):  # type: ignore[no-untyped-def]
    d = _read(engine, "SELECT created_at, channel, status FROM delivery WHERE created_at >= ? AND created_at < ?", f)
    d["day"] = _local_day(d["created_at"], f.tz)
    return d.groupby(["day", "channel", "status"]).size()


def pandas_failures(engine, f: D.Filters):  # type: ignore[no-untyped-def]
    d = _read(engine, "SELECT channel, gateway, status, error FROM delivery WHERE created_at >= ? AND created_at < ?", f)
    return d[d.status == "failed"].groupby(["channel", "gateway", "error"]).size().nlargest(20)


def pandas_refusals(engine, f: D.Filters):  # type: ignore[no-untyped-def]
    e = _read(engine, "SELECT created_at, user_key, limit_type FROM limit_event WHERE created_at >= ? "
                      "AND created_at < ?", f)
    return e.groupby("limit_type").size(), e.groupby("user_key").size().nlargest(20), \
        e.groupby(e.user_key.str[7:15]).size().nlargest(20)


def pandas_nearest(engine, day: str):  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        u = pd.read_sql_query(text("SELECT scope, user_key, period, count FROM usage_counter"), conn)
    return u[(u.scope == "daily:*") & (u.period == day)].nlargest(20, "count")


# --- PostgreSQL: the same rows in a private schema ------------------------------------------------------------

COPIED = ["organisation", "otp_code", "otp_request", "delivery", "otp_validation", "limit_event", "security_event",
          "usage_counter"]


def copy_to_postgresql(path: Path, engine: Engine) -> None:
    """COPY the raw tables of the SQLite file into the (migrated, empty) PostgreSQL schema of engine."""
    started = time.perf_counter()
    source = sqlite3.connect(path)
    with engine.connect() as conn:
        cursor = conn.connection.driver_connection.cursor()
        cursor.execute("SET TIME ZONE 'UTC'")  # the SQLite text times are UTC
        for table in COPIED:
            columns = [row[1] for row in source.execute(f"PRAGMA table_info({table})")]
            names = ", ".join(columns)
            with cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                # organisation 1 is made by the migrations on both sides
                only = " WHERE id > 1" if table == "organisation" else ""
                for row in source.execute(f"SELECT {names} FROM {table}{only}"):
                    copy.write_row(row)
            if "id" in columns:
                cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                               f"(SELECT coalesce(max(id), 1) FROM {table}))")
        conn.connection.driver_connection.commit()
        for table in COPIED:
            conn.execute(text(f"ANALYZE {table}"))
        conn.commit()
    source.close()
    print(f"copied to PostgreSQL in {time.perf_counter() - started:.0f} s", flush=True)


# --- timing ------------------------------------------------------------------------------------------------------

def time_rollups(engine: Engine) -> None:
    """The first build of the rollups, a refresh after one hour of new rows, and the check when nothing is new."""
    try:
        from core.db.models import RollupState
        from core.reporting import rollups
    except ImportError:  # the code before the rollups: nothing to build
        return
    done = rollups.refresh(engine)
    print(f"rollups: first build {done.seconds:.1f} s" if done else "rollups: already up to date", flush=True)
    with engine.begin() as conn:  # forget the last hour: as if it had just arrived
        since = START + timedelta(days=DAYS, hours=-1)
        for name, table in rollups.SOURCES.items():
            created = table.c.received_at if name == "delivery_receipt" else table.c.created_at
            mark = conn.execute(select(func.coalesce(func.min(table.c.id), 0) - 1).where(created >= since)).scalar()
            if mark >= 0:
                conn.execute(update(RollupState).where(RollupState.source == name)
                             .values(high_water=mark))
    done = rollups.refresh(engine)
    print(f"rollups: refresh after one hour of new rows ({done.usage_buckets} usage and {done.delivery_buckets} "
          f"delivery buckets) {done.seconds:.3f} s", flush=True)
    t_check, _ = timed(lambda: rollups.refresh(engine), repeat=5)
    print(f"rollups: refresh when nothing is new {t_check * 1000:.1f} ms (included in every query below)", flush=True)


def run(engine: Engine, orgs: int = 1) -> None:
    time_rollups(engine)
    last_day = (START + timedelta(days=DAYS - 1)).date().isoformat()
    from core.reporting import security_events as S

    def on(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        def call():  # type: ignore[no-untyped-def]
            with engine.connect() as conn:
                return fn(conn, *args, **kwargs)
        return call

    def events(f: D.Filters):  # type: ignore[no-untyped-def]
        return lambda: (on(S.event_counts, start=f.start, end=f.end, org_id=f.org_id)(),
                        on(S.recent_events, start=f.start, end=f.end, org_id=f.org_id)())

    cases = [
        ("usage: daily_usage", lambda f: on(D.daily_usage, f), lambda f: lambda: pandas_daily_usage(engine, f)),
        ("usage: usage_totals (KPIs, ttv p50/p95)", lambda f: on(D.usage_totals, f), None),
        ("usage: time_to_validate_by_day", lambda f: on(D.time_to_validate_by_day, f),
         lambda f: lambda: pandas_ttv(engine, f)),
        ("delivery: delivery_summary (+p50/95/99)", lambda f: on(D.delivery_summary, f),
         lambda f: lambda: pandas_delivery_summary(engine, f)),
        ("delivery: delivery_by_day", lambda f: on(D.delivery_by_day, f),
         lambda f: lambda: pandas_delivery_by_day(engine, f)),
        ("delivery: failures_by_error", lambda f: on(D.failures_by_error, f), lambda f: lambda: pandas_failures(engine, f)),
        ("delivery: live_delivery (15 min)", lambda f: on(D.live_delivery, now=f.end, minutes=15, org_id=f.org_id),
         None),
        ("delivery: find_requests + timeline",
         lambda f: lambda: (on(D.find_requests, recipient="+919900001234", org_id=f.org_id)(),
                            on(D.request_timeline, 500000, org_id=f.org_id)()), None),
        ("limits: refusals_by_type", lambda f: on(D.refusals_by_type, f), None),
        ("limits: refusals_by_day", lambda f: on(D.refusals_by_day, f), None),
        ("limits: top_refused_users", lambda f: on(D.top_refused_users, f),
         lambda f: lambda: pandas_refusals(engine, f)),
        ("limits: top_refused_prefixes", lambda f: on(D.top_refused_prefixes, f), None),
        ("limits: nearest_daily_limit", lambda f: on(D.nearest_daily_limit, day=last_day, limit=500, org_id=f.org_id),
         lambda f: lambda: pandas_nearest(engine, last_day)),
        ("limits: security events (counts + recent)", events, None),
        ("all: org_breakdown", lambda f: on(D.org_breakdown, f), None),
    ]
    # One organisation (the default one; with --orgs 10 it holds a tenth of the rows) and, with several, every
    # organisation (the platform admin's view): its 30 days are the worst case of all.
    scopes = [("org 1", 1)] + ([("all orgs", None)] if orgs > 1 else [])
    header = "".join(f" {name + ' 30d':>12} {name + ' 1d':>12}" for name, _ in scopes)
    print(f"{'query':45}{header} {'pandas 30d':>11} {'ratio':>7}")
    slow = []
    for name, sql, pandas in cases:
        cells, worst, t_widest = "", 0.0, 0.0
        for _, org in scopes:
            month = D.Filters(START.date(), START.date() + timedelta(days=DAYS - 1), "Asia/Kolkata", org_id=org)
            one_day = D.Filters(START.date() + timedelta(days=10), START.date() + timedelta(days=10), "Asia/Kolkata",
                                org_id=org)
            t_month, _ = timed(sql(month))
            t_day, _ = timed(sql(one_day))
            cells += f" {t_month:11.3f}s {t_day:11.3f}s"
            worst, t_widest = max(worst, t_month, t_day), t_month
        if pandas is not None:  # pandas reads every organisation's rows: against the widest scope
            t_pandas, _ = timed(pandas(D.Filters(START.date(), START.date() + timedelta(days=DAYS - 1),
                                                 "Asia/Kolkata", org_id=None)), repeat=1)
            extra = f"{t_pandas:10.3f}s {t_pandas / t_widest:6.1f}x"
        else:
            extra = f"{'':>11} {'':>7}"
        print(f"{name:45}{cells} {extra}", flush=True)
        if worst > 0.5:
            slow.append(name)
    print("over 0.5 s: " + (", ".join(slow) if slow else "none"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--path", type=Path, default=Path("/tmp/otp-dash-bench.db"))
    parser.add_argument("--orgs", type=int, default=1, help="organisations the rows are spread over (1: as before)")
    parser.add_argument("--reuse", action="store_true", help="time an existing database without rebuilding it")
    parser.add_argument("--postgresql", metavar="URL", help="copy the rows into a private schema of this "
                        "PostgreSQL database (dropped afterwards) and time the queries there")
    args = parser.parse_args()
    if not args.reuse:
        build(args.path, args.requests, args.orgs)
    if not args.postgresql:
        engine = make_engine(f"sqlite:///{args.path}")
        prepare_database(engine)  # migrations added since the file was built
        run(engine, args.orgs)
        return
    schema = PrivateSchema(args.postgresql, "otp_bench")
    with schema as url:
        engine = make_engine(url)
        prepare_database(engine)
        copy_to_postgresql(args.path, engine)
        print(f"PostgreSQL, schema {schema.name}", flush=True)
        run(engine, args.orgs)
        engine.dispose()


if __name__ == "__main__":
    main()
