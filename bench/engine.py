"""Generate throughput side by side: the engine directly, over HTTP, and an empty FastAPI endpoint.

    python bench/engine.py [--requests 4000] [--concurrency 48] [--rounds 1] [--client raw|httpx]
                           [--synchronous FULL,NORMAL]

Everything runs on fresh SQLite files in a temporary directory (never data/), with the outbox gateway,
one distinct valid Indian mobile (+9199000xxxxx) per generate so that no limit is reached, and servers on
127.0.0.1 only:

  engine generate   core.services.generation.generate awaited in a loop in one event loop (Runtime(Settings(...)))
  engine validate   core.services.validation.validate of the right code, for the numbers just generated
  HTTP empty        POST /empty of bench/empty_app.py (returns {}), the same generate bodies and headers,
                    --empty-factor times as many requests (it is much faster; a short run is too noisy)
  HTTP generate     POST /v2/otp/generate on `uvicorn api:app` (one worker), HTTP Basic as an API client
                    made with `python -m cli client create bench`
  HTTP validate     POST /v2/otp/validate of the right code (read from the outbox table)

With --synchronous FULL,NORMAL the HTTP generate and validate phases run once per SQLite synchronous mode, each
on an API server of its own (bench/sync_app.py, its own fresh database), one after the other in each round and
in the reverse order in the next, and the rates are compared side by side.

Both servers are `python -m uvicorn` subprocesses (one worker, no access log) started once; this process is
the load generator (bench/loadgen.py: keep-alive connections, --concurrency requests in flight). Each phase
has a warm-up, a bounded request count and a timeout; "server CPU" is the server process's CPU time over
the phase's wall time (below ~95 % means the machine was busy with something else).
The API trusts a verified credential for OTP_AUTH_CACHE_SECONDS, set to 600 s here, so that no expiry (after which
every in-flight request pays an Argon2 verification) falls inside a measured phase of a run of several rounds.
The project goals: HTTP generate >= 25 % and HTTP validate >= 40 % of the empty endpoint's rate on the same set-up.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _path in (str(ROOT), str(BENCH)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from common import (codes_sent, create_api_client, empty_ok, generate_body, generate_ok, generate_payload,  # noqa: E402
                    load_average, server_env, validate_body, validate_ok, validate_payload)
from loadgen import LoadResult, Numbers, Server, http_request, run_load  # noqa: E402

GOAL = 0.25  # HTTP generate / empty endpoint
VALIDATE_GOAL = 0.40  # HTTP validate / empty endpoint


@dataclass
class Row:
    name: str
    result: LoadResult
    server_cpu: float | None = None  # CPU seconds of the server process during the phase

    @property
    def rate(self) -> float:
        return self.result.rate


# ---------------------------------------------------------------- engine directly

class EngineBench:
    def __init__(self, tmp: Path) -> None:
        from core.runtime import Runtime
        from core.settings import Settings

        self.db_path = tmp / "engine.db"
        settings = Settings(database_url=f"sqlite:///{self.db_path}", env="development", secret_key="",
                            secret_key_file=tmp / "engine.key",
                            destination_limit=0, ip_limit=0, prefix_limit=0)  # as for the servers below
        self.rt = Runtime(settings)

    def _run(self, bodies: list[dict], timeout: float, op) -> LoadResult:  # type: ignore[no-untyped-def]
        from core.errors import OtpError

        result = LoadResult()

        async def loop() -> None:
            started = time.perf_counter()
            deadline = started + timeout
            for body in bodies:
                if time.perf_counter() > deadline:
                    result.timed_out = True
                    break
                t0 = time.perf_counter()
                result.sent += 1
                try:
                    outcome = await op(self.rt, body)
                    status = 200
                except OtpError as exc:
                    outcome, status = None, exc.http_status
                    if not result.first_failure:
                        result.first_failure = f"{status} {exc.envelope()}"
                result.latencies.append(time.perf_counter() - t0)
                result.done += 1
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if status == 200 and getattr(outcome, "valid", True):
                    result.ok += 1
            result.elapsed = time.perf_counter() - started

        cpu = time.process_time()
        asyncio.run(loop())
        result.client_cpu = time.process_time() - cpu
        return result

    def generate(self, numbers: list[str], timeout: float) -> LoadResult:
        from core.services.generation import generate

        return self._run([generate_payload(n) for n in numbers], timeout,
                         lambda rt, body: generate(rt, body, org_id=1))

    def validate(self, numbers: list[str], timeout: float) -> LoadResult:
        from core.services.validation import validate

        codes = codes_sent(f"sqlite:///{self.db_path}", numbers)
        return self._run([validate_payload(n, codes[n]) for n in numbers if n in codes], timeout,
                         lambda rt, body: validate(rt, body, org_id=1))

    def close(self) -> None:
        self.rt.db.dispose()


# ---------------------------------------------------------------- over HTTP

@dataclass
class ApiUnderTest:
    """One API server with its own database and API client: the service as it is, or one synchronous mode."""
    mode: str  # "" for the service's own set-up
    server: Server
    db_path: Path
    auth: dict[str, str]

    def phase(self, name: str) -> str:
        return f"{name} {self.mode}" if self.mode else name


class HttpBench:
    def __init__(self, tmp: Path, args: argparse.Namespace) -> None:
        self.args = args
        base = server_env(OTP_SECRET_KEY_FILE=str(tmp / "key"), OTP_AUTH_CACHE_SECONDS="600")
        extra = args.uvicorn_args.split() if args.uvicorn_args else []
        self.servers: list[Server] = []
        self.apis: list[ApiUnderTest] = []
        try:
            for mode in args.synchronous or [""]:
                db_path = tmp / f"otp{'-' + mode.lower() if mode else ''}.db"
                env = {**base, "OTP_DATABASE_URL": f"sqlite:///{db_path}"}
                if mode:
                    env["BENCH_SQLITE_SYNCHRONOUS"] = mode
                auth = create_api_client(env)
                server = Server("sync_app:app" if mode else args.api_app, cwd=ROOT, env=env, extra_args=extra,
                                log_path=tmp / f"api{'-' + mode.lower() if mode else ''}.log",
                                app_dir=BENCH if mode else None)
                self.servers.append(server)
                self.apis.append(ApiUnderTest(mode, server, db_path, auth))
            self.auth = self.apis[0].auth
            self.empty = Server("empty_app:app", cwd=ROOT, env=base, log_path=tmp / "empty.log", app_dir=BENCH,
                                extra_args=extra)
            self.servers.append(self.empty)
            for api in self.apis:
                api.server.wait_ready(http_request("GET", "/health", api.server.port))
            self.empty.wait_ready(http_request("POST", "/empty", self.empty.port, b"{}"))
        except BaseException:
            self.close()
            raise

    def _load(self, name: str, server: Server, requests: list[bytes], check, warmup: list[bytes]) -> Row:  # type: ignore[no-untyped-def]
        a = self.args
        if warmup:
            run_load(server.port, warmup, concurrency=a.concurrency, timeout=a.timeout, client=a.client, check=check)
        before = server.cpu_seconds()
        result = run_load(server.port, requests, concurrency=a.concurrency, timeout=a.timeout, client=a.client,
                          check=check)
        after = server.cpu_seconds()
        return Row(name, result, after - before if before is not None and after is not None else None)

    def empty_post(self, numbers: list[str], warmup: int) -> Row:
        """The same generate bodies (and headers) posted to the empty endpoint, --empty-factor times over."""
        port = self.empty.port
        reqs = [http_request("POST", "/empty", port, generate_body(n), self.auth) for n in numbers]
        reqs *= max(1, self.args.empty_factor)
        return self._load("HTTP POST /empty", self.empty, reqs, empty_ok, reqs[:warmup])

    def generate(self, api: ApiUnderTest, numbers: list[str], warm_numbers: list[str]) -> Row:
        port = api.server.port
        build = lambda n: http_request("POST", "/v2/otp/generate", port, generate_body(n), api.auth)  # noqa: E731
        return self._load(api.phase("HTTP generate"), api.server, [build(n) for n in numbers], generate_ok,
                          [build(n) for n in warm_numbers])

    def validate(self, api: ApiUnderTest, numbers: list[str], warm_numbers: list[str]) -> Row:
        port = api.server.port
        codes = codes_sent(f"sqlite:///{api.db_path}", numbers + warm_numbers)
        build = lambda n: http_request("POST", "/v2/otp/validate", port, validate_body(n, codes[n]),  # noqa: E731
                                       api.auth)
        return self._load(api.phase("HTTP validate"), api.server, [build(n) for n in numbers if n in codes],
                          validate_ok, [build(n) for n in warm_numbers if n in codes])

    def close(self) -> None:
        for server in self.servers:
            server.stop()


# ---------------------------------------------------------------- report

def _fmt_cpu(seconds: float | None, elapsed: float) -> str:
    return f"{seconds / elapsed * 100:5.0f}%" if seconds is not None and elapsed > 0 else "    -"


def _cpu_per_request(row: Row) -> str:
    """The server's CPU milliseconds per request: less sensitive than the rate to a machine busy with others."""
    return f"{row.server_cpu / row.result.done * 1000:.3f}" if row.server_cpu and row.result.done else "-"


