"""A bounded load run over HTTP on 127.0.0.1: generate and validate next to the empty-endpoint floor.

    python bench/load.py [--requests 2000] [--warmup 200] [--concurrency 32] [--timeout 60]
                         [--pg-url postgresql+psycopg://postgres@127.0.0.1:5432/test] [--only sqlite|postgresql]
                         [--pg-workers 2] [--no-serve-variant]

Two set-ups, each measured in the same run as its own floor:

  SQLite, 1 worker       `uvicorn api:app --workers 1` on a fresh SQLite file in a temporary directory
  PostgreSQL, 2 workers  `uvicorn api:app --workers 2` on a private schema (`?options=-csearch_path%3D<schema>`)
                         of --pg-url, created before the run and dropped after it
  floor                  `uvicorn empty_app:app` (bench/empty_app.py: POST /empty returns {}) with the same
                         worker count, sent the same generate bodies and headers, --empty-factor times as many
  ..., serve.py          the PostgreSQL set-up again, both servers started by `python serve.py --workers 2`, which
                         binds the listening socket with TCP_NODELAY (`uvicorn --workers 2` leaves Nagle's algorithm
                         on, which costs a keep-alive client ~40 ms per response; see serve.py)

Each floor row also notes the p50 of keep-alive requests sent one at a time, which shows that stall directly.

Every generate is for a new valid Indian mobile (+91 99000 xxxxx) with the outbox gateway; every validate
sends the right code (read back from the outbox table). The abuse limits that would refuse a load run from
one IP are turned off in the server environment (OTP_DESTINATION_LIMIT=0 OTP_IP_LIMIT=0 OTP_PREFIX_LIMIT=0);
the per-user daily limit is never reached (one generate per number). A verified API credential is trusted
for OTP_AUTH_CACHE_SECONDS=600 here, so no Argon2 verification falls inside a measured phase.

The load generator is bench/loadgen.py (raw HTTP/1.1, keep-alive, --concurrency requests in flight). Each
phase has a warm-up, a bounded request count and a timeout. "server CPU" is the CPU time of the uvicorn
process tree (parent and workers) over the phase's wall time, in % of one core; PostgreSQL's own processes
are not in it. With 2 cores shared by the load generator, PostgreSQL and anything else running, a 2-worker
server cannot reach 200 %.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import re
import shutil
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

from loadgen import (CODE_IN_MESSAGE, HOST, LIMITS_OFF, LoadResult, Numbers, Server, free_port,  # noqa: E402
                     http_request, process_cpu_seconds, run_load)

ACTION = "COUPON"
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def generate_body(number: str) -> bytes:
    return _json({"entityType": "MOBILE", "entityValue": number, "action": ACTION,
                  "channels": [{"type": "SMS", "value": number}]})


def validate_body(number: str, code: str) -> bytes:
    return _json({"entityType": "MOBILE", "entityValue": number, "action": ACTION, "code": code})


def _generate_ok(status: int, body: bytes) -> bool:
    return status == 200 and b'"createdId"' in body


def _validate_ok(status: int, body: bytes) -> bool:
    return status == 200 and b'"entity":true' in body


def _empty_ok(status: int, body: bytes) -> bool:
    return status == 200 and body == b"{}"


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU seconds of a process and all its descendants (Linux /proc): uvicorn's parent and its workers."""
    total, stack, seen = 0.0, [pid], set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        cpu = process_cpu_seconds(current)
        if cpu is None:
            if current == pid:
                return None
            continue
        total += cpu
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                stack += [int(child) for child in task.read_text().split()]
            except (OSError, ValueError):
                pass
    return total


@dataclass
class Row:
    setup: str
    phase: str
    result: LoadResult
    server_cpu: float | None
    note: str = ""


