"""Twilio number setup: list our numbers and point a number's webhooks at this gateway."""

from __future__ import annotations

from dataclasses import dataclass, field

from peewee import IntegrityError
from twilio.rest import Client

from gateway.config import Settings
from gateway.storage.db import database
from gateway.storage.models import PhoneNumber, utcnow
from gateway.twilio.client import twilio_client

SMS_PATH = "/twilio/sms"
STATUS_PATH = "/twilio/status"


@dataclass
class NumberInfo:
    """One of the account's numbers, with where its SMS webhook points now."""

    sid: str
    phone_number: str
    friendly_name: str | None
    sms_url: str | None
    sms_method: str | None
    status_callback: str | None
    messaging_service_sid: str | None = None
    messaging_service_name: str | None = None
    messaging_service_inbound_url: str | None = None
    messaging_service_status_callback: str | None = None
    uses_number_webhook: bool = False


@dataclass
class ConfigureResult:
    """What `configure_number` changed, or why it changed nothing."""

    number: NumberInfo
    changes: list[tuple[str, str | None, str]] = field(default_factory=list)
    advice: str | None = None


def numbers_client(settings: Settings) -> Client:
    """The Twilio client (its Messaging API on the same origin as the REST API when overridden)."""
    return twilio_client(settings)


def _messaging_services(client: Client) -> dict[str, tuple[str, str, str | None, str | None, bool]]:
    """Map each number's PN sid to (service sid, name, inbound URL, status callback, number's webhook?)."""
    owners: dict[str, tuple[str, str, str | None, str | None, bool]] = {}
    for service in client.messaging.v1.services.list():
        for number in client.messaging.v1.services(service.sid).phone_numbers.list():
            owners[number.sid] = (
                service.sid,
                service.friendly_name,
                service.inbound_request_url,
                service.status_callback,
                bool(service.use_inbound_webhook_on_number),
            )
    return owners


def list_numbers(client: Client, phone_number: str | None = None) -> list[NumberInfo]:
    """The account's incoming numbers (or the one given), with their webhook settings."""
    kwargs = {"phone_number": phone_number} if phone_number else {}
    owners = _messaging_services(client)
    infos = []
    for n in client.incoming_phone_numbers.list(**kwargs):
        info = NumberInfo(
            sid=n.sid,
            phone_number=n.phone_number,
            friendly_name=n.friendly_name,
            sms_url=n.sms_url,
            sms_method=n.sms_method,
            status_callback=n.status_callback,
        )
        if n.sid in owners:
            sid, name, inbound_url, status_url, on_number = owners[n.sid]
            info.messaging_service_sid = sid
            info.messaging_service_name = name
            info.messaging_service_inbound_url = inbound_url
            info.messaging_service_status_callback = status_url
            info.uses_number_webhook = on_number
        infos.append(info)
    return infos


def configure_number(
    client: Client, phone_number: str, base_url: str, *, service: bool = False
) -> ConfigureResult:
    """Point the number's SMS webhook (POST) and status callback at this gateway; register it.

    A number whose Messaging Service decides where its texts go is left alone with advice,
    unless `service`: then the service's inbound and status URLs are set, and the number is
    registered to send through that service (MessagingServiceSid).
    """
    found = list_numbers(client, phone_number)
    if not found:
        raise LookupError(f"{phone_number} is not a number of this Twilio account")
    number = found[0]
    base = base_url.rstrip("/")
    sms_url, status_url = base + SMS_PATH, base + STATUS_PATH
    result = ConfigureResult(number=number)
    if number.messaging_service_sid and service:
        return _configure_service(client, result, sms_url, status_url)
    if number.messaging_service_sid and not number.uses_number_webhook:
        # Twilio sends this number's inbound texts to the service's URL, not the number's.
        result.advice = (
            f"{phone_number} belongs to Messaging Service {number.messaging_service_sid} "
            f"({number.messaging_service_name}), whose Incoming Messages setting decides where texts go "
            f"(now: {number.messaging_service_inbound_url or 'not set'}). In the Twilio console set that "
            f"service's Integration > Incoming Messages to 'Send a webhook' with request URL {sms_url} "
            f"(HTTP POST) and its Delivery Status Callback to {status_url}; or choose 'Defer to sender's "
            f"webhook' and run this command again; or run it with --service to set the service's URLs. "
            f"Nothing was changed."
        )
        return result
    wanted = {"sms_url": sms_url, "sms_method": "POST", "status_callback": status_url}
    current = {
        "sms_url": number.sms_url,
        "sms_method": number.sms_method,
        "status_callback": number.status_callback,
    }
    result.changes = [(k, current[k], v) for k, v in wanted.items() if current[k] != v]
    if result.changes:
        client.incoming_phone_numbers(number.sid).update(
            sms_url=sms_url, sms_method="POST", status_callback=status_url, status_callback_method="POST"
        )
        number.sms_url, number.sms_method, number.status_callback = sms_url, "POST", status_url
    register_number(number.phone_number, number.sid)
    return result


def _configure_service(
    client: Client, result: ConfigureResult, sms_url: str, status_url: str
) -> ConfigureResult:
    """Point the number's Messaging Service at this gateway; the number sends through it."""
    number = result.number
    wanted = {"inbound_request_url": sms_url, "status_callback": status_url}
    current = {
        "inbound_request_url": number.messaging_service_inbound_url,
        "status_callback": number.messaging_service_status_callback,
    }
    result.changes = [(f"service {k}", current[k], v) for k, v in wanted.items() if current[k] != v]
    if result.changes:
        client.messaging.v1.services(number.messaging_service_sid).update(
            inbound_request_url=sms_url, inbound_method="POST", status_callback=status_url
        )
        number.messaging_service_inbound_url, number.messaging_service_status_callback = sms_url, status_url
    row = register_number(number.phone_number, number.sid)
    if row.messaging_service_sid != number.messaging_service_sid:
        PhoneNumber.update(messaging_service_sid=number.messaging_service_sid, updated_at=utcnow()).where(
            PhoneNumber.phone_number == row.phone_number
        ).execute()
    return result


def register_number(phone_number: str, twilio_sid: str | None) -> PhoneNumber:
    """Record the number with the gateway (no agents set: the default agent answers)."""
    row = PhoneNumber.get_or_none(PhoneNumber.phone_number == phone_number)
    if row is None:
        try:
            with database.atomic():
                return PhoneNumber.create(phone_number=phone_number, twilio_sid=twilio_sid)
        except IntegrityError:
            row = PhoneNumber.get(PhoneNumber.phone_number == phone_number)
    if row.twilio_sid != twilio_sid:
        row.twilio_sid = twilio_sid
        row.updated_at = utcnow()
        row.save()
    return row
