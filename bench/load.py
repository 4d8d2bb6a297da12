"""A bounded load run over HTTP on 127.0.0.1: generate and validate next to their floors and references.

    python bench/load.py [--requests 2000] [--warmup 200] [--concurrency 32] [--timeout 60] [--runs 1]
                         [--pg-url postgresql+psycopg://postgres@127.0.0.1:5432/test] [--only sqlite|postgresql]
                         [--pg-workers 2] [--uvicorn-cli] [--raw-transactions 2000] [--also-concurrency N]
                         [--no-checkpoint]

Set-ups, each measured in the same run as its own floor (and, on PostgreSQL, its raw-driver reference):

  SQLite, 1 worker       `python serve.py --workers 1` on a fresh SQLite file in a temporary directory
  PostgreSQL, 2 workers  `python serve.py --workers 2` on a private schema (`?options=-csearch_path%3D<schema>`)
                         of --pg-url, created before the run and dropped after it
  floor                  bench/empty_app.py (POST /empty returns {}) served the same way with the same worker
                         count, sent the same generate bodies and headers, --empty-factor times as many
  raw driver             PostgreSQL only: bench/rawpg.py, a transaction of a generate's shape (its five
                         statements and COMMIT, through psycopg directly, no HTTP), 2 processes (--pg-workers) on
                         one connection each, on the same schema, just before the API's phases (each run after
                         a CHECKPOINT: see PrivateSchema.checkpoint; --no-checkpoint leaves it out). "of raw" is
                         the API's rate as a share of it: the goal is generate >= 40 %, with p99 under 100 ms.
  --also-concurrency N   adds a second generate phase with N requests in flight instead of --concurrency, on the
                         same servers (new numbers), printed as "generate @N" beside the others: at a fixed
                         concurrency C a closed-loop client's mean latency is C / rate (Little's law), so the p99 at
                         32 in flight is bounded below by 32 / rate; this shows the p99 at a load the service
                         sustains (2 workers x 6 threads = 12 transactions at once) without moving the default
  --uvicorn-cli          adds the PostgreSQL set-up started by `uvicorn --workers N` instead (no TCP_NODELAY on
                         its listening socket: a keep-alive client waits ~40 ms per response; see serve.py)

Each floor row also notes the p50 of keep-alive requests sent one at a time, which shows that stall directly.
With --runs N the whole PostgreSQL set-up (a new schema, servers, raw reference, phases) is repeated N times
in a row and a summary prints each run's rates, p99s and shares and the server's CPU per generate, with their
medians. The machine is a VM on shared cores: the same code's CPU per generate ("gen CPU ms") moves between
runs with the machine's speed (1.1 ms in one window, 1.6-2.2 ms in another of the same session), and the raw
reference with it; a slow run shows both.

Every generate is for a new valid Indian mobile (+91 99000 xxxxx) with the outbox gateway; every validate
sends the right code (read back from the outbox table). The abuse limits that would refuse a load run from
one IP are turned off in the server environment (OTP_DESTINATION_LIMIT=0 OTP_IP_LIMIT=0 OTP_PREFIX_LIMIT=0);
the per-user daily limit is never reached (one generate per number). A verified API credential is trusted
for OTP_AUTH_CACHE_SECONDS=600 here, so no Argon2 verification falls inside a measured phase.

The load generator is bench/loadgen.py (raw HTTP/1.1, keep-alive, --concurrency requests in flight). Each
phase has a warm-up, a bounded request count and a timeout. "server CPU" is the CPU time of the server's
process tree (parent and workers) over the phase's wall time, in % of one core; PostgreSQL's own processes
are not in it. "split" is each worker's share of that CPU: a worker that took most of the connections shows
as a lopsided split. With 2 cores shared by the load generator, PostgreSQL and anything else running, a
2-worker server cannot reach 200 %.
"""
from __future__ import annotations

import argparse
import base64
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _path in (str(ROOT), str(BENCH)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from common import (codes_sent, create_api_client, empty_ok, generate_body, generate_ok, load_average,  # noqa: E402
                    server_env, validate_body, validate_ok)
from loadgen import (HOST, LoadResult, Numbers, Server, free_port, http_request, process_cpu_seconds,  # noqa: E402
                     run_load)
from rawpg import raw_rate  # noqa: E402

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
RAW_GOAL, P99_GOAL_MS = 0.40, 100.0


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(child) for child in task.read_text().split()]
        except (OSError, ValueError):
            pass
    return found


