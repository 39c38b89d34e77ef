"""A loopback fake of the parts of Twilio's REST API (2010-04-01) the gateway uses.

Point the real client at it: ``client = twilio.rest.Client(sid, token); client.api.base_url = fake.url``.

Served (all behind HTTP basic auth with the account SID and auth token, like Twilio):
- POST /2010-04-01/Accounts/{AC}/Messages.json            send; 201 + Message resource
- GET  /2010-04-01/Accounts/{AC}/Messages.json            list accepted messages (To, From filters)
- GET  /2010-04-01/Accounts/{AC}/Messages/{SM}.json       fetch a message this fake accepted
- GET  /2010-04-01/Accounts/{AC}/IncomingPhoneNumbers.json list (PhoneNumber, FriendlyName, PageSize, Page)
- GET/POST /2010-04-01/Accounts/{AC}/IncomingPhoneNumbers/{PN}.json  fetch / update
- GET  /2010-04-01/Accounts/{AC}/Messages/{MM}/Media/{ME}  media bytes (``.json``: metadata)

- GET  /v1/Services                                        Messaging Services (messaging.twilio.com)
- GET  /v1/Services/{MG}/PhoneNumbers                      the numbers a service holds

Messaging Services: Twilio's IncomingPhoneNumber resource has no messaging-service field; a number's
membership shows in the Messaging API's Services/{MG}/PhoneNumbers list, as here. Point the client's
messaging domain at the fake too: ``client.messaging.base_url = fake.url``.
"""

from __future__ import annotations

import base64
import hmac
import math
import random
import re
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlencode

from tests.fakes.http import LoopbackServer, Request, Response

API = "/2010-04-01"

# Twilio's own wording for the errors tests script most often (https://www.twilio.com/docs/errors/NNNNN).
ERROR_MESSAGES = {
    20003: "Authenticate",
    20404: "The requested resource was not found",
    20429: "Too Many Requests",
    20500: "Internal Server Error",
    20503: "Service Unavailable",
    21211: "The 'To' number is not a valid phone number.",
    21408: "Permission to send an SMS has not been enabled for the region indicated by the 'To' number",
    21602: "Message body is required.",
    21603: "The 'From' phone number is required.",
    21604: "A 'To' phone number is required.",
    21606: "The 'From' phone number provided is not a valid message-capable Twilio phone number.",
    21610: "Attempt to send to unsubscribed recipient",
    21611: "This 'From' number has exceeded the maximum number of queued messages",
    21614: "'To' number is not a valid mobile number",
    21617: "The concatenated message body exceeds the 1600 character limit.",
    30007: "Message filtered",
}
# Error code a bare HTTP status gets (fail_next_with_status).
STATUS_CODES = {401: 20003, 404: 20404, 429: 20429, 500: 20500, 502: 20500, 503: 20503, 504: 20500}

# GSM 03.38 basic set (one septet each) and its extension table (two septets each).
GSM7_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENDED = set("^{}\\[~]|€\f")


def new_sid(prefix: str) -> str:
    """A Twilio-shaped SID: two letters and 32 hex digits."""
    return prefix + uuid.uuid4().hex


def num_segments(body: str) -> int:
    """How many SMS segments Twilio would bill for `body` (GSM-7 160/153, else UCS-2 70/67)."""
    if all(c in GSM7_BASIC or c in GSM7_EXTENDED for c in body):
        units, single, multi = sum(2 if c in GSM7_EXTENDED else 1 for c in body), 160, 153
    else:
        units, single, multi = len(body.encode("utf-16-le")) // 2, 70, 67
    return 1 if units <= single else math.ceil(units / multi)


def rfc2822_now() -> str:
    """Now, the way Twilio writes dates: 'Thu, 30 Jul 2015 20:12:31 +0000'."""
    return format_datetime(datetime.now(UTC).replace(microsecond=0))


def default_friendly_name(number: str) -> str:
    """Twilio's default friendly name: '(555) 123-4567' for +1 numbers, else the number."""
    m = re.fullmatch(r"\+1(\d{3})(\d{3})(\d{4})", number)
    return f"({m[1]}) {m[2]}-{m[3]}" if m else number


