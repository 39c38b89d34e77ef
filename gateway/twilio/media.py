"""Where MMS media is fetched for the model: only from Twilio, only our account's, within its limits.

The prompt (gateway/prompt.py) marks the images of the texts being answered with a placeholder
part; `resolve_images` fetches each one, with no database connection held, and puts it in the
prompt as OpenAI image input (a `data:` URL), or describes it as an attachment when it cannot be
shown. Nothing else fetches media, and the web process never does.

A media URL comes from a webhook, so it is treated as untrusted: every hop (the URL and each
redirect) must match a `Source` before any request is made. The sources are Twilio's API (and
the configured TWILIO_API_BASE_URL origin, for emulators and tests), on a Media path of OUR
account, and, as redirect targets only, the two hosts Twilio's help center names for stored media:
mms.twiliocdn.com (HTTP auth for media on) and s3-external-1.amazonaws.com/media.twiliocdn.com
(media stored without it), again under our account SID. Credentials (account SID and auth
token, HTTP basic auth) go only to the API origins; redirects are followed by hand, so they are
never sent anywhere else (requests' own redirect handling strips them on a host change, but
would make each request before we could vet it). A host other than the configured origin must
resolve to public addresses only.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import re
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from gateway.config import Settings
from gateway.safe_http import address_is_public

log = logging.getLogger(__name__)

# What OpenAI-style models take as image input.
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
# Twilio's limit for the media of one message; one item is never larger.
MAX_MEDIA_BYTES = 5 * 1024 * 1024
# Images fetched for one prompt (the newest ones): the cost of a reply stays flat.
MAX_IMAGES = 4
# Seconds: to connect, between bytes, for one item with its redirects, for all of a prompt's.
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 10.0
ITEM_DEADLINE = 20.0
PROMPT_DEADLINE = 30.0
MAX_REDIRECTS = 3
# Twilio may answer 404 for a moment after the webhook, while the media propagates (its help
# center says to retry after a short delay): one retry after this pause.
RETRY_PAUSE = 1.0
CHUNK = 64 * 1024

TWILIO_API = "https://api.twilio.com"
# The placeholder part gateway/prompt.py puts where an image will go.
PENDING_IMAGE = "twilio_media"

Origin = tuple[str, str, int]  # (scheme, host, port)
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SID = "[0-9a-fA-F]{32}"


class MediaError(Exception):
    """This media item cannot be shown to the model; the message says why, for a person."""

    def __init__(self, reason: str, *, transient: bool = False) -> None:
        """Keep the reason and whether another try may succeed."""
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


@dataclass(frozen=True)
class Source:
    """A place media may be fetched from: an origin and the paths allowed on it."""

    origin: Origin
    path: re.Pattern[str]
    credentials: bool  # send the account's basic auth (Twilio's API only)
    local_ok: bool = False  # may resolve to a loopback/private address (the configured origin)
    first_hop: bool = True  # False: only as a redirect target


@dataclass(frozen=True)
class MediaPolicy:
    """Where media may come from, and the credentials for the sources that take them."""

    sources: tuple[Source, ...]
    auth: tuple[str, str] | None

    def source_for(self, url: str, *, first_hop: bool) -> Source | None:
        """The source `url` belongs to, or None when it must not be fetched."""
        parts = urlsplit(url)
        origin = origin_of(url)
        if origin is None or parts.username or parts.password or parts.fragment:
            return None
        for source in self.sources:
            if source.origin != origin or (first_hop and not source.first_hop):
                continue
            if first_hop and parts.query:
                continue  # Twilio's media URLs carry no query; its CDN redirects do
            if source.path.fullmatch(parts.path):
                return source
        return None


def origin_of(url: str) -> Origin | None:
    """(scheme, host, port) of an http(s) URL, lower-cased, with the default port filled in."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme]


def media_path(account_sid: str, prefix: str = "") -> re.Pattern[str]:
    """The path of one Media item of one of our account's messages on Twilio's API."""
    return re.compile(
        re.escape(prefix.rstrip("/"))
        + rf"/2010-04-01/Accounts/{re.escape(account_sid)}/Messages/(?:MM|SM){_SID}/Media/ME{_SID}"
    )


