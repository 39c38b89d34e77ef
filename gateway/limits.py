"""Request-size limits, applied in WSGI before Flask or Werkzeug parse anything.

Werkzeug's own limits do not cover what matters here: `MAX_CONTENT_LENGTH` is checked only once
the body is read, and `max_form_parts` counts multipart parts, not the fields of an urlencoded
form. So this middleware, wrapped around the app in `create_app`, decides from the path:

- a declared `Content-Length` over the path's cap is answered 413 at once, without reading a byte;
- a body of unknown length (chunked) is read through a bounded reader: past the cap it is 413,
  and at most cap + 1 bytes were ever held;
- an urlencoded form with more fields than the path allows is 413 before any field is decoded.

The caps: Twilio's webhooks carry a few dozen fields (a 1600-character Body is under 20 KB even
percent-encoded, plus up to 10 media URLs, geography, WhatsApp profile fields and Add-ons
results), so `/twilio/*` takes 64 KiB and 256 fields. `/v1` takes 1 MiB of JSON. Everything else
(probes, the OpenAPI document) takes the API's cap.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True)
class BodyLimit:
    """The most bytes, and urlencoded form fields, one request under `prefix` may send."""

    prefix: str
    max_bytes: int
    max_fields: int | None = None  # None: no field count (JSON bodies)
    json_errors: bool = False  # answer the 413 as the API's JSON error


WEBHOOK_LIMIT = BodyLimit("/twilio/", max_bytes=64 * KIB, max_fields=256)
API_LIMIT = BodyLimit("/v1", max_bytes=1 * MIB, json_errors=True)
DEFAULT_LIMIT = BodyLimit("/", max_bytes=1 * MIB)
LIMITS = (WEBHOOK_LIMIT, API_LIMIT)
# Read a body of unknown length in pieces this big (never more than cap + 1 bytes in all).
READ_CHUNK = 64 * KIB

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def limit_for(path: str) -> BodyLimit:
    """The limit that applies to a request path."""
    for limit in LIMITS:
        if path.startswith(limit.prefix) or path == limit.prefix.rstrip("/"):
            return limit
    return DEFAULT_LIMIT


class TooLarge(Exception):
    """The request is over its limit; the message says how, for the 413's body."""


class BadLength(Exception):
    """Content-Length is not a number."""


def count_fields(body: bytes) -> int:
    """How many fields an urlencoded body holds (separators counted, nothing decoded)."""
    if not body:
        return 0
    return body.count(b"&") + 1


def read_bounded(stream: Any, max_bytes: int, length: int | None) -> bytes:
    """Read the body: `length` bytes, or up to EOF when unknown; raise TooLarge past `max_bytes`."""
    if length is not None:
        return stream.read(length) if length else b""
    pieces: list[bytes] = []
    total = 0
    while True:
        piece = stream.read(min(READ_CHUNK, max_bytes + 1 - total))
        if not piece:
            return b"".join(pieces)
        total += len(piece)
        if total > max_bytes:
            raise TooLarge(f"the body is larger than {max_bytes} bytes")
        pieces.append(piece)


def _declared_length(environ: dict[str, Any]) -> int | None:
    """The request's Content-Length, or None when it has none (chunked or no body)."""
    raw = (environ.get("CONTENT_LENGTH") or "").strip()
    if not raw:
        return None
    if not raw.isdigit():
        raise BadLength(f"Content-Length {raw[:40]!r} is not a number")
    return int(raw)


def _has_body_of_unknown_length(environ: dict[str, Any]) -> bool:
    """True for a chunked (or otherwise self-terminated) body without Content-Length."""
    encoding = (environ.get("HTTP_TRANSFER_ENCODING") or "").lower()
    return "chunked" in encoding or bool(environ.get("wsgi.input_terminated"))


class RequestLimits:
    """WSGI middleware refusing oversized bodies and over-long forms before the app parses them."""

    def __init__(self, app: WsgiApp) -> None:
        """Wrap `app` (Flask's `wsgi_app`)."""
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Check the request against its path's limit; pass it on, or answer 413/400."""
        limit = limit_for(environ.get("PATH_INFO") or "/")
        try:
            length = _declared_length(environ)
            if length is not None and length > limit.max_bytes:
                raise TooLarge(f"the body is {length} bytes; at most {limit.max_bytes} are accepted")
            form = (environ.get("CONTENT_TYPE") or "").lower().startswith("application/x-www-form-urlencoded")
            needs_read = (length is None and _has_body_of_unknown_length(environ)) or (
                form and limit.max_fields is not None and length
            )
            if needs_read:
                body = read_bounded(environ["wsgi.input"], limit.max_bytes, length)
                if form and limit.max_fields is not None and count_fields(body) > limit.max_fields:
                    raise TooLarge(f"the form has more than {limit.max_fields} fields")
                # The app reads the checked copy: a known length, nothing more to stream.
                environ["wsgi.input"] = io.BytesIO(body)
                environ["CONTENT_LENGTH"] = str(len(body))
                environ.pop("HTTP_TRANSFER_ENCODING", None)
                environ["wsgi.input_terminated"] = False
        except TooLarge as exc:
            return self._refuse(environ, start_response, limit, 413, str(exc))
        except BadLength as exc:
            return self._refuse(environ, start_response, limit, 400, str(exc))
        return self.app(environ, start_response)

    @staticmethod
    def _refuse(
        environ: dict[str, Any], start_response: StartResponse, limit: BodyLimit, status: int, reason: str
    ) -> list[bytes]:
        """Answer without reading (more of) the body; the connection is closed after it."""
        log.warning(
            "refused %s %s from %s: %s",
            environ.get("REQUEST_METHOD"),
            environ.get("PATH_INFO"),
            environ.get("REMOTE_ADDR"),
            reason,
        )
        title = "Payload Too Large" if status == 413 else "Bad Request"
        if limit.json_errors:
            code = "payload_too_large" if status == 413 else "bad_request"
            message = reason[0].upper() + reason[1:] + "."
            body = json.dumps({"error": {"code": code, "message": message}}).encode()
            content_type = "application/json"
        else:
            body = f"{title}: {reason}\n".encode()
            content_type = "text/plain; charset=utf-8"
        start_response(
            f"{status} {title}",
            [
                ("Content-Type", content_type),
                ("Content-Length", str(len(body))),
                # The unread rest of the body must not be taken for the next request.
                ("Connection", "close"),
            ],
        )
        return [body]
