"""A Twilio emulator for `smsgw dev` without Twilio credentials: the real twilio client talks to it.

It speaks the parts of Twilio's REST API (2010-04-01) the gateway uses, with Twilio's response
shapes and error codes, behind HTTP basic auth with the account SID and auth token it made up:

- POST /2010-04-01/Accounts/{AC}/Messages.json          send; 201 + Message resource, then the
  status callbacks queued → sent → delivered, each signed with X-Twilio-Signature like Twilio's
- GET  /2010-04-01/Accounts/{AC}/Messages/{SM}.json     fetch a message
- GET  /2010-04-01/Accounts/{AC}/Messages/{MM}/Media/{ME}  media bytes (the MMS fetch path)
- GET  /2010-04-01/Accounts/{AC}/IncomingPhoneNumbers.json, GET/POST .../IncomingPhoneNumbers/{PN}.json
- GET  /v1/Services                                     no Messaging Services

The dev phone (gateway/dev_phone/views.py) is the other side: `text_from_phone` posts Twilio's
inbound webhook form, signed, to the number's SmsUrl, and the TwiML answer's <Message>s come back
to the phone, as Twilio would send them. STOP/START work as Twilio's Advanced Opt-Out does: Twilio
answers them itself and refuses texts to a person who opted out (error 21610) until START.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import re
import secrets
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from email.utils import format_datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from xml.etree import ElementTree

from twilio.request_validator import RequestValidator

from gateway.errors import TWILIO_OPTED_OUT
from gateway.twilio.keywords import Keyword, match_keyword

log = logging.getLogger(__name__)

API = "/2010-04-01"
# Seconds between the status callbacks of one message (queued → sent → delivered).
STATUS_STEP = 0.3
# Twilio's own answers to STOP and START under Advanced Opt-Out (its default texts).
STOP_REPLY = (
    "You have successfully been unsubscribed. You will not receive any more messages from this number. "
    "Reply START to resubscribe."
)
START_REPLY = (
    "You have successfully been re-subscribed to messages from this number. Reply HELP for help. "
    "Reply STOP to unsubscribe. Msg&Data Rates May Apply."
)
ERRORS = {
    20003: "Authenticate",
    20404: "The requested resource was not found",
    21602: "Message body is required.",
    21603: "The 'From' phone number is required.",
    21604: "A 'To' phone number is required.",
    21606: "The 'From' phone number provided is not a valid message-capable Twilio phone number.",
    TWILIO_OPTED_OUT: "Attempt to send to unsubscribed recipient",
    21617: "The concatenated message body exceeds the 1600 character limit.",
}
MAX_MEDIA_BYTES = 5 * 1024 * 1024


def new_sid(prefix: str) -> str:
    """A Twilio-shaped SID: two letters and 32 hex digits."""
    return prefix + secrets.token_hex(16)


def rfc2822_now() -> str:
    """Now, the way Twilio writes dates."""
    return format_datetime(datetime.now(UTC).replace(microsecond=0))


class TwilioEmulator:
    """Twilio's REST API on a loopback port, plus the phone side of the conversation."""

    def __init__(self, account_sid: str | None = None, auth_token: str | None = None) -> None:
        """A made-up account; call start() to listen."""
        self.account_sid = account_sid or new_sid("AC")
        self.auth_token = auth_token or secrets.token_hex(16)
        self.messages: list[dict[str, Any]] = []  # both directions, oldest first
        self.numbers: dict[str, dict[str, Any]] = {}  # PN sid -> IncomingPhoneNumber
        self.media: dict[str, tuple[str, bytes, str]] = {}  # ME sid -> (content type, bytes, MM sid)
        self.opted_out: set[tuple[str, str]] = set()  # (our number, the person)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> TwilioEmulator:
        """Listen on host:port (0: a free port) in a daemon thread."""
        self._server = ThreadingHTTPServer((host, port), _handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="twilio-emulator", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        """The origin the twilio client is pointed at (TWILIO_API_BASE_URL)."""
        assert self._server is not None, "the emulator is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # --- numbers ---------------------------------------------------------------------------------

    def add_number(self, phone_number: str, sms_url: str = "", status_callback: str = "") -> str:
        """Provision one of our numbers (kept if it exists); returns its PN sid."""
        with self._lock:
            for sid, number in self.numbers.items():
                if number["phone_number"] == phone_number:
                    return sid
            sid = new_sid("PN")
            uri = f"{API}/Accounts/{self.account_sid}/IncomingPhoneNumbers/{sid}.json"
            now = rfc2822_now()
            self.numbers[sid] = {
                "account_sid": self.account_sid,
                "api_version": "2010-04-01",
                "capabilities": {"fax": False, "mms": True, "sms": True, "voice": True},
                "date_created": now,
                "date_updated": now,
                "friendly_name": phone_number,
                "phone_number": phone_number,
                "sid": sid,
                "sms_application_sid": "",
                "sms_fallback_method": "POST",
                "sms_fallback_url": "",
                "sms_method": "POST",
                "sms_url": sms_url,
                "status": "in-use",
                "status_callback": status_callback,
                "status_callback_method": "POST",
                "uri": uri,
                "voice_url": "",
            }
            return sid

    def number(self, phone_number: str) -> dict[str, Any] | None:
        """The IncomingPhoneNumber of one of our numbers, or None."""
        with self._lock:
            return next((dict(n) for n in self.numbers.values() if n["phone_number"] == phone_number), None)

    def our_numbers(self) -> list[str]:
        """Our numbers, in the order they were provisioned."""
        with self._lock:
            return [n["phone_number"] for n in self.numbers.values()]

    # --- the phone's side ------------------------------------------------------------------------

    def thread(self, person: str, our_number: str) -> list[dict[str, Any]]:
        """The messages between a person and one of our numbers, oldest first."""
        with self._lock:
            return [dict(m) for m in self.messages if {m["from"], m["to"]} == {person, our_number}]

    def text_from_phone(
        self, person: str, our_number: str, body: str, attachments: list[tuple[str, bytes]] = ()
    ) -> dict[str, Any]:
        """The person texts our number: record it, post Twilio's signed webhook, deliver the TwiML answer."""
        sid = new_sid("MM" if attachments else "SM")
        media_urls = [self.add_media(content_type, data, sid) for content_type, data in attachments]
        message = self._record(sid, person, our_number, body, media_urls, "inbound", "received")
        keyword = match_keyword(body)
        form = {
            "ToCountry": "US",
            "SmsMessageSid": sid,
            "NumMedia": str(len(media_urls)),
            "SmsSid": sid,
            "SmsStatus": "received",
            "Body": body,
            "To": our_number,
            "NumSegments": "1",
            "MessageSid": sid,
            "AccountSid": self.account_sid,
            "From": person,
            "FromCountry": "US",
            "ApiVersion": "2010-04-01",
        }
        for index, (url, (content_type, _)) in enumerate(zip(media_urls, attachments, strict=True)):
            form[f"MediaUrl{index}"] = url
            form[f"MediaContentType{index}"] = content_type
        if keyword in (Keyword.STOP, Keyword.START, Keyword.HELP):
            form["OptOutType"] = keyword.value
        # Advanced Opt-Out: Twilio itself answers STOP and START and keeps the opt-out list.
        if keyword is Keyword.STOP:
            with self._lock:
                self.opted_out.add((our_number, person))
            self._record(new_sid("SM"), our_number, person, STOP_REPLY, [], "outbound-reply", "delivered")
        elif keyword is Keyword.START:
            with self._lock:
                self.opted_out.discard((our_number, person))
            self._record(new_sid("SM"), our_number, person, START_REPLY, [], "outbound-reply", "delivered")
        number = self.number(our_number)
        if number is None or not number.get("sms_url"):
            message["note"] = "this number's SMS webhook is not set: nobody received the text"
            return message
        try:
            twiml = self._post_signed(number["sms_url"], form)
        except OSError as exc:
            message["note"] = f"the webhook failed: {exc}"
            return message
        for text in _twiml_messages(twiml):
            self._record(new_sid("SM"), our_number, person, text, [], "outbound-reply", "delivered")
        return message

    def add_media(self, content_type: str, data: bytes, message_sid: str) -> str:
        """Serve `data` at a Twilio-shaped media URL of this account; returns the URL."""
        media_sid = new_sid("ME")
        with self._lock:
            self.media[media_sid] = (content_type, bytes(data), message_sid)
        return f"{self.url}{API}/Accounts/{self.account_sid}/Messages/{message_sid}/Media/{media_sid}"

    # --- internals -------------------------------------------------------------------------------

    def _record(
        self, sid: str, from_: str, to: str, body: str, media: list[str], direction: str, status: str
    ) -> dict[str, Any]:
        now = rfc2822_now()
        uri = f"{API}/Accounts/{self.account_sid}/Messages/{sid}.json"
        resource = {
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": body,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": direction,
            "error_code": None,
            "error_message": None,
            "from": from_,
            "messaging_service_sid": None,
            "num_media": str(len(media)),
            "num_segments": "1",
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": status,
            "subresource_uris": {"media": uri.replace(".json", "/Media.json")},
            "to": to,
            "uri": uri,
            "media_urls": list(media),
        }
        with self._lock:
            self.messages.append(resource)
        return resource

    def _post_signed(self, url: str, form: dict[str, str]) -> bytes:
        """POST a form signed as Twilio signs it; the response body."""
        signature = RequestValidator(self.auth_token).compute_signature(url, form)
        request = urllib.request.Request(
            url,
            data=urllib.parse.urlencode(form).encode(),
            headers={
                "X-Twilio-Signature": signature,
                "Content-Type": "application/x-www-form-urlencoded",
                "User-Agent": "TwilioProxy/1.1 (smsgw emulator)",
            },
        )
        with urllib.request.urlopen(request, timeout=15) as response:  # noqa: S310 - the configured webhook
            return response.read()

    def _status_callbacks(self, resource: dict[str, Any], callback: str | None) -> None:
        """queued → sent → delivered, each posted (signed) to the message's StatusCallback if it has one."""
        for status in ("sent", "delivered"):
            time.sleep(STATUS_STEP)
            with self._lock:
                resource["status"] = status
                resource["date_updated"] = rfc2822_now()
            if callback is None:
                continue
            form = {
                "MessageSid": resource["sid"],
                "SmsSid": resource["sid"],
                "MessageStatus": status,
                "SmsStatus": status,
                "AccountSid": self.account_sid,
                "From": resource["from"],
                "To": resource["to"],
                "ApiVersion": "2010-04-01",
            }
            try:
                self._post_signed(callback, form)
            except (OSError, urllib.error.HTTPError) as exc:
                log.warning("twilio emulator: status callback to %s failed: %s", callback, exc)

    # --- HTTP ------------------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, list[str]], headers, body: bytes):
        """Route one request the way api.twilio.com would; (status, JSON or bytes, content type)."""
        if not self._authorized(headers.get("Authorization", "")):
            return self._error(401, 20003)
        if path.startswith("/v1/Services"):
            url = f"https://messaging.twilio.com{path}?PageSize=50&Page=0"
            meta = {"page": 0, "page_size": 50, "first_page_url": url, "previous_page_url": None,
                    "next_page_url": None, "url": url, "key": "services"}  # fmt: skip
            return 200, {"services": [], "meta": meta}, None
        m = re.fullmatch(rf"{API}/Accounts/(\w+)(/.*)", path)
        if not m:
            return self._error(404, 20404)
        if m[1] != self.account_sid:
            return self._error(403, 20003)
        rest = m[2]
        form = urllib.parse.parse_qs(body.decode("utf-8"), keep_blank_values=True) if body else {}
        if rest == "/Messages.json" and method == "POST":
            return self._create_message(form)
        if (found := re.fullmatch(r"/Messages/((?:SM|MM)\w+)\.json", rest)) and method == "GET":
            with self._lock:
                resource = next((dict(r) for r in self.messages if r["sid"] == found[1]), None)
            return (200, _public(resource), None) if resource else self._error(404, 20404)
        if (found := re.fullmatch(r"/Messages/(\w+)/Media/(ME\w+)", rest)) and method == "GET":
            with self._lock:
                item = self.media.get(found[2])
            if item is None or item[2] != found[1]:
                return self._error(404, 20404)
            return 200, item[1], item[0]
        if rest == "/IncomingPhoneNumbers.json" and method == "GET":
            return self._list_numbers(query)
        if found := re.fullmatch(r"/IncomingPhoneNumbers/(PN\w+)\.json", rest):
            return self._number(found[1], method, form)
        return self._error(404, 20404)

    def _authorized(self, header: str) -> bool:
        if not header.lower().startswith("basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return hmac.compare_digest(user, self.account_sid) and hmac.compare_digest(password, self.auth_token)

    def _error(self, status: int, code: int, message: str | None = None):
        payload = {
            "code": code,
            "message": message or ERRORS.get(code, f"Error {code}"),
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        }
        return status, payload, None

    def _create_message(self, form: dict[str, list[str]]):
        first = {k: v[0] for k, v in form.items()}
        to, from_, body = first.get("To", ""), first.get("From", ""), first.get("Body", "")
        media = form.get("MediaUrl", [])
        if not to:
            return self._error(400, 21604)
        if not from_:
            return self._error(400, 21603)
        if not body and not media:
            return self._error(400, 21602)
        if len(body) > 1600:
            return self._error(400, 21617)
        if self.number(from_) is None:
            return self._error(400, 21606)
        with self._lock:
            opted_out = (from_, to) in self.opted_out
        if opted_out:
            return self._error(400, TWILIO_OPTED_OUT)
        resource = self._record(
            new_sid("MM" if media else "SM"), from_, to, body, media, "outbound-api", "queued"
        )
        answer = _public(resource)  # "queued", as Twilio answers; the thread moves it on
        callback = first.get("StatusCallback") or None
        threading.Thread(target=self._status_callbacks, args=(resource, callback), daemon=True).start()
        return 201, answer, None

    def _list_numbers(self, query: dict[str, list[str]]):
        wanted = (query.get("PhoneNumber") or [""])[0]
        with self._lock:
            numbers = [dict(n) for n in self.numbers.values() if wanted in n["phone_number"]]
        base = f"{API}/Accounts/{self.account_sid}/IncomingPhoneNumbers.json"
        payload = {
            "end": max(len(numbers) - 1, 0),
            "first_page_uri": base + "?PageSize=50&Page=0",
            "incoming_phone_numbers": numbers,
            "next_page_uri": None,
            "page": 0,
            "page_size": 50,
            "previous_page_uri": None,
            "start": 0,
            "uri": base + "?PageSize=50&Page=0",
        }
        return 200, payload, None

    def _number(self, sid: str, method: str, form: dict[str, list[str]]):
        with self._lock:
            resource = self.numbers.get(sid)
            if resource is None:
                return self._error(404, 20404)
            if method == "POST":
                for name, values in form.items():
                    key = re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
                    if key in resource and key not in ("sid", "account_sid", "uri", "phone_number"):
                        resource[key] = values[0]
                resource["date_updated"] = rfc2822_now()
            return 200, dict(resource), None


def _public(resource: dict[str, Any]) -> dict[str, Any]:
    """A Message resource as Twilio's API shows it (without the emulator's own fields)."""
    return {k: v for k, v in resource.items() if k not in ("media_urls", "note")}


def _twiml_messages(twiml: bytes) -> list[str]:
    """The texts of a TwiML answer's <Message> verbs."""
    try:
        root = ElementTree.fromstring(twiml or b"<Response/>")
    except ElementTree.ParseError:
        return []
    texts = []
    for element in root.iter("Message"):
        body = element.find("Body")
        text = (body.text if body is not None else element.text) or ""
        if text.strip():
            texts.append(text.strip())
    return texts


def _handler(emulator: TwilioEmulator) -> type[BaseHTTPRequestHandler]:
    """A request handler bound to one emulator."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "smsgw-twilio-emulator/1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            log.debug("twilio emulator: " + format, *args)

        def _dispatch(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
            try:
                status, payload, content_type = emulator.handle(
                    self.command, parts.path, query, self.headers, body
                )
            except Exception as exc:  # answer, never hang the client
                log.exception("twilio emulator: %s %s failed", self.command, self.path)
                status, payload, content_type = (
                    500,
                    {"code": 20500, "message": repr(exc), "status": 500},
                    None,
                )
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status, HTTPStatus(status).phrase)
            self.send_header("Content-Type", content_type or "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_HEAD = _dispatch

    return Handler