def tree_cpu_seconds(pid: int) -> dict[int, float] | None:
    """CPU seconds of a process and each of its descendants (Linux /proc): the server's parent and its workers."""
    found: dict[int, float] = {}
    stack = [pid]
    while stack:
        current = stack.pop()
        if current in found:
            continue
        cpu = process_cpu_seconds(current)
        if cpu is None:
            if current == pid:
                return None
            continue
        found[current] = cpu
        stack += _children(current)
    return found


@dataclass
class Row:
    setup: str
    phase: str
    result: LoadResult
    server_cpu: float | None
    split: list[float] | None = None  # each process's share of server_cpu, largest first (workers)
    note: str = ""


@dataclass
class Setup:
    name: str
    workers: int
    database_url: str
    serve_py: bool = True  # start the servers with serve.py (TCP_NODELAY listening socket), not uvicorn's CLI


class ServeServer(Server):
    """`python serve.py --app APP --workers N` on a free 127.0.0.1 port: the API's multi-worker launcher, whose
    listening socket has TCP_NODELAY (see serve.py for the ~40 ms stall of `uvicorn --workers N` without it)."""

    def __init__(self, app: str, *, cwd: Path, env: dict[str, str], log_path: Path, app_dir: Path | None = None,
                 workers: int = 2) -> None:
        self.app, self.port, self.log_path = app, free_port(), log_path
        args = [sys.executable, str(ROOT / "serve.py"), "--app", app, "--host", HOST, "--port", str(self.port),
                "--workers", str(workers), "--log-level", "warning", "--no-access-log"]
        if app_dir is not None:
            args += ["--app-dir", str(app_dir)]
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT)


class Bench:
    """One set-up: an API client, the API server and the empty server, both with the same worker count."""

    def __init__(self, setup: Setup, tmp: Path, args: argparse.Namespace) -> None:
        self.setup, self.args = setup, args
        env = server_env(OTP_DATABASE_URL=setup.database_url,
                         OTP_SECRET_KEY=base64.b64encode(os.urandom(32)).decode(), OTP_AUTH_CACHE_SECONDS="600")
        self.auth = create_api_client(env, "load")  # also applies the migrations
        workers = ["--workers", str(setup.workers)]  # the last --workers wins over loadgen's "--workers 1"
        self.servers: list[Server] = []
        try:
            if setup.serve_py:
                self.api: Server = ServeServer("api:app", cwd=ROOT, env=env, log_path=tmp / "api.log",
                                               workers=setup.workers)
            else:
                self.api = Server("api:app", cwd=ROOT, env=env, log_path=tmp / "api.log", extra_args=workers)
            self.servers.append(self.api)
            if setup.serve_py:
                self.empty: Server = ServeServer("empty_app:app", cwd=ROOT, env=env, log_path=tmp / "empty.log",
                                                 app_dir=BENCH, workers=setup.workers)
            else:
                self.empty = Server("empty_app:app", cwd=ROOT, env=env, log_path=tmp / "empty.log", app_dir=BENCH,
                                    extra_args=workers)
            self.servers.append(self.empty)
            self.api.wait_ready(http_request("GET", "/health", self.api.port))
            self.empty.wait_ready(http_request("POST", "/empty", self.empty.port, b"{}"))
            if setup.workers > 1:  # every worker answers (and has imported everything) before measuring
                time.sleep(2)
        except BaseException:
            self.close()
            raise

    def _measure(self, phase: str, server: Server, requests: list[bytes], warmup: list[bytes],
                 check: Callable[[int, bytes], bool], concurrency: int | None = None) -> Row:
        a = self.args
        concurrency = concurrency or a.concurrency
        if warmup:
            run_load(server.port, warmup, concurrency=concurrency, timeout=a.timeout, check=check)
        before = tree_cpu_seconds(server.proc.pid)
        result = run_load(server.port, requests, concurrency=concurrency, timeout=a.timeout, check=check)
        after = tree_cpu_seconds(server.proc.pid)
        if before is None or after is None:
            return Row(self.setup.name, phase, result, None)
        used = {pid: cpu - before.get(pid, 0.0) for pid, cpu in after.items()}
        total = sum(used.values())
        split = sorted((u / total for u in used.values() if u > 0.01 * total), reverse=True) if total else None
        return Row(self.setup.name, phase, result, total, split)

    def sequential_p50(self, count: int = 60) -> float:
        """p50 in ms of keep-alive requests one at a time to the empty endpoint: ~40 ms means Nagle's stall."""
        request = http_request("POST", "/empty", self.empty.port, b"{}")
        result = run_load(self.empty.port, [request] * count, concurrency=1, timeout=30, check=empty_ok)
        return result.percentile(50)

    def empty_floor(self, numbers: list[str]) -> Row:
        port = self.empty.port
        requests = [http_request("POST", "/empty", port, generate_body(n), self.auth) for n in numbers]
        requests *= max(1, self.args.empty_factor)
        return self._measure("empty floor", self.empty, requests, requests[:self.args.warmup], empty_ok)

    def generate(self, numbers: list[str], warm: list[str], concurrency: int | None = None) -> Row:
        port = self.api.port
        build = lambda n: http_request("POST", "/v2/otp/generate", port, generate_body(n), self.auth)  # noqa: E731
        return self._measure(f"generate @{concurrency}" if concurrency else "generate", self.api,
                             [build(n) for n in numbers], [build(n) for n in warm], generate_ok, concurrency)

    def validate(self, numbers: list[str], warm: list[str]) -> Row:
        port = self.api.port
        codes = codes_sent(self.setup.database_url, set(numbers) | set(warm))
        build = lambda n: http_request("POST", "/v2/otp/validate", port,  # noqa: E731
                                       validate_body(n, codes[n]), self.auth)
        return self._measure("validate", self.api, [build(n) for n in numbers if n in codes],
                             [build(n) for n in warm if n in codes], validate_ok)

    def close(self) -> None:
        for server in self.servers:
            server.stop()


