"""Outbound HTTP to URLs that agents' owners configure (event webhooks, tools), guarded against SSRF.

An agent's `webhook_url` or tool `url` is written by whoever holds the API key, and the gateway
POSTs to it from inside its own network. So, unless ALLOW_PRIVATE_URLS=1:
- only http(s) URLs, no credentials in them;
- the host is resolved ONCE and every address it resolves to must be public (no private,
  loopback, link-local, multicast, reserved or unspecified address, IPv4-mapped ones included);
- the connection is made to that vetted address (the Host header and TLS name stay the URL's
  host), so a second DNS answer cannot swap in an internal address (DNS rebinding);
- redirects are not followed (a public URL could redirect inward);
- the answer is read up to a size cap, then the connection is dropped;
- `timeout` bounds the WHOLE call: the DNS lookup (run in a thread and waited for no longer than
  the time left), connecting, sending and reading the answer. A server that drips a byte every few
  seconds is cut off at the deadline (a watchdog shuts the socket down), and each outcome past it
  is a TransientError with code "timeout".
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from gateway.errors import PermanentError, TransientError

DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024


class UnsafeURL(PermanentError):
    """The URL is not one the gateway may call (scheme, credentials, or a non-public address)."""


@dataclass(frozen=True)
class HttpAnswer:
    """What the endpoint answered: status, body (at most the cap) and whether the body was cut."""

    status: int
    body: bytes
    truncated: bool = False


def address_is_public(address: str) -> bool:
    """True for a globally routable unicast address (IPv4-mapped IPv6 judged as the IPv4 inside)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


def check_url_shape(url: str) -> tuple[str, str, int]:
    """The scheme, host and port of an http(s) URL without credentials; UnsafeURL otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURL(f"The URL {url!r} cannot be read: {exc}.", "bad_url") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeURL(f"The URL {url!r} is not an http(s) URL with a host.", "bad_url")
    if parts.username or parts.password:
        raise UnsafeURL("The URL must not carry a user name or password.", "bad_url")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _timed_out(host: str, what: str = "POST") -> TransientError:
    """The error of a call that ran out of time."""
    return TransientError(f"{what} to {host} failed: timed out.", "timeout")


def resolve(host: str, port: int, timeout: float | None = None) -> list[str]:
    """The addresses `host` resolves to, looked up once; within `timeout` s (None: no limit).

    getaddrinfo takes no timeout, so the lookup runs in a daemon thread and is waited for at most
    `timeout` s; a lookup that outlasts it is abandoned (its thread ends when the resolver gives up).
    """
    try:
        return [str(ipaddress.ip_address(host.split("%", 1)[0]))]  # a literal: nothing to look up
    except ValueError:
        pass
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def lookup() -> None:
        try:
            outcome["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc
        finally:
            done.set()

    if timeout is None:
        lookup()
    else:
        threading.Thread(target=lookup, name="safe-http-dns", daemon=True).start()
        if not done.wait(max(timeout, 0.0)):
            raise TransientError(f"Resolving {host} timed out.", "timeout")
    error = outcome.get("error")
    if isinstance(error, (socket.gaierror, UnicodeError)):
        raise TransientError(f"Could not resolve {host}: {error}.", "dns_error") from None
    if error is not None:
        raise error
    return [str(info[4][0]) for info in outcome["infos"]]


def vetted_address(host: str, port: int, allow_private: bool, timeout: float | None = None) -> str:
    """The address to connect to: resolved once (within `timeout` s); every answer must be public
    unless allowed."""
    addresses = resolve(host, port, timeout)
    if not addresses:
        raise TransientError(f"{host} resolved to no address.", "dns_error")
    if not allow_private:
        for address in addresses:
            if not address_is_public(address):
                raise UnsafeURL(
                    f"{host} resolves to {address}, a private, loopback or link-local address; "
                    "set ALLOW_PRIVATE_URLS=1 to allow such URLs.",
                    "private_address",
                )
    return addresses[0]


class _Watchdog:
    """Shuts a connection's socket down at the deadline, so no read or write outlives it."""

    def __init__(self, conn: HTTPConnection, seconds: float) -> None:
        """Armed at once; `cancel()` when the call is over."""
        self.conn = conn
        self.fired = False
        self._lock = threading.Lock()
        self._over = False
        self._timer = threading.Timer(max(seconds, 0.0), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            if self._over:
                return
            self.fired = True
            sock = self.conn.sock
        if sock is not None:
            # The plain socket's shutdown, also under TLS: it wakes a blocked recv at once.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def cancel(self) -> None:
        """The call is over: never fire."""
        with self._lock:
            self._over = True
        self._timer.cancel()


def post(
    url: str,
    body: bytes,
    *,
    headers: dict[str, str],
    timeout: float,
    allow_private: bool,
    max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
) -> HttpAnswer:
    """POST `body` to `url` through the guard, all of it within `timeout` seconds; raise UnsafeURL
    (refused) or TransientError (network; code "timeout" when the time ran out)."""
    deadline = time.monotonic() + timeout
    scheme, host, port = check_url_shape(url)
    address = vetted_address(host, port, allow_private, timeout)
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = host if port in (80, 443) else f"{host}:{port}"
    if ":" in host and not host.startswith("["):
        host_header = f"[{host}]" if port in (80, 443) else f"[{host}]:{port}"
    left = deadline - time.monotonic()
    if left <= 0:
        raise _timed_out(host)
    if scheme == "https":
        # Connect to the vetted IP but check the certificate (and send SNI) for the URL's host.
        conn: HTTPConnection = HTTPSConnection(
            address, port, timeout=left, server_hostname=host, assert_hostname=host
        )
    else:
        conn = HTTPConnection(address, port, timeout=left)
    watchdog = _Watchdog(conn, left)
    try:
        conn.request(
            "POST", target, body=body, headers={**headers, "Host": host_header}, preload_content=False
        )
        response = conn.getresponse()
        data = response.read(max_bytes + 1, decode_content=True)
        status = response.status
    except (Urllib3Error, OSError, http.client.HTTPException) as exc:
        if watchdog.fired or isinstance(exc, (Urllib3Timeout, TimeoutError)) or "timed out" in str(exc):
            raise _timed_out(host) from None
        raise TransientError(f"POST to {host} failed: {exc}.", "connection_error") from None
    finally:
        watchdog.cancel()
        conn.close()
    if watchdog.fired:  # the answer came whole, but only as the deadline struck: still too late
        raise _timed_out(host)
    return HttpAnswer(status, data[:max_bytes], truncated=len(data) > max_bytes)