def _snake(name: str) -> str:
    """'SmsUrl' -> 'sms_url': form parameter to resource field."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@dataclass
class _Failure:
    """A scripted error answer."""

    code: int
    status: int
    message: str
    times: int = 1


class FakeTwilio(LoopbackServer):
    """Loopback fake of Twilio's REST API: records sends, scripts failures, serves numbers and media."""

    def __init__(self, account_sid: str, auth_token: str) -> None:
        """An account with these credentials; call start() to listen."""
        super().__init__()
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.latency: float = 0.0  # seconds slept before answering each request
        self.messages: list[dict[str, Any]] = []  # accepted sends only (201), in arrival order
        self.attempts: list[dict[str, Any]] = []  # every Messages POST, accepted or not
        self.numbers: dict[str, dict[str, Any]] = {}  # PN sid -> IncomingPhoneNumber resource
        self.services: dict[str, dict[str, Any]] = {}  # MG sid -> Messaging Service (+ "_numbers")
        self._resources: dict[str, dict[str, Any]] = {}  # SM sid -> Message resource answered
        self._media: dict[str, tuple[str, bytes, str]] = {}  # ME sid -> (content type, bytes, MM sid)
        self._failures: list[_Failure] = []
        self._fail_to: dict[str, _Failure] = {}
        self._cond = threading.Condition()
        # WhatsApp typing indicators (Messaging v2): every request, and how to answer them.
        self.typing: list[dict[str, Any]] = []
        self.typing_failure: int | None = None  # answer this HTTP status (Twilio's error JSON)
        self.typing_latency: float = 0.0  # seconds slept before answering a typing indicator
        # Random faults (fault tests): this share of sends fails with 429 or a 5xx.
        self.fault_rate = 0.0
        self.faults_injected = 0
        self._rng = random.Random(9)

    # --- scripting -------------------------------------------------------------------------------

    def fail_next(
        self, code: int = 21610, status: int = 400, message: str | None = None, times: int = 1
    ) -> None:
        """Answer the next `times` message sends with Twilio error `code` and HTTP `status`."""
        msg = message or ERROR_MESSAGES.get(code, f"Error {code}")
        with self._cond:
            self._failures.append(_Failure(code, status, msg, times))

    def fail_next_with_status(
        self, status: int = 500, code: int | None = None, message: str | None = None, times: int = 1
    ) -> None:
        """Answer the next `times` sends with HTTP `status` (429 -> code 20429, 5xx -> 20500/20503)."""
        code = code if code is not None else STATUS_CODES.get(status, 20500)
        self.fail_next(code=code, status=status, message=message, times=times)

    def fail_to(self, number: str, code: int = 21610, status: int = 400, message: str | None = None) -> None:
        """Answer every send to `number` with this error until reset() or stop_failing_to()."""
        msg = message or ERROR_MESSAGES.get(code, f"Error {code}")
        with self._cond:
            self._fail_to[number] = _Failure(code, status, msg, times=-1)

    def inject_faults(self, rate: float, seed: int = 9) -> None:
        """Fail this share of sends at random with 429, 500 or 503 (nothing is sent)."""
        with self._cond:
            self.fault_rate, self._rng = rate, random.Random(seed)

    def stop_failing_to(self, number: str) -> None:
        """Let sends to `number` succeed again."""
        with self._cond:
            self._fail_to.pop(number, None)

    def add_number(
        self,
        phone_number: str,
        sms_url: str | None = None,
        messaging_service_sid: str | None = None,
        *,
        status_callback: str | None = None,
        friendly_name: str | None = None,
    ) -> str:
        """Provision an IncomingPhoneNumber on the account; returns its PN sid."""
        sid = new_sid("PN")
        now = rfc2822_now()
        uri = f"{API}/Accounts/{self.account_sid}/IncomingPhoneNumbers/{sid}.json"
        resource = {
            "account_sid": self.account_sid,
            "address_requirements": "none",
            "address_sid": None,
            "api_version": "2010-04-01",
            "beta": False,
            "bundle_sid": None,
            "capabilities": {"fax": False, "mms": True, "sms": True, "voice": True},
            "date_created": now,
            "date_updated": now,
            "emergency_address_sid": None,
            "emergency_address_status": "unregistered",
            "emergency_status": "Inactive",
            "friendly_name": friendly_name or default_friendly_name(phone_number),
            "identity_sid": None,
            "origin": "twilio",
            "phone_number": phone_number,
            "sid": sid,
            "sms_application_sid": "",
            "sms_fallback_method": "POST",
            "sms_fallback_url": "",
            "sms_method": "POST",
            "sms_url": sms_url or "",
            "status": "in-use",
            "status_callback": status_callback or "",
            "status_callback_method": "POST",
            "subresource_uris": {
                "assigned_add_ons": uri.replace(".json", "/AssignedAddOns.json"),
            },
            "trunk_sid": None,
            "type": "local",
            "uri": uri,
            "voice_application_sid": "",
            "voice_caller_id_lookup": False,
            "voice_fallback_method": "POST",
            "voice_fallback_url": "",
            "voice_method": "POST",
            "voice_receive_mode": "voice",
            "voice_url": "",
        }
        with self._cond:
            self.numbers[sid] = resource
            if messaging_service_sid:
                self.services[messaging_service_sid]["_numbers"].append(sid)
        return sid

    def add_messaging_service(
        self,
        friendly_name: str,
        inbound_request_url: str | None = None,
        use_inbound_webhook_on_number: bool = False,
    ) -> str:
        """Create a Messaging Service; pass its MG sid to add_number(messaging_service_sid=...)."""
        sid = new_sid("MG")
        with self._cond:
            self.services[sid] = {
                "account_sid": self.account_sid,
                "sid": sid,
                "friendly_name": friendly_name,
                "inbound_request_url": inbound_request_url,
                "inbound_method": "POST",
                "use_inbound_webhook_on_number": use_inbound_webhook_on_number,
                "status_callback": None,
                "date_created": datetime.now(UTC).isoformat(),
                "date_updated": datetime.now(UTC).isoformat(),
                "url": f"https://messaging.twilio.com/v1/Services/{sid}",
                "links": {},
                "_numbers": [],
            }
        return sid

    def add_media(self, content_type: str, data: bytes, message_sid: str | None = None) -> str:
        """Serve `data` as a Twilio media URL (basic auth required); returns the absolute URL."""
        media_sid = new_sid("ME")
        message_sid = message_sid or new_sid("MM")
        with self._cond:
            self._media[media_sid] = (content_type, bytes(data), message_sid)
        return f"{self.url}{API}/Accounts/{self.account_sid}/Messages/{message_sid}/Media/{media_sid}"

    # --- inspection ------------------------------------------------------------------------------

    def wait_for_messages(self, n: int, timeout: float = 30) -> list[dict[str, Any]]:
        """Block until at least `n` sends were accepted; returns them (AssertionError on timeout).

        30 s: it returns as soon as they arrive, and on a loaded machine a worker's first job can
        take over 10 s (the worker's start, SQLite's writer queue)."""
        with self._cond:
            self.wait_until(self._cond, lambda: len(self.messages) >= n, timeout, f"{n} Twilio messages")
            return list(self.messages)

    def messages_to(self, number: str) -> list[dict[str, Any]]:
        """Accepted sends addressed to `number`."""
        with self._cond:
            return [m for m in self.messages if m["To"] == number]

    def reset(self) -> None:
        """Forget traffic and scripting (messages, attempts, failures, latency); keep numbers and media."""
        with self._cond:
            self.messages.clear()
            self.typing.clear()
            self.typing_failure, self.typing_latency = None, 0.0
            self.attempts.clear()
            self._resources.clear()
            self._failures.clear()
            self._fail_to.clear()
            self.latency = 0.0
            self.fault_rate = 0.0

    # --- HTTP ------------------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        """Route one request the way api.twilio.com would."""
        self.sleep(self.latency)
        if not self._authorized(request):
            return self._error(401, 20003, "Authenticate", {"WWW-Authenticate": 'Basic realm="Twilio API"'})
        if request.path.startswith("/v1/Services"):
            return self._messaging(request)
        if request.path == "/v2/Indicators/Typing.json":
            return self._typing(request)
        m = re.fullmatch(rf"{API}/Accounts/(\w+)(/.*)", request.path)
        if not m:
            return self._not_found(request)
        if m[1] != self.account_sid:
            # Twilio answers a foreign account path with 20003 under the caller's credentials.
            return self._error(403, 20003, "Authenticate")
        rest = m[2]
        routes = (
            (r"/Messages\.json", {"POST": self._create_message, "GET": self._list_messages}),
            (r"/Messages/(SM\w+|MM\w+)\.json", {"GET": self._fetch_message}),
            (r"/Messages/(\w+)/Media/(ME\w+?)(\.json)?", {"GET": self._fetch_media}),
            (r"/IncomingPhoneNumbers\.json", {"GET": self._list_numbers}),
            (
                r"/IncomingPhoneNumbers/(PN\w+)\.json",
                {"GET": self._fetch_number, "POST": self._update_number},
            ),
        )
        for pattern, methods in routes:
            match = re.fullmatch(pattern, rest)
            if match:
                handler = methods.get(request.method)
                if handler is None:
                    return self._error(405, 20004, "Method not allowed")
                return handler(request, *match.groups())
        return self._not_found(request)

    def _authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode("utf-8").partition(":")
        except ValueError:
            return False
        return hmac.compare_digest(user, self.account_sid) and hmac.compare_digest(password, self.auth_token)

    def _error(self, status: int, code: int, message: str, headers: dict[str, str] | None = None) -> Response:
        # The legacy shape the twilio client turns into TwilioRestException(.status, .code).
        payload = {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        }
        return Response.json(status, payload, headers)

    def _not_found(self, request: Request) -> Response:
        return self._error(404, 20404, f"The requested resource {request.path} was not found")

    def _scripted_failure(self, to: str) -> _Failure | None:
        with self._cond:
            if to in self._fail_to:
                return self._fail_to[to]
            if self._failures:
                failure = self._failures[0]
                failure.times -= 1
                if failure.times <= 0:
                    self._failures.pop(0)
                return failure
            if self.fault_rate > 0 and self._rng.random() < self.fault_rate:
                self.faults_injected += 1
                status = self._rng.choice((429, 500, 503))
                return _Failure(STATUS_CODES[status], status, ERROR_MESSAGES[STATUS_CODES[status]])
        return None

    def _create_message(self, request: Request) -> Response:
        form = request.form()
        record: dict[str, Any] = {k: v[0] for k, v in form.items()}
        record.update(
            {
                "From": form.get("From", [None])[0],
                "To": form.get("To", [None])[0],
                "Body": form.get("Body", [None])[0],
                "MediaUrl": form.get("MediaUrl", []),
                "StatusCallback": form.get("StatusCallback", [None])[0],
                "MessagingServiceSid": form.get("MessagingServiceSid", [None])[0],
                "received_at": time.monotonic(),
            }
        )
        error = self._validate(record) or self._scripted_failure(record["To"] or "")
        if error is not None:
            record["error"] = {"code": error.code, "status": error.status, "message": error.message}
            with self._cond:
                self.attempts.append(record)
                self._cond.notify_all()
            return self._error(error.status, error.code, error.message)

        sid = new_sid("MM" if record["MediaUrl"] else "SM")
        now = rfc2822_now()
        body = record["Body"] or ""
        uri = f"{API}/Accounts/{self.account_sid}/Messages/{sid}.json"
        resource = {
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": body,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": record["From"],
            "messaging_service_sid": record["MessagingServiceSid"],
            "num_media": str(len(record["MediaUrl"])),
            "num_segments": str(num_segments(body)) if body else "1",
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            # Sent through a Messaging Service without a From, Twilio first answers "accepted".
            "status": "accepted" if record["MessagingServiceSid"] and not record["From"] else "queued",
            "subresource_uris": {
                "media": uri.replace(".json", "/Media.json"),
                "feedback": uri.replace(".json", "/Feedback.json"),
            },
            "to": record["To"],
            "uri": uri,
        }
        record["sid"] = sid
        record["status"] = resource["status"]
        with self._cond:
            self._resources[sid] = resource
            self.attempts.append(record)
            self.messages.append(record)
            self._cond.notify_all()
        return Response.json(201, resource)

    def _validate(self, record: dict[str, Any]) -> _Failure | None:
        """The request checks Twilio makes before accepting a message."""

        def fail(code: int) -> _Failure:
            return _Failure(code, 400, ERROR_MESSAGES[code])

        if not record["To"]:
            return fail(21604)
        if not record["From"] and not record["MessagingServiceSid"]:
            return fail(21603)
        if not record["Body"] and not record["MediaUrl"] and not record.get("ContentSid"):
            return fail(21602)
        if record["Body"] and len(record["Body"]) > 1600:
            return fail(21617)
        return None

    def _list_messages(self, request: Request) -> Response:
        """Messages this fake accepted, newest first, filtered by To/From (one page, Twilio's shape)."""
        q = {k: v[0] for k, v in request.query.items()}
        with self._cond:
            found = [
                r
                for r in reversed(self._resources.values())
                if (not q.get("To") or r["to"] == q["To"]) and (not q.get("From") or r["from"] == q["From"])
            ]
        page_size = max(1, min(int(q.get("PageSize") or 50), 1000))
        base = f"{API}/Accounts/{self.account_sid}/Messages.json"
        payload = {
            "messages": found[:page_size],
            "end": max(min(len(found), page_size) - 1, 0),
            "first_page_uri": f"{base}?PageSize={page_size}&Page=0",
            "next_page_uri": None,
            "page": 0,
            "page_size": page_size,
            "previous_page_uri": None,
            "start": 0,
            "uri": f"{base}?PageSize={page_size}&Page=0",
        }
        return Response.json(200, payload)

    def _fetch_message(self, request: Request, sid: str) -> Response:
        with self._cond:
            resource = self._resources.get(sid)
        return Response.json(200, resource) if resource else self._not_found(request)

    def _fetch_media(
        self, request: Request, message_sid: str, media_sid: str, as_json: str | None
    ) -> Response:
        with self._cond:
            media = self._media.get(media_sid)
        if media is None or media[2] != message_sid:
            return self._not_found(request)
        content_type, data, _ = media
        if as_json:
            now = rfc2822_now()
            return Response.json(
                200,
                {
                    "account_sid": self.account_sid,
                    "content_type": content_type,
                    "date_created": now,
                    "date_updated": now,
                    "parent_sid": message_sid,
                    "sid": media_sid,
                    "uri": request.path,
                },
            )
        return Response(200, data, content_type)

    def _list_numbers(self, request: Request) -> Response:
        q = {k: v[0] for k, v in request.query.items()}
        with self._cond:
            numbers = list(self.numbers.values())
        # Twilio matches PhoneNumber and FriendlyName as patterns that may be partial.
        if q.get("PhoneNumber"):
            numbers = [n for n in numbers if q["PhoneNumber"] in n["phone_number"]]
        if q.get("FriendlyName"):
            numbers = [n for n in numbers if q["FriendlyName"] in n["friendly_name"]]
        page_size = max(1, min(int(q.get("PageSize") or 50), 1000))
        page = max(0, int(q.get("Page") or 0))
        start = page * page_size
        chunk = numbers[start : start + page_size]
        base = f"{API}/Accounts/{self.account_sid}/IncomingPhoneNumbers.json"
        filters = {k: q[k] for k in ("PhoneNumber", "FriendlyName") if q.get(k)}

        def page_uri(p: int) -> str:
            return f"{base}?{urlencode({**filters, 'PageSize': page_size, 'Page': p})}"

        payload = {
            "end": start + max(len(chunk) - 1, 0),
            "first_page_uri": page_uri(0),
            "incoming_phone_numbers": chunk,
            "next_page_uri": page_uri(page + 1) if start + page_size < len(numbers) else None,
            "page": page,
            "page_size": page_size,
            "previous_page_uri": page_uri(page - 1) if page > 0 else None,
            "start": start,
            "uri": page_uri(page),
        }
        return Response.json(200, payload)

    def _messaging(self, request: Request) -> Response:
        """The Messaging API's Services and their PhoneNumbers lists (one page, v1 paging shape)."""
        update = re.fullmatch(r"/v1/Services/(MG\w+)", request.path)
        if update and request.method == "POST":
            return self._update_service(request, update[1])
        if request.method != "GET":
            return self._error(405, 20004, "Method not allowed")
        with self._cond:
            if request.path == "/v1/Services":
                key = "services"
                items = [{k: v for k, v in s.items() if k != "_numbers"} for s in self.services.values()]
            else:
                m = re.fullmatch(r"/v1/Services/(MG\w+)/PhoneNumbers", request.path)
                service = self.services.get(m[1]) if m else None
                if service is None:
                    return self._not_found(request)
                key = "phone_numbers"
                items = [
                    {
                        "sid": pn,
                        "account_sid": self.account_sid,
                        "service_sid": service["sid"],
                        "phone_number": self.numbers[pn]["phone_number"],
                        "country_code": "US",
                        "capabilities": ["SMS", "MMS"],
                        "url": f"https://messaging.twilio.com/v1/Services/{service['sid']}/PhoneNumbers/{pn}",
                    }
                    for pn in service["_numbers"]
                ]
        url = f"https://messaging.twilio.com{request.path}?PageSize=50&Page=0"
        meta = {
            "page": 0,
            "page_size": 50,
            "first_page_url": url,
            "previous_page_url": None,
            "next_page_url": None,
            "url": url,
            "key": key,
        }
        return Response.json(200, {key: items, "meta": meta})

    def _update_service(self, request: Request, sid: str) -> Response:
        """POST /v1/Services/{sid}: set the service's fields (InboundRequestUrl, StatusCallback, ...)."""
        form = request.form()
        with self._cond:
            service = self.services.get(sid)
            if service is None:
                return self._not_found(request)
            for name, values in form.items():
                key = _snake(name)
                if key in service and key not in ("sid", "account_sid", "url", "_numbers"):
                    service[key] = values[0]
            service["date_updated"] = datetime.now(UTC).isoformat()
            snapshot = {k: v for k, v in service.items() if k != "_numbers"}
        return Response.json(200, snapshot)

    def _typing(self, request: Request) -> Response:
        """Messaging v2's typing indicator: channel=whatsapp and the inbound message's sid."""
        if request.method != "POST":
            return self._error(405, 20004, "Method not allowed")
        form = request.form()
        record = {k: v[0] for k, v in form.items()}
        record["received_at"] = time.monotonic()
        with self._cond:
            self.typing.append(record)
            failure, latency = self.typing_failure, self.typing_latency
            self._cond.notify_all()
        self.sleep(latency)
        if failure is not None:
            return self._error(failure, 20500, "Internal Server Error")
        if record.get("channel") != "whatsapp" or not re.fullmatch(
            r"(SM|MM)\w+", record.get("messageId", "")
        ):
            return self._error(400, 21211, "channel must be whatsapp and messageId a message sid")
        return Response.json(200, {"success": True})

    def _fetch_number(self, request: Request, sid: str) -> Response:
        with self._cond:
            resource = self.numbers.get(sid)
        return Response.json(200, resource) if resource else self._not_found(request)

    def _update_number(self, request: Request, sid: str) -> Response:
        form = request.form()
        with self._cond:
            resource = self.numbers.get(sid)
            if resource is None:
                return self._not_found(request)
            for name, values in form.items():
                key = _snake(name)
                if key not in resource or key in ("sid", "account_sid", "uri", "phone_number"):
                    continue  # Twilio ignores parameters it does not know
                value: Any = values[0]
                if isinstance(resource[key], bool):
                    value = value.lower() == "true"
                resource[key] = value
            resource["date_updated"] = rfc2822_now()
            snapshot = dict(resource)
        return Response.json(200, snapshot)