class PrivateSchema:
    """A schema of its own in the PostgreSQL database at base_url, dropped (CASCADE) on exit."""

    def __init__(self, base_url: str) -> None:
        from sqlalchemy import create_engine

        host = urlsplit(base_url.replace("postgresql+psycopg", "postgresql", 1)).hostname or ""
        if host not in LOOPBACK:
            raise SystemExit(f"--pg-url must point at this machine (127.0.0.1), not {host!r}")
        self.name = f"otp_load_{uuid.uuid4().hex[:10]}"
        self.url = base_url + ("&" if "?" in base_url else "?") + f"options=-csearch_path%3D{self.name}"
        self._admin = create_engine(base_url)

    def __enter__(self) -> "PrivateSchema":
        from sqlalchemy import text

        with self._admin.begin() as conn:
            self.server_version = conn.execute(text("SHOW server_version")).scalar()
            conn.execute(text(f"CREATE SCHEMA {self.name}"))
        return self

    def background(self) -> dict[str, float]:
        """PostgreSQL's background work so far (pg_stat_bgwriter, server-wide): checkpoints and who wrote buffers."""
        from sqlalchemy import text

        with self._admin.connect() as conn:
            row = conn.execute(text(
                "SELECT checkpoints_timed + checkpoints_req AS checkpoints, checkpoint_sync_time AS sync_ms, "
                "checkpoint_write_time AS write_ms, buffers_backend, buffers_checkpoint FROM pg_stat_bgwriter"
            )).mappings().one()
        return {key: float(value) for key, value in row.items()}

    def checkpoint(self) -> None:
        """CHECKPOINT now, so that no timed checkpoint falls inside the measured phases of this run.

        PostgreSQL checkpoints every checkpoint_timeout (5 min by default) from the last one; its writes and fsyncs
        share the disk with every COMMIT's WAL flush. Here several runs that overlapped one ("checkpoints +1" in
        the summary) were slow: the raw driver itself fell to 312-630 transactions/s from ~1000, and the API's
        rates with it (other slow runs had no checkpoint inside them: the machine's own speed moves too). A run takes under a minute, so after this one the next timed checkpoint comes after it.
        It runs before the run's pg_stat_bgwriter snapshot, so the summary still counts only checkpoints that fell
        inside the run. (Needs a superuser or pg_checkpoint's role, as the bench's trust-auth postgres has; else a
        line says so.)
        """
        from sqlalchemy import text
        from sqlalchemy.exc import DBAPIError

        try:
            with self._admin.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("CHECKPOINT"))
        except DBAPIError as exc:
            print(f"  (no CHECKPOINT before the run: {exc.orig})", flush=True)

    def __exit__(self, *_exc: object) -> None:
        from sqlalchemy import text

        try:
            with self._admin.begin() as conn:
                conn.execute(text(f"DROP SCHEMA IF EXISTS {self.name} CASCADE"))
        finally:
            self._admin.dispose()


