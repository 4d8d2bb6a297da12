"""Real servers on 127.0.0.1 that play the providers: an HTTP server with scripted answers, and SMTP."""
from __future__ import annotations

import asyncio
import email
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email import policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP


@dataclass
class Answer:
    status: int = 200
    body: object = field(default_factory=lambda: {"sid": "SM0001", "id": "msg-1"})
    headers: dict = field(default_factory=dict)
    delay: float = 0.0
    raw: bytes | None = None
    # Whether the provider takes the message to the phone before answering (the delay comes after that):
    # by default when it answers 2xx; a 500 or a lost answer after delivery sets it explicitly.
    delivers: bool | None = None
    # Answer with the request body quoted in an error message, as some providers' error texts do.
    echo: bool = False


@dataclass
class Seen:
    method: str
    path: str
    headers: dict
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)

    def form(self) -> dict:
        from urllib.parse import parse_qsl
        return dict(parse_qsl(self.body.decode()))


class FakeProvider:
    """Answers POSTs from a script (one Answer per request, the last one repeated) and records them all.

    phone holds what reached the recipient: every request whose answer delivers, in arrival order, whether
    or not its answer then reaches the client. With honours_idempotency_key, a second request carrying an
    Idempotency-Key already delivered reaches no one (the webhook contract of the README).
    """

    def __init__(self, port: int = 0, honours_idempotency_key: bool = False) -> None:
        """port: a fixed port (one a test kept closed until now), else any free one."""
        self.requests: list[Seen] = []
        self.phone: list[Seen] = []
        self.honours_idempotency_key = honours_idempotency_key
        self.script: list[Answer] = [Answer()]
        self.on_request: Callable[[], None] | None = None  # run in the server's thread before it answers
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                provider.requests.append(Seen("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                answer = provider.script.pop(0) if len(provider.script) > 1 else provider.script[0]
                if provider.on_request is not None:
                    provider.on_request()
                seen = provider.requests[-1]
                delivers = answer.status < 300 if answer.delivers is None else answer.delivers
                key = seen.headers.get("idempotency-key")
                if delivers and not (provider.honours_idempotency_key and key
                                     and any(m.headers.get("idempotency-key") == key for m in provider.phone)):
                    provider.phone.append(seen)
                if answer.delay:
                    time.sleep(answer.delay)
                payload = answer.raw if answer.raw is not None else json.dumps(answer.body).encode()
                if answer.echo:
                    payload = json.dumps({"message": f"invalid request: {body.decode()}"}).encode()
                try:
                    self.send_response(answer.status)
                    for key, value in {"Content-Type": "application/json", **answer.headers}.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeProvider":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    """A port nothing listens on yet: for a server to start on, or to have a connection refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MailServer:
    """aiosmtpd on 127.0.0.1 playing a mail server; delivered holds the messages it accepted.

    It can stall at the DATA command before its 354 reply (stall_before_data: the client has not sent the
    message yet, so a client that gives up and closes delivers nothing), or after the message's final dot
    before its 250 (stall_after_data: the message is delivered, the client just never hears so). rcpt_replies
    are the answers to the first RCPT commands (e.g. "451 4.3.0 try later"), then 250.
    """

    def __init__(self, *, stall_before_data: float = 0.0, stall_after_data: float = 0.0,
                 rcpt_replies: list[str] | None = None, **smtp_options: object) -> None:
        self.delivered: list[email.message.EmailMessage] = []
        self.rcpt_replies = list(rcpt_replies or [])
        self.sessions = 0  # connections accepted
        self.stalled = 0  # DATA commands now waiting in a stall
        self.closed = 0  # connections that ended
        self.stall_before_data = stall_before_data
        self.stall_after_data = stall_after_data
        self._lock = threading.Lock()
        server = self

        class Handler:
            async def handle_RCPT(self, smtp, session, envelope, address, rcpt_options):
                with server._lock:
                    reply = server.rcpt_replies.pop(0) if server.rcpt_replies else None
                if reply:
                    return reply
                envelope.rcpt_tos.append(address)
                return "250 OK"

            async def handle_DATA(self, smtp, session, envelope):
                with server._lock:
                    server.delivered.append(email.message_from_bytes(envelope.content, policy=policy.default))
                if server.stall_after_data:
                    await asyncio.sleep(server.stall_after_data)
                return "250 OK"

        class StallingSMTP(SMTP):
            def connection_made(self, transport) -> None:
                with server._lock:
                    server.sessions += 1
                super().connection_made(transport)

            def connection_lost(self, error) -> None:
                with server._lock:
                    server.closed += 1
                super().connection_lost(error)

            async def smtp_DATA(self, arg: str) -> None:
                if server.stall_before_data:
                    with server._lock:
                        server.stalled += 1
                    try:
                        await asyncio.sleep(server.stall_before_data)
                    finally:
                        with server._lock:
                            server.stalled -= 1
                await super().smtp_DATA(arg)

        class StallingController(Controller):
            def factory(self):
                return StallingSMTP(self.handler, **self.SMTP_kwargs)

        self.controller = StallingController(Handler(), hostname="127.0.0.1", port=free_port(), **smtp_options)
        self.port = self.controller.port

    def __enter__(self) -> "MailServer":
        self.controller.start()
        # start() connects once to check the server is up: that session is not the client's.
        wait_for(lambda: self.closed == self.sessions)
        with self._lock:
            self.sessions = self.closed = 0
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll condition until it holds (a condition awaited, not a fixed sleep); fail after timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)
