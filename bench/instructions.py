"""Instructions per request, counted by callgrind: the empty endpoint, generate and validate, whatever the load.

    python bench/instructions.py [--requests 300] [--warmup 100] [--concurrency 8] [--api-app api:app]

bench/engine.py's rates and CPU times move by ten points of its ratios from one round to the next on a machine
that others load (its empty floor alone went from 1 900 to 2 700 req/s within one run): a change of a few per
cent to a request's cost cannot be seen there. Here each server (`uvicorn APP`, one worker, on a fresh SQLite
file, as in bench/engine.py) runs under valgrind's callgrind with instrumentation off; it is switched on
(callgrind_control -i on) only for the measured requests, and the instructions executed by the server process in
that span (its threads included: the group commit's COMMIT runs in one) are divided by the requests. Instruction
counts do not depend on the machine's load; they leave out waiting (fsync, locks, the network) and what an
instruction costs (cache misses), so they measure the CPU work of a request, not its time.

The same bodies and headers as bench/engine.py: generates for new numbers with the outbox gateway, validates of
the right codes, and the generate bodies posted to bench/empty_app.py. Needs valgrind (apt install valgrind).
A run takes a few minutes (start-up under valgrind, ~50x slower while counting).
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _path in (str(ROOT), str(BENCH)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from common import (codes_sent, create_api_client, empty_ok, generate_body, generate_ok, load_average,  # noqa: E402
                    server_env, validate_body, validate_ok)
from loadgen import Numbers, Server, http_request, run_load  # noqa: E402

GOAL, VALIDATE_GOAL = 0.25, 0.40  # as bench/engine.py: generate and validate against the empty endpoint


def callgrind(out: Path) -> list[str]:
    """A launcher (loadgen.Server) running `python -m` under callgrind, instrumentation off until switched on."""
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", sys.executable, "-m"]


def instrument(server: Server, on: bool) -> None:
    subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(server.proc.pid)], check=True,
                   capture_output=True, timeout=60)


def instructions(path: Path) -> int:
    """The instructions counted in one callgrind file (a dump, or the last one written when the server stopped)."""
    found = re.search(r"^totals: (\d+)", path.read_text(errors="replace"), re.MULTILINE)
    return int(found.group(1)) if found else 0


def files(out: Path) -> list[Path]:
    """A server's callgrind files, oldest first: one per dump (callgrind_control --dump), then the final one."""
    def order(path: Path) -> float:  # NAME.1, NAME.2... are the dumps in turn; NAME is the final one
        suffix = path.name[len(out.name) + 1:]
        return int(suffix) if suffix.isdigit() else float("inf")
    return sorted(out.parent.glob(out.name + "*"), key=order)


def measure(server: Server, requests: list[bytes], warmup: list[bytes], check, concurrency: int) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """Requests answered ok in the measured span, after warmup (uninstrumented)."""
    run_load(server.port, warmup, concurrency=concurrency, timeout=600, check=check)
    instrument(server, True)
    result = run_load(server.port, requests, concurrency=concurrency, timeout=600, check=check)
    instrument(server, False)
    if result.ok < result.done or result.timed_out:
        raise RuntimeError(f"{result.done - result.ok} requests failed; first: {result.first_failure}")
    return result.ok, result.done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="measured requests per phase (default 300)")
    parser.add_argument("--warmup", type=int, default=100, help="uncounted requests before each (default 100)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    parser.add_argument("--api-app", default="api:app", help="module:attribute of the API (default api:app)")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("needs valgrind and callgrind_control (apt install valgrind)")
    if min(args.requests, args.warmup, args.concurrency) < 1:
        parser.error("--requests, --warmup and --concurrency must be positive")
    print(f"instructions per request (callgrind), {args.requests} requests per phase after {args.warmup} uncounted, "
          f"{args.concurrency} in flight; load average {load_average()} (which the counts do not depend on)")

    tmp = Path(tempfile.mkdtemp(prefix="otp-instructions-"))
    numbers = Numbers("--requests or --warmup")
    counts: dict[str, float] = {}
    try:
        env = server_env(OTP_SECRET_KEY_FILE=str(tmp / "key"), OTP_AUTH_CACHE_SECONDS="600",
                         OTP_DATABASE_URL=f"sqlite:///{tmp / 'otp.db'}")
        auth = create_api_client(env)
        outs = {"empty": tmp / "empty.callgrind", "api": tmp / "api.callgrind"}
        empty = Server("empty_app:app", cwd=ROOT, env=env, log_path=tmp / "empty.log", app_dir=BENCH,
                       launcher=callgrind(outs["empty"]))
        api = Server(args.api_app, cwd=ROOT, env=env, log_path=tmp / "api.log", launcher=callgrind(outs["api"]))
        try:
            empty.wait_ready(http_request("POST", "/empty", empty.port, b"{}"), timeout=600)
            api.wait_ready(http_request("GET", "/health", api.port), timeout=600)
            bodies = [generate_body(n) for n in numbers.take(args.requests + args.warmup)]
            posts = [http_request("POST", "/empty", empty.port, b, auth) for b in bodies]
            done = {"empty": measure(empty, posts[args.warmup:], posts[:args.warmup], empty_ok, args.concurrency)}
            empty.stop(timeout=120)
            counts["HTTP POST /empty"] = sum(instructions(path) for path in files(outs["empty"])) / done["empty"][1]

            # Generate and validate counted apart: a dump after the generates writes their counts and zeroes them.
            warm, measured = numbers.take(args.warmup), numbers.take(args.requests)
            generate = [http_request("POST", "/v2/otp/generate", api.port, generate_body(n), auth)
                        for n in warm + measured]
            measure(api, generate[args.warmup:], generate[:args.warmup], generate_ok, args.concurrency)
            subprocess.run(["callgrind_control", "--dump=generate", str(api.proc.pid)], check=True,
                           capture_output=True, timeout=120)
            codes = codes_sent(env["OTP_DATABASE_URL"], warm + measured)
            validate = [http_request("POST", "/v2/otp/validate", api.port, validate_body(n, codes[n]), auth)
                        for n in warm + measured]
            measure(api, validate[args.warmup:], validate[:args.warmup], validate_ok, args.concurrency)
        finally:
            empty.stop(timeout=120)
            api.stop(timeout=120)
        per_file = [instructions(path) for path in files(outs["api"])]
        if len(per_file) != 2:
            raise RuntimeError(f"expected two callgrind dumps of the api server, found {len(per_file)}")
        counts["HTTP generate"] = per_file[0] / args.requests
        counts["HTTP validate"] = per_file[1] / args.requests
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n  {'phase':<22}{'instructions/request':>22}")
    for name, value in counts.items():
        print(f"  {name:<22}{value:>22,.0f}")
    empty_cost = counts["HTTP POST /empty"]
    for name, goal in (("HTTP generate", GOAL), ("HTTP validate", VALIDATE_GOAL)):
        share = empty_cost / counts[name]
        print(f"  {name} / empty endpoint = {share * 100:5.1f} %  ({'meets' if share >= goal else 'BELOW'} the "
              f"{goal:.0%} goal, counted as instructions: a rate ratio at equal CPU)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
