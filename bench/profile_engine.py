"""Where a generate spends its time: the engine directly, or the whole uvicorn server under HTTP load.

    python bench/profile_engine.py [--requests 2000] [--tool pyinstrument|cprofile|both] [--http [--phase validate]]

engine mode (default): core.services.generation.generate awaited in a loop (as bench/engine.py does), profiled in process.
--http: `uvicorn api:app` runs under pyinstrument in a subprocess while bench/loadgen.py drives generates
(--phase validate: validates of the right codes, for numbers generated before profiling starts).

Two breakdowns of the sampled time (pyinstrument, 0.5 ms interval):
  what  - the mechanism: SQLAlchemy statement construction / cache keys / compile / execute / transactions,
          sqlite3 itself, phonenumbers, templates, crypto, logging, the HTTP stack, ...
  where - the line of core.services.generation.generate (or api.py, or the outbox task) it was spent under.
cProfile adds exact call counts (per generate) and the functions with the most own time; its overhead
inflates code made of many small calls (SQLAlchemy), so take percentages from pyinstrument.
Needs `pip install pyinstrument` for the sampled breakdowns (not a project requirement).
"""
from __future__ import annotations

import argparse
import cProfile
import linecache
import pstats
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _path in (str(ROOT), str(BENCH)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import engine as bench  # noqa: E402  (bench/engine.py)
from common import (codes_sent, create_api_client, generate_body, generate_ok, server_env, validate_body,  # noqa: E402
                    validate_ok)
from loadgen import Numbers, Server, http_request, run_load  # noqa: E402

CORE = str(ROOT / "core") + "/"
API = str(ROOT / "api.py")

# Frames that never decide a category: the category goes to the nearest caller that does.
_GENERIC_FILES = ("<built-in>", "<string>", "/re/", "/re.py", "/enum.py", "/functools.py", "/typing.py",
                  "/abc.py", "/dataclasses.py", "/contextlib.py", "/copy.py", "/inspect.py", "/weakref.py",
                  "/_weakrefset.py", "/threading.py", "/types.py", "/operator.py", "/collections/",
                  "/string.py", "/encodings/", "<frozen ")
_LIBRARIES = [  # (path fragment, category); first match wins
    ("/phonenumbers/", "phonenumbers (parse, is_valid_number, format)"),
    (CORE + "issuing/entities.py", "phonenumbers (parse, is_valid_number, format)"),
    ("/email_validator/", "email_validator"),
    ("/jinja2/", "templates: Jinja render"),
    (CORE + "delivery/templates.py", "templates: checks, caches, render glue"),
    (CORE + "delivery/messages.py", "templates: resolve, render_message"),
    ("/cryptography/", "crypto: AES-GCM/HKDF (cryptography)"),
    (CORE + "crypto.py", "crypto: HMAC, AES-GCM glue, new_code (secrets)"),
    ("/hmac.py", "crypto: HMAC, AES-GCM glue, new_code (secrets)"),
    ("/secrets.py", "crypto: HMAC, AES-GCM glue, new_code (secrets)"),
    ("/random.py", "crypto: HMAC, AES-GCM glue, new_code (secrets)"),
    ("/argon2/", "argon2 (API client secret)"),
    (CORE + "issuing/requests.py", "core: request parsing"),
    (CORE + "services/", "core: services glue (dataclasses, mask, results)"),
    (CORE + "delivery/dispatch.py", "core: dispatch (+ asyncio.wait_for task)"),
    (CORE + "delivery/gateways/", "core: outbox gateway glue"),
    (CORE + "issuing/codes.py", "core: codes/counters glue"),
    (CORE + "issuing/counters.py", "core: codes/counters glue (incl. tz)"),
    (CORE, "core: other (runtime, cache, config)"),
    ("/zoneinfo/", "core: codes/counters glue (incl. tz)"),
    (API, "api.py: auth, read_json, handler"),
    ("/logging/", "logging"),
    ("/json/", "json"),
    ("/pydantic", "pydantic"),
    ("/fastapi/", "HTTP: FastAPI"),
    ("/starlette/", "HTTP: Starlette"),
    ("/anyio/", "HTTP: anyio"),
    ("/h11/", "HTTP: h11 parser"),
    ("/uvicorn/", "HTTP: uvicorn"),
    ("/asyncio/", "asyncio event loop"),
    ("/selectors.py", "asyncio event loop"),
    (str(BENCH) + "/", "bench driver loop"),
]
_SQLITE_C = {"execute", "commit", "rollback", "fetchone", "fetchall", "fetchmany", "cursor", "close", "executemany"}
_TXN_ENTRY = {"begin", "commit", "rollback", "__enter__", "__exit__", "connect", "close", "_do_commit"}
_IDLE = {"select", "poll", "epoll", "_run_once"}


def _parse(identifier: str) -> tuple[str, str, int]:
    """(function, file, current line) from a pyinstrument frame identifier."""
    parts = identifier.split("\x01")
    function, _, rest = parts[0].partition("\x00")
    file_path, _, _ = rest.partition("\x00")
    line = 0
    for attr in parts[1:]:
        if attr.startswith("l"):
            try:
                line = int(attr[1:])
            except ValueError:
                pass
    return function, file_path, line


def what(stack: list[tuple[str, str, int]]) -> str:
    """The mechanism a sample was spent in."""
    for index, (function, file_path, _line) in enumerate(stack):
        if "/sqlalchemy/" in file_path:  # SQLAlchemy never calls back into the application
            below = stack[index:]
            leaf_fn, leaf_file, _ = stack[-1]
            if leaf_file == "<built-in>" and leaf_fn.rpartition(".")[2] in _SQLITE_C:
                if leaf_fn.endswith("commit") or any(fn == "begin" for fn, _f, _l in below):
                    return "sqlite3 C: BEGIN IMMEDIATE / COMMIT"
                return "sqlite3 C: statements (execute, fetch)"
            if "/sql/" in file_path or "/orm/" in file_path or "/dialects/" in file_path and "dml" in file_path:
                return "SQLAlchemy: statement construction (insert/update/values/where)"
            if any("cache_key" in f or fn == "_generate_cache_key" for fn, f, _l in below):
                return "SQLAlchemy: cache-key generation"
            if any(fn == "_compiler" for fn, f, _l in below):
                return "SQLAlchemy: compile (cache misses)"
            if any(f.endswith("/sql/compiler.py") for fn, f, _l in below):
                return "SQLAlchemy: bind parameters of a cached statement"
            if function in _TXN_ENTRY or "/pool/" in file_path:
                return "SQLAlchemy: transaction + pool overhead"
            return "SQLAlchemy: execute + result overhead"
    for function, file_path, _line in reversed(stack):
        if file_path == "<built-in>" and function.rpartition(".")[2] in _IDLE:
            continue
        if any(generic in file_path for generic in _GENERIC_FILES):
            continue
        for fragment, category in _LIBRARIES:
            if fragment in file_path:
                return category
        return f"other: {Path(file_path).name}"
    return "other: builtins"


def _source(file_path: str, line: int) -> str:
    return linecache.getline(file_path, line).strip()[:70]


def where(stack: list[tuple[str, str, int]]) -> str:
    """The line of generate/validate in core/services (or the outbox task, api.py, the HTTP stack) a sample was spent under."""
    services = (CORE + "services/generation.py", CORE + "services/validation.py")
    for function, file_path, line in stack:
        if file_path in services and function in ("generate", "validate"):
            return f"engine.{function}:{line:<4} {_source(file_path, line)}"
    for function, file_path, line in stack:
        if file_path.startswith(CORE + "delivery/gateways/"):
            return f"outbox send (own task)  {_source(file_path, line)}"
    for function, file_path, line in reversed(stack):
        if file_path == API:
            return f"api.py {function}:{line:<4} {_source(file_path, line)}"
    for function, file_path, _line in stack:
        if "/starlette/" in file_path or "/fastapi/" in file_path:
            return "HTTP stack: Starlette/FastAPI outside api.py"
    return "HTTP/event loop outside the app" if "uvicorn" in "".join(f for _fn, f, _l in stack) else "bench loop"


def is_idle(stack: list[tuple[str, str, int]]) -> bool:
    function, file_path, _line = stack[-1]
    return ((file_path == "<built-in>" and function.rpartition(".")[2] in ("select", "poll"))
            or file_path.endswith("/selectors.py"))


def breakdown(session, generates: int, top_where: int) -> None:  # type: ignore[no-untyped-def]
    by_what: Counter[str] = Counter()
    by_where: Counter[str] = Counter()
    idle = 0.0
    for identifiers, seconds in session.frame_records:
        stack = [_parse(i) for i in identifiers]
        if is_idle(stack):
            idle += seconds
            continue
        by_what[what(stack)] += seconds
        by_where[where(stack)] += seconds
    busy = sum(by_what.values())
    print(f"\nsampled {busy:.2f} s busy (+{idle:.2f} s idle) over {generates} requests = "
          f"{busy / generates * 1000:.2f} ms busy per request")
    print("\n  what (mechanism)                                                   share    ms/request")
    small = 0.0
    for name, seconds in by_what.most_common():
        if seconds / busy < 0.002:
            small += seconds
            continue
        print(f"  {name:<64}{seconds / busy * 100:6.1f} %{seconds / generates * 1000:10.3f}")
    if small:
        print(f"  {'(categories under 0.2 % each)':<64}{small / busy * 100:6.1f} %{small / generates * 1000:10.3f}")
    print("\n  where (services line, outbox task, api.py)                   share    ms/request")
    for name, seconds in by_where.most_common(top_where):
        print(f"  {name:<66}{seconds / busy * 100:6.1f} %{seconds / generates * 1000:8.3f}")


def sql_cache_stats(rt) -> Counter:  # type: ignore[no-untyped-def]
    """Counts of statements by SQLAlchemy's compiled-cache outcome, while the returned counter is attached."""
    from sqlalchemy import event

    counts: Counter[str] = Counter()

    @event.listens_for(rt.db, "after_cursor_execute")
    def _count(_conn, _cursor, _statement, _params, context, _many) -> None:  # type: ignore[no-untyped-def]
        counts[str(getattr(context, "cache_hit", "driver SQL"))] += 1

    counts["_listener"] = _count  # type: ignore[assignment]
    return counts


def profile_engine(args: argparse.Namespace) -> None:
    from sqlalchemy import event

    tmp = Path(tempfile.mkdtemp(prefix="otp-profile-"))
    eb = bench.EngineBench(tmp)
    numbers = Numbers("--requests")
    eb.generate(numbers.take(args.warmup), args.timeout)
    plain = eb.generate(numbers.take(args.requests), args.timeout)
    print(f"engine generate without a profiler: {plain.rate:.0f}/s ({plain.elapsed / plain.done * 1000:.2f} ms each)")

    counts = sql_cache_stats(eb.rt)
    listener = counts.pop("_listener")
    eb.generate(numbers.take(200), args.timeout)
    event.remove(eb.rt.db, "after_cursor_execute", listener)
    per = {k: v / 200 for k, v in counts.items()}
    print("SQL per generate (SQLAlchemy compiled-cache outcome): "
          + ", ".join(f"{k.replace('CacheStats.', '')} {v:.1f}" for k, v in sorted(per.items())))

    if args.tool in ("pyinstrument", "both"):
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005, async_mode="disabled")
        profiler.start()
        result = eb.generate(numbers.take(args.requests), args.timeout)
        session = profiler.stop()
        print(f"\n== pyinstrument: {result.done} engine generates ({result.rate:.0f}/s under the sampler)")
        breakdown(session, result.done, args.top)
    if args.tool in ("cprofile", "both"):
        profile = cProfile.Profile()
        profile.enable()
        result = eb.generate(numbers.take(args.requests), args.timeout)
        profile.disable()
        print(f"\n== cProfile: {result.done} engine generates ({result.rate:.0f}/s under cProfile)")
        _cprofile_report(profile, result.done, args.top)
    eb.close()
    shutil.rmtree(tmp, ignore_errors=True)