def print_rows(rows: list[Row]) -> None:
    print(f"  {'phase':<24}{'done':>7}{'ok':>7}{'seconds':>9}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'server CPU':>12}{'driver CPU':>12}{'CPU ms/req':>12}")
    for row in rows:
        r = row.result
        flag = "  TIMED OUT" if r.timed_out else ""
        print(f"  {row.name:<24}{r.done:>7}{r.ok:>7}{r.elapsed:>9.2f}{r.rate:>9.0f}{r.percentile(50):>9.1f}"
              f"{r.percentile(99):>9.1f}{_fmt_cpu(row.server_cpu, r.elapsed):>12}"
              f"{_fmt_cpu(r.client_cpu, r.elapsed):>12}{_cpu_per_request(row):>12}{flag}")
        if r.ok < r.done:
            print(f"      !! {r.done - r.ok} not ok; statuses {r.statuses}; first: {r.first_failure}")
        if row.server_cpu is not None and r.elapsed > 0 and row.server_cpu / r.elapsed < 0.6:
            print("      !! the server was mostly idle: the load generator (try --client raw) or a busy machine "
                  "limited this rate, so it is not the server's")


def print_ratios(rates: dict[str, float], label: str = "") -> None:
    empty = rates.get("HTTP POST /empty") or float("nan")
    http_gen = rates.get("HTTP generate", float("nan"))
    ratio = http_gen / empty
    verdict = "meets" if ratio >= GOAL else "BELOW"
    print(f"  {label}HTTP generate / empty endpoint   = {ratio * 100:6.1f} %   ({verdict} the {GOAL:.0%} goal)")
    print(f"  {label}engine generate / empty endpoint = {rates.get('engine generate', float('nan')) / empty * 100:6.1f} %")
    if "HTTP validate" in rates:
        ratio = rates["HTTP validate"] / empty
        verdict = "meets" if ratio >= VALIDATE_GOAL else "BELOW"
        print(f"  {label}HTTP validate / empty endpoint   = {ratio * 100:6.1f} %   ({verdict} the "
              f"{VALIDATE_GOAL:.0%} goal)")
    print(f"  {label}HTTP generate / engine generate  = "
          f"{http_gen / rates.get('engine generate', float('nan')) * 100:6.1f} %")