def run_setup(setup: Setup, numbers: Numbers, args: argparse.Namespace, tmp: Path) -> list[Row]:
    print(f"\n{setup.name}: starting (the API's migrations, an API client, two servers)...", flush=True)
    bench = Bench(setup, tmp, args)
    try:
        floor_numbers = numbers.take(args.requests)  # bodies only: nothing is generated for them
        rows = [bench.empty_floor(floor_numbers)]
        sequential = bench.sequential_p50()
        rows[-1].note = f"one request at a time: p50 {sequential:.1f} ms"
        if sequential > 20:
            rows[-1].note += " (Nagle + delayed ACK: the listening socket lacks TCP_NODELAY)"
        print(f"  {rows[-1].phase}: {rows[-1].result.rate:.0f} req/s; {rows[-1].note}", flush=True)
        if not setup.database_url.startswith("sqlite"):
            started = time.perf_counter()
            raw = raw_rate(setup.database_url, args.raw_transactions, setup.workers)
            result = LoadResult(done=args.raw_transactions, ok=args.raw_transactions,
                                elapsed=args.raw_transactions / raw)
            rows.append(Row(setup.name, "raw driver", result, None,
                            note=f"{setup.workers} psycopg processes, generate-shaped transactions "
                                 f"({time.perf_counter() - started:.1f} s with start-up)"))
            print(f"  raw driver: {raw:.0f} transactions/s", flush=True)
        warm, measured = numbers.take(args.warmup), numbers.take(args.requests)
        rows.append(bench.generate(measured, warm))
        print(f"  {rows[-1].phase}: {rows[-1].result.rate:.0f} req/s", flush=True)
        rows.append(bench.validate(measured, warm))
        print(f"  {rows[-1].phase}: {rows[-1].result.rate:.0f} req/s", flush=True)
        if args.also_concurrency:
            rows.append(bench.generate(numbers.take(args.requests), numbers.take(args.warmup), args.also_concurrency))
            print(f"  {rows[-1].phase}: {rows[-1].result.rate:.0f} req/s, p99 {rows[-1].result.percentile(99):.1f} ms",
                  flush=True)
        return rows
    finally:
        bench.close()


def _rate(rows: list[Row], phase: str) -> float:
    return next((row.result.rate for row in rows if row.phase == phase), 0.0)


def print_table(rows: list[Row]) -> None:
    print(f"\n{'set-up':<34}{'phase':<13}{'done':>7}{'ok':>7}{'seconds':>9}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'server CPU':>12}{'split':>10}{'of floor':>10}{'of raw':>9}")
    for row in rows:
        r = row.result
        same = [other for other in rows if other.setup == row.setup]
        floor, raw = _rate(same, "empty floor"), _rate(same, "raw driver")
        measured = row.phase.startswith(("generate", "validate"))
        cpu = f"{row.server_cpu / r.elapsed * 100:.0f} %" if row.server_cpu is not None and r.elapsed else "-"
        split = "/".join(f"{s * 100:.0f}" for s in row.split) if row.split and len(row.split) > 1 else ""
        share = f"{r.rate / floor * 100:.1f} %" if floor and measured else ""
        of_raw = f"{r.rate / raw * 100:.1f} %" if raw and measured else ""
        flag = "  TIMED OUT" if r.timed_out else ""
        latency = (f"{r.percentile(50):>9.1f}{r.percentile(99):>9.1f}" if r.latencies else f"{'':>18}")
        print(f"{row.setup:<34}{row.phase:<13}{r.done:>7}{r.ok:>7}{r.elapsed:>9.2f}{r.rate:>9.0f}"
              f"{latency}{cpu:>12}{split:>10}{share:>10}{of_raw:>9}{flag}")
        if row.note:
            print(f"{'':<34}  ({row.note})")
        if r.ok < r.done:
            print(f"    !! {r.done - r.ok} not ok; statuses {r.statuses}; first: {r.first_failure}")