def _cprofile_report(profile: cProfile.Profile, generates: int, top: int) -> None:
    stats = pstats.Stats(profile)
    interesting = {"values": "dml.py", "_generate_cache_key": "sql/cache_key.py", "_compiler": "elements.py",
                   "_execute_context": "base.py", "expect": "coercions.py",
                   "parse": "phonenumberutil.py", "is_valid_number": "phonenumberutil.py", "render": "templates.py",
                   "encrypt_code": "crypto.py", "decrypt_code": "crypto.py", "code_mac": "crypto.py",
                   "info": "__init__.py", "wait_for": "tasks.py"}
    print("  calls per generate: " + ", ".join(
        f"{fn} {max((v[1] for k, v in stats.stats.items() if k[2] == fn and k[0].endswith(f)), default=0) / generates:.1f}"  # type: ignore[attr-defined]
        for fn, f in interesting.items()))
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    print(f"\n  top {top} functions by own time (cProfile total {total:.2f} s)")
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]  # type: ignore[attr-defined]
    for (file_path, line, function), (_cc, calls, own, cumulative, _callers) in rows:
        short = file_path.replace(str(ROOT) + "/", "").split("site-packages/")[-1]
        print(f"  {own / total * 100:5.1f} %  own {own:6.3f}s  cum {cumulative:6.3f}s  {calls / generates:7.1f}/gen  "
              f"{function} ({short}:{line})")


