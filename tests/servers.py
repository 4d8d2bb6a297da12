"""Processes the tests start and stop: the API under uvicorn, and a private PostgreSQL cluster."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import sys
import time
from pathlib import Path

import httpx

from core.config import ROOT
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
    """The API on a free loopback port with the given environment, started as the README says: `uvicorn api:app`
    for one worker, `python serve.py --workers N` for more."""

    def __init__(self, env: dict[str, str], workers: int = 1, serve: bool | None = None,
                 log: Path | None = None) -> None:
        """serve: start it with serve.py rather than `uvicorn api:app` (default: for more than one worker).
        log: a file that gets the server's standard error (its log, at level warning); else it is discarded."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env}
        self.env.pop("OTP_SECRET_KEY", None) if "OTP_SECRET_KEY" not in env else None
        self.workers = workers
        self.serve = workers > 1 if serve is None else serve
        self.process: subprocess.Popen | None = None
        self.log = log

    def __enter__(self) -> "ApiServer":
        launcher = ["serve.py"] if self.serve else ["-m", "uvicorn", "api:app"]
        stderr = self.log.open("ab") if self.log is not None else None
        try:
            self.process = subprocess.Popen(
                [sys.executable, *launcher, "--host", "127.0.0.1", "--port", str(self.port),
                 "--workers", str(self.workers), "--log-level", "warning",
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


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "core.cli", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def new_client(env: dict[str, str]) -> tuple[str, str]:
    lines = dict(line.split(": ", 1) for line in cli(env, "client", "create", "tests").splitlines())
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