@dataclass
class Setup:
    name: str
    workers: int
    database_url: str
    serve_py: bool = False  # start the servers with serve.py (TCP_NODELAY listening socket), not uvicorn's CLI


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
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTP_")}
        env.update(OTP_DATABASE_URL=setup.database_url, OTP_ENV="development",
                   OTP_SECRET_KEY=base64.b64encode(os.urandom(32)).decode(),
                   **LIMITS_OFF, OTP_AUTH_CACHE_SECONDS="600", PYTHONDONTWRITEBYTECODE="1")
        key, secret = create_api_client(env)  # also applies the migrations
        self.auth = {"Authorization": "Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode()}
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
                 check: Callable[[int, bytes], bool]) -> Row:
        a = self.args
        if warmup:
            run_load(server.port, warmup, concurrency=a.concurrency, timeout=a.timeout, check=check)
        before = tree_cpu_seconds(server.proc.pid)
        result = run_load(server.port, requests, concurrency=a.concurrency, timeout=a.timeout, check=check)
        after = tree_cpu_seconds(server.proc.pid)
        cpu = after - before if before is not None and after is not None else None
        return Row(self.setup.name, phase, result, cpu)

    def sequential_p50(self, count: int = 60) -> float:
        """p50 in ms of keep-alive requests one at a time to the empty endpoint: ~40 ms means Nagle's stall."""
        request = http_request("POST", "/empty", self.empty.port, b"{}")
        result = run_load(self.empty.port, [request] * count, concurrency=1, timeout=30, check=_empty_ok)
        return result.percentile(50)

    def empty_floor(self, numbers: list[str]) -> Row:
        port = self.empty.port
        requests = [http_request("POST", "/empty", port, generate_body(n), self.auth) for n in numbers]
        requests *= max(1, self.args.empty_factor)
        return self._measure("empty floor", self.empty, requests, requests[:self.args.warmup], _empty_ok)

    def generate(self, numbers: list[str], warm: list[str]) -> Row:
        port = self.api.port
        build = lambda n: http_request("POST", "/v2/otp/generate", port, generate_body(n), self.auth)  # noqa: E731
        return self._measure("generate", self.api, [build(n) for n in numbers], [build(n) for n in warm],
                             _generate_ok)

    def validate(self, numbers: list[str], warm: list[str]) -> Row:
        port = self.api.port
        codes = codes_sent(self.setup.database_url, set(numbers) | set(warm))
        build = lambda n: http_request("POST", "/v2/otp/validate", port,  # noqa: E731
                                       validate_body(n, codes[n]), self.auth)
        return self._measure("validate", self.api, [build(n) for n in numbers if n in codes],
                             [build(n) for n in warm if n in codes], _validate_ok)

    def close(self) -> None:
        for server in self.servers:
            server.stop()