def profile_http(args: argparse.Namespace) -> None:
    import os
    import signal

    from pyinstrument.session import Session

    tmp = Path(tempfile.mkdtemp(prefix="otp-profile-http-"))
    db_path = tmp / "otp.db"
    env = server_env(OTP_DATABASE_URL=f"sqlite:///{db_path}", OTP_SECRET_KEY_FILE=str(tmp / "key"))
    auth = create_api_client(env)
    out = tmp / "server.pyisession"
    # The server profiles itself between SIGUSR1 (sent after the warm-up) and SIGUSR2 (after the measured
    # load), so start-up, migrations, imports and the first Argon2 verifications are left out.
    code = ("import signal, sys\n"
            "from pyinstrument import Profiler\n"
            "profiler = Profiler(interval=0.0005, async_mode='disabled')\n"
            "def _start(*_):\n    profiler.start()\n"
            "def _stop(*_):\n"
            f"    profiler.stop().save({str(out)!r})\n"
            "signal.signal(signal.SIGUSR1, _start)\n"
            "signal.signal(signal.SIGUSR2, _stop)\n"
            "from uvicorn.main import main\n"
            "main(sys.argv[2:])\n")
    launcher = [sys.executable, "-c", code]
    server = Server(args.api_app, cwd=ROOT, env=env, log_path=tmp / "api.log", launcher=launcher)
    try:
        server.wait_ready(http_request("GET", "/health", server.port))
        numbers = Numbers("--requests")
        build = lambda n: http_request("POST", "/v2/otp/generate", server.port,  # noqa: E731
                                       generate_body(n), auth)
        warm, measured = numbers.take(args.warmup), numbers.take(args.requests)
        run_load(server.port, [build(n) for n in warm], concurrency=args.concurrency, timeout=args.timeout)
        requests, check = [build(n) for n in measured], generate_ok
        if args.phase == "validate":  # the codes of the measured generates (sent before profiling) are validated
            run_load(server.port, requests, concurrency=args.concurrency, timeout=args.timeout)
            codes = codes_sent(f"sqlite:///{db_path}", set(warm) | set(measured))
            check_code = lambda n: http_request("POST", "/v2/otp/validate", server.port,  # noqa: E731
                                                validate_body(n, codes[n]), auth)
            run_load(server.port, [check_code(n) for n in warm], concurrency=args.concurrency, timeout=args.timeout)
            requests, check = [check_code(n) for n in measured], validate_ok
        os.kill(server.proc.pid, signal.SIGUSR1)
        time.sleep(0.2)
        started = time.monotonic()
        result = run_load(server.port, requests, concurrency=args.concurrency, timeout=args.timeout, check=check)
        print(f"HTTP {args.phase} under pyinstrument: {result.done} done, {result.ok} ok, {result.rate:.0f}/s "
              f"({time.monotonic() - started:.1f} s)")
        os.kill(server.proc.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (out.exists() and out.stat().st_size):
            time.sleep(0.2)
        time.sleep(1)  # let the save finish
    finally:
        server.stop()
    session = Session.load(str(out))
    shutil.rmtree(tmp, ignore_errors=True)
    print("(server samples between the end of the warm-up and the end of the measured load)")
    breakdown(session, result.done, args.top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--tool", choices=("pyinstrument", "cprofile", "both"), default="both")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--http", action="store_true", help="profile `uvicorn api:app` under HTTP load instead")
    parser.add_argument("--concurrency", type=int, default=48)
    parser.add_argument("--api-app", default="api:app", help="module:attribute for --http (default api:app)")
    parser.add_argument("--phase", choices=("generate", "validate"), default="generate",
                        help="with --http: the endpoint profiled (validate: of codes generated before)")
    args = parser.parse_args(argv)
    if args.http:
        profile_http(args)
    else:
        profile_engine(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