def report_rates(rates: dict[str, float], apis: list[ApiUnderTest]) -> None:
    """The ratios to the empty endpoint for each API server, then each mode's generate rate against the first's."""
    for api in apis:
        view = {**rates, "HTTP generate": rates[api.phase("HTTP generate")]}
        if api.phase("HTTP validate") in rates:
            view["HTTP validate"] = rates[api.phase("HTTP validate")]
        print_ratios(view, label=f"[{api.mode}] " if api.mode else "")
    first = apis[0]
    for other in apis[1:]:
        print(f"  HTTP generate {first.mode} / {other.mode} = "
              f"{rates[first.phase('HTTP generate')] / rates[other.phase('HTTP generate')] * 100:6.1f} %")


def compare_modes(all_rates: list[dict[str, float]], apis: list[ApiUnderTest]) -> None:
    """The spread over rounds of the first mode's generate rate relative to each other mode's."""
    first = apis[0]
    for other in apis[1:]:
        ratios = sorted(r[first.phase("HTTP generate")] / r[other.phase("HTTP generate")] * 100 for r in all_rates)
        print(f"  HTTP generate {first.mode} / {other.mode} per round: "
              + ", ".join(f"{x:.1f}" for x in ratios) + f" %  (median {statistics.median(ratios):.1f} %)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=4000, help="measured requests per phase (default 4000)")
    parser.add_argument("--empty-factor", type=int, default=5,
                        help="the empty endpoint is much faster: send it this many times --requests (default 5)")
    parser.add_argument("--warmup", type=int, default=300, help="warm-up requests per phase (default 300)")
    parser.add_argument("--concurrency", type=int, default=48, help="requests in flight over HTTP (default 48)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds allowed per phase (default 120)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat all phases, interleaved (default 1)")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw",
                        help="load generator: raw asyncio HTTP/1.1 (light) or httpx.AsyncClient")
    parser.add_argument("--no-validate", action="store_true", help="skip the validate phases")
    parser.add_argument("--uvicorn-args", default="", help="extra uvicorn arguments for both servers, quoted")
    parser.add_argument("--api-app", default="api:app",
                        help="module:attribute of the API server (default api:app), to compare a variant")
    parser.add_argument("--synchronous", type=lambda text: [m.strip().upper() for m in text.split(",") if m.strip()],
                        help="SQLite synchronous modes to compare over HTTP, e.g. FULL,NORMAL (one API server each)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory and print its path")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.rounds < 1:
        parser.error("--requests, --concurrency and --rounds must be positive")

    from importlib.util import find_spec

    import fastapi
    import sqlalchemy
    import uvicorn

    loop_kind = "uvloop" if find_spec("uvloop") else "asyncio"  # what uvicorn's "auto" picks
    http_kind = "httptools" if find_spec("httptools") else "h11"

    tmp = Path(tempfile.mkdtemp(prefix="otp-bench-"))
    print(f"OTP engine benchmark: SQLite in {tmp}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"uvicorn {uvicorn.__version__} (loop {loop_kind}, http {http_kind}, 1 worker, no access log), "
          f"FastAPI {fastapi.__version__}, SQLAlchemy {sqlalchemy.__version__}; load average {load_average()}")
    print(f"  {args.requests} requests per phase ({args.requests * args.empty_factor} for the empty endpoint) "
          f"after {args.warmup} warm-up, {args.concurrency} in flight over "
          f"HTTP, {args.client} load generator, timeout {args.timeout:g} s; one new user per generate")

    numbers = Numbers("--requests or --rounds")
    engine_bench = http_bench = None
    all_rates: list[dict[str, float]] = []
    try:
        engine_bench = EngineBench(tmp)
        http_bench = HttpBench(tmp, args)
        for round_no in range(1, args.rounds + 1):
            rows: list[Row] = []
            warm, measured = numbers.take(args.warmup), numbers.take(args.requests)
            engine_bench.generate(warm, args.timeout)
            rows.append(Row("engine generate", engine_bench.generate(measured, args.timeout)))
            if not args.no_validate:
                engine_bench.validate(warm, args.timeout)
                rows.append(Row("engine validate", engine_bench.validate(measured, args.timeout)))
            rows.append(http_bench.empty_post(measured, args.warmup))
            # Each mode's server in turn, the order reversed every other round: no mode always runs first.
            apis = http_bench.apis if round_no % 2 else http_bench.apis[::-1]
            for api in apis:
                warm, measured = numbers.take(args.warmup), numbers.take(args.requests)
                rows.append(http_bench.generate(api, measured, warm))
                if not args.no_validate:
                    rows.append(http_bench.validate(api, measured, warm))
            print(f"\nround {round_no}/{args.rounds}")
            print_rows(rows)
            rates = {row.name: row.rate for row in rows}
            all_rates.append(rates)
            report_rates(rates, http_bench.apis)
        if args.rounds > 1:
            medians = {name: statistics.median(r[name] for r in all_rates) for name in all_rates[0]}
            print(f"\nmedian of {args.rounds} rounds (req/s): "
                  + ", ".join(f"{name} {rate:.0f}" for name, rate in medians.items()))
            report_rates(medians, http_bench.apis)
            compare_modes(all_rates, http_bench.apis)
    finally:
        if http_bench is not None:
            http_bench.close()
        if engine_bench is not None:
            engine_bench.close()
        if args.keep:
            print(f"\nkept {tmp}")
        else:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