def policy_for(settings: Settings) -> MediaPolicy:
    """The media sources of the configured Twilio account (nothing, without an account SID)."""
    sid = settings.twilio_account_sid
    if not sid:
        return MediaPolicy((), None)
    api = origin_of(TWILIO_API)
    sources = [Source(api, media_path(sid), credentials=True)]  # type: ignore[arg-type]
    configured = origin_of(settings.twilio_api_base_url)
    if configured is not None and configured != api:
        prefix = urlsplit(settings.twilio_api_base_url).path
        sources.append(Source(configured, media_path(sid, prefix), credentials=True, local_ok=True))
    # Twilio's help center, "Protect Media Access with HTTP Basic Authentication for Programmable
    # Messaging" (support.twilio.com/hc/en-us/articles/223183748): secured media redirects to
    # mms.twiliocdn.com, media stored without HTTP auth to s3-external-1.amazonaws.com; both
    # URLs carry the account SID first (/AC.../<id>, /media.twiliocdn.com/AC.../<id>).
    account = re.escape(sid)
    sources += [
        Source(("https", "mms.twiliocdn.com", 443), re.compile(rf"/{account}/[^/]+"), False, first_hop=False),
        Source(
            ("https", "s3-external-1.amazonaws.com", 443),
            re.compile(rf"/media\.twiliocdn\.com/{account}/[^/]+"),
            False,
            first_hop=False,
        ),
    ]
    auth = (sid, settings.twilio_auth_token) if settings.twilio_auth_token else None
    return MediaPolicy(tuple(sources), auth)


def check_public(host: str, port: int) -> None:
    """Refuse a host that is, or resolves to, a loopback, private, link-local or reserved address."""
    try:
        addresses = {ipaddress.ip_address(host.strip("[]"))}
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise MediaError(f"{host} could not be resolved", transient=True) from exc
        addresses = {ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos}
    if not addresses or not all(address_is_public(str(address)) for address in addresses):
        raise MediaError(f"{host} is not a public address")


def fetch_media(
    url: str, policy: MediaPolicy, *, max_bytes: int = MAX_MEDIA_BYTES, deadline: float | None = None
) -> tuple[str | None, bytes]:
    """(served content type, bytes) of one media item; MediaError when it is refused or fails.

    One retry, after RETRY_PAUSE, when Twilio answered 404/429/5xx or did not answer at all.
    """
    deadline = min(deadline or float("inf"), time.monotonic() + ITEM_DEADLINE)
    try:
        return _fetch_once(url, policy, max_bytes, deadline)
    except MediaError as exc:
        if not exc.transient or time.monotonic() + RETRY_PAUSE >= deadline:
            raise
        time.sleep(RETRY_PAUSE)
    return _fetch_once(url, policy, max_bytes, deadline)


def _fetch_once(url: str, policy: MediaPolicy, max_bytes: int, deadline: float) -> tuple[str | None, bytes]:
    """One try: every hop vetted before it is requested, the body read up to `max_bytes`."""
    with requests.Session() as session:
        session.trust_env = False  # no .netrc credentials for other hosts; proxies are passed below
        for hop in range(MAX_REDIRECTS + 1):
            source = policy.source_for(url, first_hop=hop == 0)
            if source is None:
                raise MediaError("not a Twilio media URL of this account")
            scheme, host, port = origin_of(url)  # type: ignore[misc]
            if not source.local_ok:
                check_public(host, port)
            try:
                response = session.get(
                    url,
                    auth=policy.auth if source.credentials else None,
                    allow_redirects=False,
                    stream=True,
                    timeout=(CONNECT_TIMEOUT, min(READ_TIMEOUT, max(deadline - time.monotonic(), 0.1))),
                    proxies=requests.utils.get_environ_proxies(url),
                )
            except requests.RequestException as exc:
                raise MediaError(f"could not be downloaded ({type(exc).__name__})", transient=True) from exc
            with response:
                if response.is_redirect:
                    url = urljoin(url, response.headers["location"])
                    continue
                if response.status_code != 200:
                    transient = response.status_code in (404, 408, 429) or response.status_code >= 500
                    raise MediaError(f"Twilio answered HTTP {response.status_code}", transient=transient)
                return response.headers.get("content-type"), _read_capped(response, max_bytes, deadline)
    raise MediaError("too many redirects")


