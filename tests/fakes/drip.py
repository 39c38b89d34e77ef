"""A loopback HTTP server that answers too slowly to be waited for: the status line and headers at
once, then the body one byte per second (a server a per-read timeout never cuts off)."""

from __future__ import annotations

import socket
import threading

HOST = "127.0.0.1"


class DripServer:
    """Accepts connections on 127.0.0.1; each gets headers promising BODY_BYTES, then a byte a second."""

    BODY_BYTES = 1000

    def __init__(self, interval: float = 1.0) -> None:
        """Listening once entered (`with DripServer() as server:`)."""
        self.interval = interval
        self.connections = 0
        self._stop = threading.Event()
        self._sock = socket.socket()
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://{HOST}:{self._sock.getsockname()[1]}"

    def __enter__(self) -> DripServer:
        self._sock.bind((HOST, 0))
        self._sock.listen(8)
        self._sock.settimeout(0.2)
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self._sock.close()

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            self._spawn(self._drip, conn)

    def _drip(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    request += chunk
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {self.BODY_BYTES}\r\n\r\n".encode()
                )
                for _ in range(self.BODY_BYTES):
                    if self._stop.wait(self.interval):
                        return
                    conn.sendall(b" ")
            except OSError:  # the client gave up and closed the connection
                return
