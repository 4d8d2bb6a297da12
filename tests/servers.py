"""Processes the tests start and stop: the API under uvicorn, and a private PostgreSQL cluster."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from core.settings import ROOT
from tests.fakes import free_port


def wait_until_up(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def stop(process: subprocess.Popen) -> None:
    """Terminate a server the test started, and kill it if it does not go within 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class ApiServer:
    """The API on a free loopback port with the given environment, started as the README says: `uvicorn api:app
    --no-proxy-headers` for one worker, `python serve.py --workers N` for more."""

    def __init__(self, env: dict[str, str], workers: int = 1, serve: bool | None = None,
                 log: Path | None = None, log_level: str = "warning") -> None:
        """serve: start it with serve.py rather than `uvicorn api:app` (default: for more than one worker).
        log: a file that gets the server's standard error (its log, at log_level); else it is discarded."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env}
        self.env.pop("OTP_SECRET_KEY", None) if "OTP_SECRET_KEY" not in env else None
        self.workers = workers
        self.serve = workers > 1 if serve is None else serve
        self.log, self.log_level = log, log_level
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "ApiServer":
        launcher = ["serve.py"] if self.serve else ["-m", "uvicorn", "api:app", "--no-proxy-headers"]
        stderr = self.log.open("ab") if self.log is not None else None
        try:
            self.process = subprocess.Popen(
                [sys.executable, *launcher, "--host", "127.0.0.1", "--port", str(self.port),
                 "--workers", str(self.workers), "--log-level", self.log_level,
                 # Long keep-alive: a connection closed by the server as the client reuses it is a test artefact.
                 "--timeout-keep-alive", "60"],
                cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=stderr or subprocess.DEVNULL)
        finally:
            if stderr is not None:
                stderr.close()  # the server has its own copy
        try:
            wait_until_up(f"{self.url}/health")
        except Exception:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.process is not None:
            stop(self.process)


class ForwardingProxy:
    """A same-host reverse proxy, as nginx with `proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for`:
    listens on 127.0.0.1, and passes each request on to upstream from 127.0.0.1 with the address it saw
    appended to X-Forwarded-For (after whatever the caller wrote there)."""

    _HOP = {b"host", b"content-length", b"connection", b"transfer-encoding", b"x-forwarded-for"}

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(self._app, host="127.0.0.1", port=self.port, lifespan="off",
                                                     interface="asgi3", proxy_headers=False, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    async def _app(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        sent = [v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"x-forwarded-for"]
        headers = [(k.decode("latin-1"), v.decode("latin-1"))
                   for k, v in scope["headers"] if k.lower() not in self._HOP]
        headers.append(("X-Forwarded-For", ", ".join([*sent, scope["client"][0]])))
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.1")
        async with httpx.AsyncClient(transport=transport, timeout=60) as client:
            answer = await client.request(scope["method"], self.upstream + scope["path"], content=body, headers=headers)
        await send({"type": "http.response.start", "status": answer.status_code,
                    "headers": [(b"content-type", answer.headers.get("content-type", "text/plain").encode()),
                                (b"content-length", str(len(answer.content)).encode())]})
        await send({"type": "http.response.body", "body": answer.content})

    def __enter__(self) -> "ForwardingProxy":
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the proxy did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def new_client(env: dict[str, str], *options: str) -> tuple[str, str]:
    lines = dict(line.split(": ", 1) for line in cli(env, "client", "create", "tests", *options).splitlines())
    return lines["key"], lines["secret"]


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


class PrivatePostgres:
    """A throw-away PostgreSQL cluster on a free port, owned by the postgres user, that a test may stop."""

    def __init__(self) -> None:
        self.bin = postgres_bin()
        # Not under pytest's tmp_path: its parents are private to root, and the server runs as postgres.
        self.base = Path(tempfile.mkdtemp(prefix="otp-pg-"))
        self.dir = self.base / "pgdata"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise subprocess.CalledProcessError(done.returncode, command, done.stdout, done.stderr)

    def __enter__(self) -> "PrivatePostgres":
        self.dir.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres", "postgres")
            shutil.chown(self.dir, "postgres", "postgres")
        self._as_postgres(str(self.bin / "initdb"), "-D", str(self.dir), "-A", "trust", "-U", "postgres")
        self.start()
        return self

    def start(self) -> None:
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.dir), "-w", "-l", str(self.dir / "log"),
                          "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1", "start")

    def stop(self) -> None:
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.dir), "-w", "-m", "fast", "stop")

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.base, ignore_errors=True)