def _read_capped(response: requests.Response, max_bytes: int, deadline: float) -> bytes:
    """The body, refused as soon as it is known to be larger than `max_bytes` or too slow."""
    too_large = MediaError(f"larger than {max_bytes // (1024 * 1024)} MB")
    length = response.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_bytes:
        raise too_large
    chunks: list[bytes] = []
    total = 0
    try:
        for chunk in response.iter_content(CHUNK):
            total += len(chunk)
            if total > max_bytes:
                raise too_large
            if time.monotonic() > deadline:
                raise MediaError("took too long to download")
            chunks.append(chunk)
    except requests.RequestException as exc:
        raise MediaError(f"could not be downloaded ({type(exc).__name__})", transient=True) from exc
    return b"".join(chunks)


def sniff_image_type(data: bytes) -> str | None:
    """The image type the bytes really are (PNG, JPEG, GIF, WebP), or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def media_type(item: dict[str, Any]) -> str:
    """An attachment's content type, lower-cased, without parameters."""
    kind = item.get("content_type") or "application/octet-stream"
    return str(kind).split(";", 1)[0].strip().lower() or "application/octet-stream"


def is_image(item: Any) -> bool:
    """True for an attachment the model can be shown as an image."""
    return isinstance(item, dict) and bool(item.get("url")) and media_type(item) in IMAGE_TYPES


def describe(item: dict[str, Any], why_not_shown: str | None = None) -> str:
    """How an attachment reads to the model: `[attachment: image/png]`, and why it is not shown."""
    # No URL: the model cannot open Twilio's (they need our credentials); it would only spend
    # tokens on every later turn and hand our account SID to the model provider.
    note = f", not shown: {why_not_shown}" if why_not_shown else ""
    return f"[attachment: {media_type(item)}{note}]"


def pending_image(item: dict[str, Any]) -> dict[str, Any]:
    """The placeholder part for an image `resolve_images` will fetch."""
    return {"type": PENDING_IMAGE, "media": {"url": item["url"], "content_type": media_type(item)}}


def image_part(item: dict[str, Any], policy: MediaPolicy, deadline: float) -> dict[str, Any]:
    """The OpenAI image part for one attachment; MediaError when it cannot be shown."""
    if time.monotonic() >= deadline:
        raise MediaError("no time left to download it")
    _, data = fetch_media(item["url"], policy, deadline=deadline)
    kind = sniff_image_type(data)
    if kind is None:
        raise MediaError("not a PNG, JPEG, GIF or WebP image")
    encoded = base64.b64encode(data).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:{kind};base64,{encoded}"}}


def resolve_images(
    settings: Settings, messages: list[dict[str, Any]], policy: MediaPolicy | None = None
) -> list[dict[str, Any]]:
    """The prompt with each image placeholder fetched into an image part, or described instead.

    Runs in the worker with no database connection held: at most MAX_IMAGES downloads of at
    most MAX_MEDIA_BYTES each, all within PROMPT_DEADLINE.
    """
    if not any(_has_pending(m.get("content")) for m in messages):
        return messages
    policy = policy or policy_for(settings)
    deadline = time.monotonic() + PROMPT_DEADLINE
    resolved = []
    for message in messages:
        content = message.get("content")
        if _has_pending(content):
            message = {**message, "content": _resolve_parts(content, policy, deadline)}
        resolved.append(message)
    return resolved


def _has_pending(content: Any) -> bool:
    """True when a message content holds an image placeholder."""
    return isinstance(content, list) and any(
        isinstance(p, dict) and p.get("type") == PENDING_IMAGE for p in content
    )


def _resolve_parts(parts: list[dict[str, Any]], policy: MediaPolicy, deadline: float) -> str | list:
    """Placeholders fetched or described; plain text again when no image could be shown."""
    out: list[dict[str, Any]] = []
    for part in parts:
        if part.get("type") == PENDING_IMAGE:
            item = part["media"]
            try:
                out.append(image_part(item, policy, deadline))
                continue
            except MediaError as exc:
                log.info("media %s not shown to the model: %s", item.get("url"), exc.reason)
                part = {"type": "text", "text": describe(item, exc.reason)}
            except Exception:  # a bug here must not cost the person their answer; it is logged
                log.exception("media %s not shown to the model", item.get("url"))
                part = {"type": "text", "text": describe(item, "could not be downloaded")}
        if part.get("type") == "text" and out and out[-1].get("type") == "text":
            out[-1] = {"type": "text", "text": out[-1]["text"] + "\n" + part["text"]}
        else:
            out.append(part)
    if all(p.get("type") == "text" for p in out):
        return "\n".join(p["text"] for p in out)
    return out