def print_summary(runs: list[tuple[list[Row], str]]) -> None:
    """One line per PostgreSQL run: raw rate, generate and validate (req/s, p99, share of raw), the
    server's CPU per generate, load average."""
    print(f"\n{len(runs)} runs, PostgreSQL (raw = generate-shaped transactions through psycopg, same run and schema)")
    extra = [next((row for row in rows if row.phase.startswith("generate @")), None) for rows, _load in runs]
    extra_head = f"{extra[0].phase.replace('generate ', 'gen p99 '):>15}" if all(extra) else ""
    print(f"{'run':<5}{'raw tx/s':>10}{'gen req/s':>11}{'gen p99':>9}{'gen/raw':>9}{'val req/s':>11}{'val p99':>9}"
          f"{'val/raw':>9}{'gen CPU ms':>12}{'gen split':>11}{extra_head}   load average before; PostgreSQL background work during the run")
    table = []
    for number, ((rows, load), other) in enumerate(zip(runs, extra), 1):
        raw = _rate(rows, "raw driver")
        gen = next(row for row in rows if row.phase == "generate")
        val = next(row for row in rows if row.phase == "validate")
        cpu_ms = gen.server_cpu / gen.result.done * 1000 if gen.server_cpu is not None and gen.result.done else 0.0
        line = [raw, gen.result.rate, gen.result.percentile(99), gen.result.rate / raw * 100,
                val.result.rate, val.result.percentile(99), val.result.rate / raw * 100, cpu_ms]
        table.append(line)
        split = "/".join(f"{s * 100:.0f}" for s in gen.split) if gen.split and len(gen.split) > 1 else ""
        also = f"{other.result.percentile(99):>9.1f} ({other.result.rate:.0f}/s)" if extra_head and other else ""
        print(f"{number:<5}{_summary_line(line)}{split:>11}{also:>15}   {load}")
    print(f"{'med':<5}{_summary_line([statistics.median(column) for column in zip(*table)])}")
    met = sum(1 for line in table if line[3] >= RAW_GOAL * 100 and line[2] < P99_GOAL_MS)
    print(f"goal (generate >= {RAW_GOAL:.0%} of raw and p99 < {P99_GOAL_MS:g} ms) met in {met} of {len(table)} runs")


