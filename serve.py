"""Run the API under uvicorn, with any number of workers, on a listening socket bound here.

    python serve.py [--host 127.0.0.1] [--port 8000] [--workers 1] [--app api:app] [--app-dir DIR]
                    [--log-level info] [--no-access-log] [--timeout-keep-alive 5]

Why not `uvicorn api:app --workers N`: for N > 1 uvicorn binds its socket as socket(AF_INET, SOCK_STREAM) with
protocol 0, and asyncio sets TCP_NODELAY only on accepted sockets whose protocol is IPPROTO_TCP, so every
connection keeps Nagle's algorithm and a response on a reused keep-alive connection waits ~40 ms for the
client's delayed ACK. uvicorn's `--fd` does not help cleanly: it rebuilds the socket as AF_UNIX. Here the
socket from listening_socket() goes to uvicorn's own server (one worker) or worker supervisor (several),
exactly as `uvicorn.run` hands them the socket it binds itself.

uvicorn's own proxy-header handling is off: by default it believes X-Forwarded-For from 127.0.0.1 and rewrites
the client address before the app sees it, so anyone on the host (or a same-host proxy passing the header on)
could pick the address the per-address limit counts. OTP_TRUSTED_PROXIES (core.net) is the only authority.

With several workers, /metrics must sum all of them, so each start gets a fresh PROMETHEUS_MULTIPROC_DIR
(prometheus_client's multiprocess mode: each worker writes its figures to files there) that the supervisor
tidies when a worker dies and removes when it stops.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import uvicorn
from uvicorn.config import LOG_LEVELS, STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from core.settings import settings_or_exit


def listening_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A TCP socket listening on host:port with SO_REUSEADDR and TCP_NODELAY; IPv6 when host has a ':'.

    TCP_NODELAY on the listening socket is inherited by every socket accepted from it (Linux), and the
    explicit IPPROTO_TCP makes asyncio set it on each accepted socket as well: either way no response
    waits on Nagle's algorithm. The family rule is uvicorn's, so `--host` means what it means to uvicorn.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


class FairAcceptLoop(asyncio.SelectorEventLoop):
    """An event loop for one of several workers sharing a listening socket: it takes its share of connections.

    Every worker waits on the one listening socket, and the kernel wakes them all when connections arrive; asyncio
    then accepts up to the backlog (2048) in one go. A client that opens its keep-alive connections in a burst
    (a load balancer's pool, bench/load.py's 32) therefore often had all of them accepted by whichever worker ran
    first: one worker served everything while the other idled, and the whole run went at one worker's speed
    (bench/load.py's "split" column showed 100/0 and 74/26; the "one run in four at half speed").

    Here a worker accepts one connection per wake-up, then stops listening for a moment that grows with the
    connections it already serves (nginx's accept_mutex_delay idea, without a lock between processes): a worker
    with fewer connections gets to the next one first. A lone worker still takes every connection, a few hundred
    microseconds later at worst, once per connection (never per request).
    """

    PAUSE_PER_CONNECTION = 0.0001  # seconds
    MAX_PAUSE = 0.002

    def _accept_connection(self, protocol_factory, sock, sslcontext=None, server=None, backlog=100,  # type: ignore[no-untyped-def, override]
                           *args):
        super()._accept_connection(protocol_factory, sock, sslcontext, server, 1, *args)
        active = getattr(server, "_active_count", 0)
        if not active or server is None or not server.is_serving() or sock.fileno() < 0:
            return
        self._remove_reader(sock.fileno())

        def resume() -> None:
            if server.is_serving() and sock.fileno() >= 0:
                self._add_reader(sock.fileno(), self._accept_connection, protocol_factory, sock, sslcontext, server,
                                 backlog, *args)

        self.call_later(min(self.MAX_PAUSE, active * self.PAUSE_PER_CONNECTION), resume)


def fresh_metrics_directory() -> Path:
    """An empty directory for the workers' metric files, named in PROMETHEUS_MULTIPROC_DIR for them to inherit.

    Fresh per start: files left by an earlier run would add its figures to this one's (and prometheus_client
    requires the directory to be emptied between runs). Set before any worker imports prometheus_client,
    which reads the variable once, at import.
    """
    path = Path(tempfile.mkdtemp(prefix="otp-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return path


class Supervisor(Multiprocess):
    """uvicorn's worker supervisor, which also removes a gone worker's live-gauge files (mark_process_dead).

    Counters and histograms of a dead worker stay, so totals never go backwards; gauges that describe live
    processes (otp_workers) would otherwise count the dead worker next to its replacement.
    """

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket], metrics_dir: Path) -> None:
        super().__init__(config, sockets=sockets)
        self.metrics_dir = metrics_dir

    def _forget_gone(self, before: set[int | None]) -> None:
        from prometheus_client.multiprocess import mark_process_dead  # after PROMETHEUS_MULTIPROC_DIR is set
        for pid in before - {p.pid for p in self.processes}:
            if pid is not None:
                mark_process_dead(pid, str(self.metrics_dir))

    def keep_subprocess_alive(self) -> None:  # replaces a worker that died or hung
        before = {p.pid for p in self.processes}
        super().keep_subprocess_alive()
        self._forget_gone(before)

    def handle_signals(self) -> None:  # SIGHUP replaces every worker, SIGTTOU retires one
        before = {p.pid for p in self.processes}
        super().handle_signals()
        self._forget_gone(before)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--app", default="api:app", help="the ASGI app as module:attribute (default api:app)")
    parser.add_argument("--app-dir", help="directory to import --app from (default: this one)")
    parser.add_argument("--log-level", default="info", choices=sorted(LOG_LEVELS), help="(default info)")
    parser.add_argument("--no-access-log", action="store_true", help="do not log each request")
    parser.add_argument("--timeout-keep-alive", type=int, default=5,
                        help="seconds an idle keep-alive connection is kept open (default 5)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.app_dir:
        sys.path.insert(0, args.app_dir)  # spawned workers inherit sys.path
    settings_or_exit()  # a bad setting stops the launcher with one line, before it binds or forks

    config = uvicorn.Config(args.app, host=args.host, port=args.port, workers=args.workers,
                            log_level=args.log_level, access_log=not args.no_access_log,
                            timeout_keep_alive=args.timeout_keep_alive,
                            # Several workers share the listening socket: each takes its share of connections.
                            # (uvicorn calls a custom loop's import string to make the loop: the class itself)
                            loop="serve:FairAcceptLoop" if args.workers > 1 else "auto",
                            # OTP_TRUSTED_PROXIES decides which forwarded addresses are believed (core.net).
                            proxy_headers=False, forwarded_allow_ips=[])  # also configures logging
    log = logging.getLogger("uvicorn.error")
    try:
        sock = listening_socket(args.host, args.port)
    except OSError as exc:
        log.error("cannot listen on %s port %d: %s", args.host, args.port, exc)
        return STARTUP_FAILURE
    host = f"[{args.host}]" if ":" in args.host else args.host
    log.info("Uvicorn running on http://%s:%d (Press CTRL+C to quit)", host, sock.getsockname()[1])
    metrics_dir = fresh_metrics_directory() if config.workers > 1 else None  # one worker counts in memory
    try:
        if metrics_dir is None:
            uvicorn.Server(config).run(sockets=[sock])
            return 0
        supervisor = Supervisor(config, sockets=[sock], metrics_dir=metrics_dir)
        supervisor.run()
        # uvicorn's supervisor stops when a worker cannot start, but exits 0; say so to systemd and the like.
        return STARTUP_FAILURE if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes) else 0
    except KeyboardInterrupt:  # SIGINT re-raised by a single worker after its graceful shutdown
        return 0
    finally:
        sock.close()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
