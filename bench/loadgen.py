"""Helpers shared by the benchmarks: uvicorn servers as subprocesses and a small HTTP/1.1 load generator.

The default load generator ("raw") speaks HTTP/1.1 over asyncio streams with pre-built request bytes and
keep-alive connections, so that on a small machine it costs far less CPU than the server it measures;
"httpx" drives the same requests through httpx.AsyncClient for a cross-check.
Everything binds and connects to 127.0.0.1 only.
"""
from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

HOST = "127.0.0.1"
PHONE_PREFIX = "+9199000"  # +91 99000 xxxxx: valid Indian mobiles, 100 000 of them
# The code in an outbox message body (SMS, voice, WhatsApp and Zalo renderings), to validate what was sent.
CODE_IN_MESSAGE = re.compile(r"(?:is:? |parameter: |otp: )([0-9A-Za-z]+)")
# One load generator on one address: the abuse limits would refuse it, not measure it.
LIMITS_OFF = {"OTP_DESTINATION_LIMIT": "0", "OTP_IP_LIMIT": "0", "OTP_PREFIX_LIMIT": "0"}
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class Numbers:
    """Hands out each phone number once, so every generate is a first request for a new user."""

    def __init__(self, lower: str) -> None:
        self._next, self._lower = 0, lower  # lower: the options to lower when the numbers run out

    def take(self, count: int) -> list[str]:
        if self._next + count > 100_000:
            raise SystemExit(f"out of distinct phone numbers: lower {self._lower}")
        taken = [f"{PHONE_PREFIX}{i:05d}" for i in range(self._next, self._next + count)]
        self._next += count
        return taken


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (Linux /proc), or None where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


class Server:
    """`python -m uvicorn APP` with one worker on a free 127.0.0.1 port, its output kept in a log file."""

    def __init__(self, app: str, *, cwd: Path, env: dict[str, str], log_path: Path, app_dir: Path | None = None,
                 extra_args: Sequence[str] = (), launcher: Sequence[str] = ()) -> None:
        """launcher replaces `python -m` (e.g. a profiler: [python, -m, pyinstrument, ..., -m])."""
        self.app, self.port, self.log_path = app, free_port(), log_path
        args = [*(launcher or (sys.executable, "-m")), "uvicorn", app, "--host", HOST, "--port", str(self.port), "--workers", "1",
                "--log-level", "warning", "--no-access-log", *extra_args]
        if app_dir is not None:
            args += ["--app-dir", str(app_dir)]
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, probe: bytes, timeout: float = 90.0) -> None:
        """Until the server answers probe (raw request bytes) with any HTTP status."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.app} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=2) as sock:
                    sock.sendall(probe)
                    if sock.recv(64).startswith(b"HTTP/1.1 "):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.app} did not answer within {timeout:g} s:\n{self.log_tail()}")

    def cpu_seconds(self) -> float | None:
        return process_cpu_seconds(self.proc.pid)

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM (uvicorn shuts down gracefully, so a profiler around it writes its report), then SIGKILL."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()


def http_request(method: str, path: str, port: int, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method == "POST":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class LoadResult:
    sent: int = 0
    done: int = 0
    ok: int = 0
    elapsed: float = 0.0
    timed_out: bool = False
    statuses: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    first_failure: str = ""
    client_cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


Check = Callable[[int, bytes], bool]


def _ok_status(status: int, _body: bytes) -> bool:
    return status == 200


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, close = 0, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            close = True
        elif name == b"transfer-encoding":
            raise RuntimeError("chunked responses are not supported by the raw load generator")
    body = await reader.readexactly(length) if length else b""
    return status, body, close


async def _drive_raw(port: int, requests: Sequence[bytes], concurrency: int, deadline: float, check: Check,
                     result: LoadResult) -> None:
    position = iter(range(len(requests)))

    async def worker() -> None:
        reader = writer = None
        try:
            for index in position:
                if time.perf_counter() > deadline:
                    result.timed_out = True
                    return
                if writer is None:
                    reader, writer = await asyncio.open_connection(HOST, port)
                started = time.perf_counter()
                result.sent += 1
                writer.write(requests[index])
                status, body, close = await _read_response(reader)  # type: ignore[arg-type]
                result.latencies.append(time.perf_counter() - started)
                result.done += 1
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if check(status, body):
                    result.ok += 1
                elif not result.first_failure:
                    result.first_failure = f"{status} {body[:300]!r}"
                if close:
                    writer.close()
                    reader = writer = None
        finally:
            if writer is not None:
                writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _drive_httpx(port: int, requests: Sequence[bytes], concurrency: int, deadline: float, check: Check,
                       result: LoadResult) -> None:
    import httpx

    parsed = []
    for raw in requests:  # back from bytes to (path, headers, body), so both clients send the same requests
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        headers.pop("Host", None)
        headers.pop("Content-Length", None)
        parsed.append((lines[0].split()[0], lines[0].split()[1], headers, body))
    position = iter(range(len(parsed)))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", limits=limits, timeout=60) as client:
        async def worker() -> None:
            for index in position:
                if time.perf_counter() > deadline:
                    result.timed_out = True
                    return
                method, path, headers, body = parsed[index]
                started = time.perf_counter()
                result.sent += 1
                response = await client.request(method, path, headers=headers, content=body)
                result.latencies.append(time.perf_counter() - started)
                result.done += 1
                result.statuses[response.status_code] = result.statuses.get(response.status_code, 0) + 1
                if check(response.status_code, response.content):
                    result.ok += 1
                elif not result.first_failure:
                    result.first_failure = f"{response.status_code} {response.content[:300]!r}"

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def run_load(port: int, requests: Sequence[bytes], *, concurrency: int, timeout: float, client: str = "raw",
             check: Check = _ok_status) -> LoadResult:
    """Send every request (bounded by timeout) with concurrency in flight; returns counts, rate and latencies."""
    result = LoadResult()
    drive = _drive_raw if client == "raw" else _drive_httpx

    async def main() -> None:
        started = time.perf_counter()
        try:
            await asyncio.wait_for(drive(port, requests, concurrency, started + timeout, check, result),
                                   timeout + 30)
        except asyncio.TimeoutError:
            result.timed_out = True
        result.elapsed = time.perf_counter() - started

    cpu = time.process_time()
    asyncio.run(main())
    result.client_cpu = time.process_time() - cpu
    return result