def _summary_line(line: list[float]) -> str:
    raw, gen, gen_p99, gen_raw, val, val_p99, val_raw, cpu_ms = line
    return (f"{raw:>10.0f}{gen:>11.0f}{gen_p99:>9.1f}{gen_raw:>8.1f}%{val:>11.0f}{val_p99:>9.1f}"
            f"{val_raw:>8.1f}%{cpu_ms:>12.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per phase (default 2000)")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up requests per phase (default 200)")
    parser.add_argument("--empty-factor", type=int, default=3,
                        help="the empty endpoint gets this many times --requests (default 3)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds allowed per phase (default 60)")
    parser.add_argument("--pg-url", default=os.environ.get("OTP_TEST_DATABASE_URL") or DEFAULT_PG_URL,
                        help=f"PostgreSQL on this machine (default $OTP_TEST_DATABASE_URL or {DEFAULT_PG_URL})")
    parser.add_argument("--only", choices=("sqlite", "postgresql"), help="run one set-up only")
    parser.add_argument("--pg-workers", type=int, default=2, help="API workers on PostgreSQL (default 2)")
    parser.add_argument("--runs", type=int, default=1, help="PostgreSQL set-ups in a row, summarised (default 1)")
    parser.add_argument("--raw-transactions", type=int, default=2000,
                        help="generate-shaped transactions of the raw-driver reference (default 2000)")
    parser.add_argument("--also-concurrency", type=int, default=0,
                        help="also a generate phase with this many in flight, labelled 'generate @N' (default: none)")
    parser.add_argument("--no-checkpoint", action="store_true",
                        help="PostgreSQL: no CHECKPOINT before each run (see PrivateSchema.checkpoint)")
    parser.add_argument("--uvicorn-cli", action="store_true",
                        help="also run the PostgreSQL set-up started by `uvicorn --workers N` (no TCP_NODELAY)")
    args = parser.parse_args(argv)
    if min(args.requests, args.warmup + 1, args.concurrency, args.empty_factor, args.pg_workers, args.runs,
           args.raw_transactions) < 1 or args.timeout <= 0:
        parser.error("--requests, --concurrency, --empty-factor, --pg-workers, --runs, --raw-transactions and "
                     "--timeout must be positive")

    from importlib.util import find_spec

    import fastapi
    import uvicorn

    loop_kind = "uvloop" if find_spec("uvloop") else "asyncio"
    http_kind = "httptools" if find_spec("httptools") else "h11"
    print(f"OTP load run: Python {platform.python_version()}, {os.cpu_count()} CPUs, uvicorn {uvicorn.__version__} "
          f"(loop {loop_kind}, http {http_kind}, no access log), FastAPI {fastapi.__version__}; 127.0.0.1 only; "
          f"load average {load_average()}")
    print(f"  {args.requests} requests per phase ({args.requests * args.empty_factor} for the empty floor) after "
          f"{args.warmup} warm-up, {args.concurrency} in flight, timeout {args.timeout:g} s per phase")

    numbers = Numbers("--requests or --warmup")
    rows: list[Row] = []
    runs: list[tuple[list[Row], str]] = []
    failed = False
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="otp-load-"))
    try:
        if args.only in (None, "sqlite"):
            setup = Setup("SQLite, 1 worker", 1, f"sqlite:///{tmp / 'sqlite' / 'otp.db'}")
            (tmp / "sqlite").mkdir()
            try:
                rows += run_setup(setup, numbers, args, tmp / "sqlite")
            except Exception as exc:  # report and go on with the other set-up
                failed = True
                print(f"  !! {setup.name} failed: {type(exc).__name__}: {exc}")
        if args.only in (None, "postgresql"):
            workers = args.pg_workers
            for run in range(1, args.runs + 1):
                (tmp / f"pg{run}").mkdir()
                try:
                    with PrivateSchema(args.pg_url) as schema:
                        load = load_average()
                        print(f"\nPostgreSQL {schema.server_version}, run {run}/{args.runs}: private schema "
                              f"{schema.name} (dropped afterwards); load average {load}")
                        name = f"PostgreSQL, {workers} workers" + (f", run {run}" if args.runs > 1 else "")
                        if not args.no_checkpoint:
                            schema.checkpoint()
                        before = schema.background()
                        got = run_setup(Setup(name, workers, schema.url), numbers, args, tmp / f"pg{run}")
                        after = schema.background()
                        rows += got
                        runs.append((got, f"{load}; " + ", ".join(
                            f"{key} +{after[key] - before[key]:.0f}" for key in after)))
                        if args.uvicorn_cli and workers > 1:
                            (tmp / f"pg-cli{run}").mkdir()
                            rows += run_setup(Setup(f"{name}, uvicorn CLI", workers, schema.url, serve_py=False),
                                              numbers, args, tmp / f"pg-cli{run}")
                except Exception as exc:
                    failed = True
                    print(f"  !! PostgreSQL failed: {type(exc).__name__}: {exc}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if rows:
        print_table(rows)
        print(f"\n'of floor' = req/s as a share of the empty endpoint's on the same set-up; 'of raw' = as a share "
              f"of the raw-driver rate (PostgreSQL). Whole run: {time.monotonic() - started:.0f} s; "
              f"load average now {load_average()}.")
    if runs:
        print_summary(runs)
    bad = [row for row in rows if row.result.ok < row.result.done or row.result.timed_out]
    return 1 if failed or bad or not rows else 0


if __name__ == "__main__":
    raise SystemExit(main())