def create_api_client(env: dict[str, str]) -> tuple[str, str]:
    done = subprocess.run([sys.executable, "-m", "cli", "client", "create", "load"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)
    if done.returncode != 0:
        raise RuntimeError(f"client create failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    values = dict(re.findall(r"^(key|secret): (\S+)$", done.stdout, re.MULTILINE))
    if "key" not in values or "secret" not in values:
        raise RuntimeError(f"could not read key and secret from:\n{done.stdout}")
    return values["key"], values["secret"]


def codes_sent(database_url: str, wanted: set[str]) -> dict[str, str]:
    """The code in the newest outbox message to each number (development's outbox gateway keeps them)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    found: dict[str, str] = {}
    try:
        with engine.connect() as conn:
            for recipient, body in conn.execute(text("SELECT recipient, body FROM outbox_message ORDER BY id")):
                if recipient in wanted:
                    match = CODE_IN_MESSAGE.search(body)
                    if match:
                        found[recipient] = match.group(1)
    finally:
        engine.dispose()
    return found


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
        warm, measured = numbers.take(args.warmup), numbers.take(args.requests)
        rows.append(bench.generate(measured, warm))
        print(f"  {rows[-1].phase}: {rows[-1].result.rate:.0f} req/s", flush=True)
        rows.append(bench.validate(measured, warm))
        print(f"  {rows[-1].phase}: {rows[-1].result.rate:.0f} req/s", flush=True)
        return rows
    finally:
        bench.close()


def print_table(rows: list[Row]) -> None:
    print(f"\n{'set-up':<34}{'phase':<13}{'done':>7}{'ok':>7}{'seconds':>9}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'server CPU':>12}{'of floor':>10}")
    floor = 0.0
    for row in rows:
        r = row.result
        if row.phase == "empty floor":
            floor = r.rate
        cpu = f"{row.server_cpu / r.elapsed * 100:.0f} %" if row.server_cpu is not None and r.elapsed else "-"
        share = f"{r.rate / floor * 100:.1f} %" if floor and row.phase != "empty floor" else ""
        flag = "  TIMED OUT" if r.timed_out else ""
        print(f"{row.setup:<34}{row.phase:<13}{r.done:>7}{r.ok:>7}{r.elapsed:>9.2f}{r.rate:>9.0f}"
              f"{r.percentile(50):>9.1f}{r.percentile(99):>9.1f}{cpu:>12}{share:>10}{flag}")
        if row.note:
            print(f"{'':<34}  ({row.note})")
        if r.ok < r.done:
            print(f"    !! {r.done - r.ok} not ok; statuses {r.statuses}; first: {r.first_failure}")


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
    parser.add_argument("--pg-workers", type=int, default=2, help="uvicorn workers on PostgreSQL (default 2)")
    parser.add_argument("--no-serve-variant", action="store_true",
                        help="skip the second multi-worker run, started by serve.py instead of uvicorn's CLI")
    args = parser.parse_args(argv)
    if min(args.requests, args.warmup + 1, args.concurrency, args.empty_factor, args.pg_workers) < 1 \
            or args.timeout <= 0:
        parser.error("--requests, --concurrency, --empty-factor, --pg-workers and --timeout must be positive")

    from importlib.util import find_spec

    import fastapi
    import uvicorn

    loop_kind = "uvloop" if find_spec("uvloop") else "asyncio"
    http_kind = "httptools" if find_spec("httptools") else "h11"
    print(f"OTP load run: Python {platform.python_version()}, {os.cpu_count()} CPUs, uvicorn {uvicorn.__version__} "
          f"(loop {loop_kind}, http {http_kind}, no access log), FastAPI {fastapi.__version__}; 127.0.0.1 only")
    print(f"  {args.requests} requests per phase ({args.requests * args.empty_factor} for the empty floor) after "
          f"{args.warmup} warm-up, {args.concurrency} in flight, timeout {args.timeout:g} s per phase")

    numbers = Numbers("--requests or --warmup")
    rows: list[Row] = []
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
            (tmp / "pg").mkdir()
            try:
                with PrivateSchema(args.pg_url) as schema:
                    print(f"\nPostgreSQL {schema.server_version}: private schema {schema.name} (dropped afterwards)")
                    workers = args.pg_workers
                    rows += run_setup(Setup(f"PostgreSQL, {workers} workers", workers, schema.url), numbers, args,
                                      tmp / "pg")
                    if workers > 1 and not args.no_serve_variant:
                        (tmp / "pg-serve").mkdir()
                        rows += run_setup(Setup(f"PostgreSQL, {workers} workers, serve.py", workers, schema.url,
                                                serve_py=True), numbers, args, tmp / "pg-serve")
            except Exception as exc:
                failed = True
                print(f"  !! PostgreSQL failed: {type(exc).__name__}: {exc}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if rows:
        print_table(rows)
        print(f"\n'of floor' = req/s as a share of the empty endpoint's on the same set-up. "
              f"Whole run: {time.monotonic() - started:.0f} s.")
    bad = [row for row in rows if row.result.ok < row.result.done or row.result.timed_out]
    return 1 if failed or bad or not rows else 0


if __name__ == "__main__":
    raise SystemExit(main())
