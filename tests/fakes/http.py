"""A lean threaded HTTP/1.1 server on 127.0.0.1 that the fakes build on."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

HOST = "127.0.0.1"


@dataclass
class Request:
    """One HTTP request as the fakes see it: method, path, query, headers and the raw body."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON (raises ValueError when it is not JSON)."""
        return json.loads(self.body or b"null")

    def form(self) -> dict[str, list[str]]:
        """The body parsed as an application/x-www-form-urlencoded form (repeated keys kept)."""
        return parse_qs(self.body.decode("utf-8"), keep_blank_values=True)


@dataclass
class Response:
    """What a fake answers: status, body bytes, content type and any extra headers."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
        """A JSON response."""
        return cls(status, json.dumps(payload).encode("utf-8"), "application/json", dict(headers or {}))


class _Server(ThreadingHTTPServer):
    # Benchmarks open 32-200 connections at once; the stdlib default backlog of 5 would drop SYNs
    # and turn into one-second client retransmits that look like server slowness.
    request_queue_size = 1024
    daemon_threads = True
    allow_reuse_address = True
    # server_close() must not wait for idle keep-alive connections that clients hold open.
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet about clients that hang up mid-request (normal at stop() and in benchmarks)."""
        if not isinstance(sys.exc_info()[1], ConnectionError | OSError):
            super().handle_error(request, client_address)


class LoopbackServer:
    """A ThreadingHTTPServer on 127.0.0.1:<free port> in a background thread; subclasses route requests."""

    def __init__(self) -> None:
        """Nothing listens until start()."""
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._stopping = threading.Event()

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> LoopbackServer:
        """Bind a free loopback port and serve in a daemon thread; returns self."""
        if self._httpd is not None:
            return self
        self._stopping.clear()
        self._httpd = _Server((HOST, 0), _make_handler(self))
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the listening socket and every open connection."""
        if self._httpd is None:
            return
        self._stopping.set()  # wakes handlers sleeping on `latency`
        self._httpd.shutdown()
        self._httpd.server_close()
        # Idle keep-alive handler threads block in readline(); shutting their sockets ends them.
        with self._conns_lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> LoopbackServer:
        """Start on entering a with-block."""
        return self.start()

    def __exit__(self, *exc: object) -> None:
        """Stop on leaving a with-block."""
        self.stop()

    @property
    def port(self) -> int:
        """The port the server listens on (only once started)."""
        if self._httpd is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:PORT (no trailing slash)."""
        return f"http://{HOST}:{self.port}"

    # --- for subclasses --------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        """Answer one request; subclasses override."""
        return Response.json(404, {"error": "not found"})

    def sleep(self, seconds: float) -> None:
        """Sleep in a handler thread, but wake at once when the server stops."""
        if seconds > 0:
            self._stopping.wait(seconds)

    @staticmethod
    def wait_until(cond: threading.Condition, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        """Wait on `cond` (held by the caller) until predicate() is truthy; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            cond.wait(remaining)


def _make_handler(server: LoopbackServer) -> type[BaseHTTPRequestHandler]:
    """A request-handler class bound to one LoopbackServer."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive; every response carries Content-Length
        # Headers and body go out as separate writes; with Nagle on, a delayed ACK adds ~40 ms each.
        disable_nagle_algorithm = True
        server_version = "loopback-fake/1"
        sys_version = ""

        def setup(self) -> None:
            super().setup()
            with server._conns_lock:
                server._conns.add(self.connection)

        def finish(self) -> None:
            try:
                super().finish()
            finally:
                with server._conns_lock:
                    server._conns.discard(self.connection)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            pass  # quiet: benchmarks send thousands of requests

        def _read_body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        # Trailers end with an empty line.
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _dispatch(self) -> None:
            # Always consume the body, even when answering an error, so the next request on this
            # keep-alive connection starts at a request line.
            body = self._read_body()
            parts = urlsplit(self.path)
            request = Request(
                method=self.command,
                path=parts.path,
                query=parse_qs(parts.query, keep_blank_values=True),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
            )
            try:
                response = server.handle(request)
            except Exception as exc:  # a bug in a fake must answer, not hang the client
                response = Response.json(500, {"error": {"message": f"fake crashed: {exc!r}"}})
            self._send(response)

        def _send(self, response: Response) -> None:
            try:
                phrase = HTTPStatus(response.status).phrase
            except ValueError:
                phrase = ""
            self.send_response(response.status, phrase)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD" and response.body:
                self.wfile.write(response.body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _dispatch

    return Handler
