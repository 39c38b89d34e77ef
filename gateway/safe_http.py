"""Outbound HTTP to URLs that agents' owners configure (event webhooks, tools), guarded against SSRF.

An agent's `webhook_url` or tool `url` is written by whoever holds the API key, and the gateway
POSTs to it from inside its own network. So, unless ALLOW_PRIVATE_URLS=1:
- only http(s) URLs, no credentials in them;
- the host is resolved ONCE and every address it resolves to must be public (no private,
  loopback, link-local, multicast, reserved or unspecified address, IPv4-mapped ones included);
- the connection is made to that vetted address (the Host header and TLS name stay the URL's
  host), so a second DNS answer cannot swap in an internal address (DNS rebinding);
- redirects are not followed (a public URL could redirect inward);
- the answer is read up to a size cap, then the connection is dropped.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error

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


def vetted_address(host: str, port: int, allow_private: bool) -> str:
    """The address to connect to: resolved once; every answer must be public unless allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise TransientError(f"Could not resolve {host}: {exc}.", "dns_error") from None
    addresses = [str(info[4][0]) for info in infos]
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


def post(
    url: str,
    body: bytes,
    *,
    headers: dict[str, str],
    timeout: float,
    allow_private: bool,
    max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
) -> HttpAnswer:
    """POST `body` to `url` through the guard; raise UnsafeURL (refused), TransientError (network)."""
    scheme, host, port = check_url_shape(url)
    address = vetted_address(host, port, allow_private)
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = host if port in (80, 443) else f"{host}:{port}"
    if ":" in host and not host.startswith("["):
        host_header = f"[{host}]" if port in (80, 443) else f"[{host}]:{port}"
    pool_kwargs = {"timeout": urllib3.Timeout(connect=timeout, read=timeout), "retries": False, "maxsize": 1}
    if scheme == "https":
        # Connect to the vetted IP but check the certificate (and send SNI) for the URL's host.
        pool: urllib3.HTTPConnectionPool = urllib3.HTTPSConnectionPool(
            address, port, server_hostname=host, assert_hostname=host, **pool_kwargs
        )
    else:
        pool = urllib3.HTTPConnectionPool(address, port, **pool_kwargs)
    try:
        response = pool.urlopen(
            "POST",
            target,
            body=body,
            headers={**headers, "Host": host_header},
            redirect=False,
            preload_content=False,
            assert_same_host=False,
        )
        try:
            data = response.read(max_bytes + 1, decode_content=True)
        finally:
            response.release_conn()
            response.close()
    except Urllib3Error as exc:
        reason = "timed out" if "timed out" in str(exc).lower() else str(exc)
        code = "timeout" if reason == "timed out" else "connection_error"
        raise TransientError(f"POST to {host} failed: {reason}.", code) from None
    finally:
        pool.close()
    return HttpAnswer(response.status, data[:max_bytes], truncated=len(data) > max_bytes)
