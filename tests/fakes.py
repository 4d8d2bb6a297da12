"""Real servers on 127.0.0.1 that play the providers: an HTTP server with scripted answers, and SMTP."""
from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Answer:
    status: int = 200
    body: object = field(default_factory=lambda: {"sid": "SM0001", "id": "msg-1"})
    headers: dict = field(default_factory=dict)
    delay: float = 0.0
    raw: bytes | None = None


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
    """Answers POSTs from a script (one Answer per request, the last one repeated) and records them all."""

    def __init__(self, port: int = 0) -> None:
        """port: a fixed port (one a test kept closed until now), else any free one."""
        self.requests: list[Seen] = []
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
                if answer.delay:
                    time.sleep(answer.delay)
                payload = answer.raw if answer.raw is not None else json.dumps(answer.body).encode()
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
