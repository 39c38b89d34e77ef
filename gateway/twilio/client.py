"""Where SMS/MMS leave: one cached Twilio REST client per process, errors sorted once."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime

import requests
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client
from twilio.rest.messaging.v2 import V2 as MessagingV2

from gateway.clients import ClientCache
from gateway.config import Settings
from gateway.errors import GatewayError, PermanentError, TransientError, classify_twilio

log = logging.getLogger(__name__)

# Seconds one REST call to Twilio may take before it counts as a transient failure.
TWILIO_TIMEOUT = 30.0
# A typing indicator is worth nothing late: its call gives up after this long.
TYPING_TIMEOUT = 3.0
# How many of the newest messages between two numbers find_sent looks through.
FIND_SENT_LIMIT = 20

_clients: ClientCache[Client] = ClientCache()


def twilio_client(settings: Settings, *, timeout: float = TWILIO_TIMEOUT) -> Client:
    """The process's Twilio client for these settings (thread-safe, built once per timeout)."""
    if not settings.twilio_configured:
        raise PermanentError(
            "Twilio is not configured: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN.", "twilio_not_configured"
        )
    key = (settings.twilio_account_sid, settings.twilio_auth_token, settings.twilio_api_base_url, timeout)

    def build() -> Client:
        client = Client(
            settings.twilio_account_sid,
            settings.twilio_auth_token,
            http_client=TwilioHttpClient(timeout=timeout, pool_connections=True),
        )
        # Emulators and tests speak Twilio's API (and its Messaging API) on another origin.
        client.api.base_url = settings.twilio_api_base_url.rstrip("/")
        if settings.twilio_api_base_url.rstrip("/") != "https://api.twilio.com":
            client.messaging.base_url = settings.twilio_api_base_url.rstrip("/")
        return client

    return _clients.get(key, build)


def send_sms(
    settings: Settings,
    *,
    from_: str,
    to: str,
    body: str,
    media_urls: list[str] | None = None,
    status_callback: str | None = None,
    content_sid: str | None = None,
    content_variables: dict[str, str] | None = None,
    messaging_service_sid: str | None = None,
) -> tuple[str, str]:
    """Send one SMS/MMS/WhatsApp message; return Twilio's (sid, status); raise TransientError/PermanentError.

    With `content_sid` the message is a Content API template (Twilio's ContentSid, with
    ContentVariables as a JSON string) and `body` is left out. With `messaging_service_sid` the
    message goes through that Messaging Service (MessagingServiceSid instead of From).
    """
    kwargs: dict = {"to": to}
    if messaging_service_sid:
        kwargs["messaging_service_sid"] = messaging_service_sid
    else:
        kwargs["from_"] = from_
    if content_sid:
        kwargs["content_sid"] = content_sid
        if content_variables:
            kwargs["content_variables"] = json.dumps(content_variables, ensure_ascii=False)
    else:
        kwargs["body"] = body
    if media_urls:
        kwargs["media_url"] = list(media_urls)
    if status_callback:
        kwargs["status_callback"] = status_callback
    endpoint = f"{settings.twilio_api_base_url.rstrip('/')}/2010-04-01/Accounts/…/Messages.json"
    try:
        message = twilio_client(settings).messages.create(**kwargs)
    except TwilioRestException as exc:
        error = classify_twilio_error(exc)
        error.endpoint = endpoint
        raise error from exc
    except requests.RequestException as exc:
        raise TransientError(f"Could not reach Twilio: {exc}", "connection_error", endpoint) from exc
    except TwilioException as exc:
        raise PermanentError(f"Twilio client error: {exc}", "twilio_error", endpoint) from exc
    return message.sid, (message.status or "queued")


_typing_failed_once = threading.Event()
_typing_missing_logged = threading.Event()
# The first twilio release whose client has Messaging v2's typing indicator (pyproject.toml's minimum).
TYPING_SINCE = "9.8.2"


def typing_supported() -> bool:
    """True when the installed twilio library has `messaging.v2.typing_indicator`; logged once when not."""
    if hasattr(MessagingV2, "typing_indicator"):
        return True
    if not _typing_missing_logged.is_set():
        _typing_missing_logged.set()
        log.warning(
            "whatsapp typing indicators are unavailable: the installed twilio library (%s) has no "
            "messaging.v2.typing_indicator (twilio %s or later has it)",
            _twilio_version(),
            TYPING_SINCE,
        )
    return False


def _twilio_version() -> str:
    """The installed twilio library's version, for the log line."""
    try:
        from importlib.metadata import version

        return version("twilio")
    except Exception:  # noqa: BLE001 - only words for a log line
        return "unknown version"


def show_typing(settings: Settings, message_sid: str | None) -> threading.Thread | None:
    """Show the WhatsApp user that a reply to `message_sid` is being written (marks it read, too).

    Best effort and never in the way: the call runs in a thread of its own with a short timeout,
    so the reply neither waits for it nor fails with it. The first failure in a process is logged
    as a warning (typing indicators are a Public Beta Twilio may refuse), later ones at debug.
    A twilio library too old to have the indicator is logged once (`typing_supported`) and skipped.
    Returns the thread (tests join it), or None when there is nothing to do.
    """
    if not message_sid or not settings.twilio_configured or not typing_supported():
        return None
    thread = threading.Thread(
        target=_send_typing, args=(settings, message_sid), name="whatsapp-typing", daemon=True
    )
    thread.start()
    return thread


def _send_typing(settings: Settings, message_sid: str) -> None:
    """POST Messaging v2's Indicators/Typing for a WhatsApp message; log a failure, never raise."""
    try:
        client = twilio_client(settings, timeout=TYPING_TIMEOUT)
        client.messaging.v2.typing_indicator.create(channel="whatsapp", message_id=message_sid)
    except Exception as exc:  # noqa: BLE001 - best effort: any failure only costs the indicator
        level = logging.DEBUG if _typing_failed_once.is_set() else logging.WARNING
        _typing_failed_once.set()
        log.log(level, "whatsapp typing indicator for %s not shown: %s", message_sid, exc)


def find_sent(
    settings: Settings, *, from_: str, to: str, body: str, since: datetime
) -> tuple[str, str] | None:
    """(sid, status) of a message Twilio accepted from `from_` to `to` with this body since `since`.

    Asked before re-sending a part whose sender died mid-send: Twilio may have accepted it before
    the sender could store the SID, and sending it again would text the person twice. Raises
    TransientError when Twilio cannot be asked (the part is then not sent yet either); None also
    when the API has no message list to ask (an emulator answering 404/405): then it is sent.
    """
    try:
        recent = twilio_client(settings).messages.list(from_=from_, to=to, limit=FIND_SENT_LIMIT)
    except TwilioRestException as exc:
        if exc.status in (404, 405):
            log.warning(
                "Twilio API at %s cannot list messages; sending without checking",
                settings.twilio_api_base_url,
            )
            return None
        raise classify_twilio_error(exc) from exc
    except (requests.RequestException, TwilioException) as exc:
        raise TransientError(f"Could not ask Twilio what was sent: {exc}", "connection_error") from exc
    cutoff = since.replace(tzinfo=since.tzinfo or UTC)
    for message in recent:
        created = message.date_created
        if message.body == body and (created is None or created >= cutoff):
            return message.sid, (message.status or "queued")
    return None


def classify_twilio_error(exc: TwilioRestException) -> GatewayError:
    """Sort Twilio's REST error by its code (21610, 21211, 20429...) and HTTP status."""
    reason = (exc.msg or f"Twilio answered HTTP {exc.status}").strip()
    return classify_twilio(exc.status, exc.code, reason)
