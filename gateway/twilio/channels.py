"""Channels through the one Twilio edge: SMS numbers and `whatsapp:` addresses, and WhatsApp's extras.

Twilio delivers WhatsApp through the same Messages webhook and API as SMS; only the addresses
differ (`whatsapp:+14155550123`). A chat keeps the addresses as Twilio sends them, so a
WhatsApp conversation and an SMS conversation with the same person are separate chats, and a
reply goes back from the address the person wrote to. Our numbers are registered (PhoneNumber)
as plain E.164: `bare_number` is the row a `whatsapp:` address belongs to.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from gateway.errors import PermanentError
from gateway.storage.models import Channel, Message, Role, utcnow
from gateway.twilio import fields

WHATSAPP_PREFIX = "whatsapp:"
# A free-form WhatsApp message may be sent only this long after the person's last message.
SESSION_WINDOW_HOURS = 24
# The API's error code for a free-form WhatsApp start refused outside that window.
OUTSIDE_SESSION_WINDOW = "outside_session_window"
# What a reply refused outside the window records as its error_code: Twilio's own code for a
# free-form WhatsApp message outside the window (63016), so it reads like Twilio's refusal.
OUTSIDE_WINDOW_ERROR = "63016"

# WhatsApp's extra inbound webhook fields -> Message.details keys (kept when present).
WHATSAPP_FIELDS = {
    "ProfileName": "profile_name",
    "WaId": "wa_id",
    "ButtonText": "button_text",
    "ButtonPayload": "button_payload",
    "Latitude": "latitude",
    "Longitude": "longitude",
    "Address": "address",
    "Label": "label",
    "MessageType": "message_type",
}
MAX_DETAIL_CHARS = 1000


def channel_of(address: str | None) -> Channel:
    """The channel an address belongs to: `whatsapp:` addresses are WhatsApp, the rest SMS."""
    return Channel.WHATSAPP if (address or "").lower().startswith(WHATSAPP_PREFIX) else Channel.SMS


def bare_number(address: str) -> str:
    """The phone number of an address, without a channel prefix."""
    return address[len(WHATSAPP_PREFIX) :] if channel_of(address) is Channel.WHATSAPP else address


def address_for(channel: Channel | str, number: str) -> str:
    """The address of `number` on `channel` (a number already prefixed is kept as it is)."""
    number = bare_number(number)
    return WHATSAPP_PREFIX + number if Channel(channel) is Channel.WHATSAPP else number


def session_window_open(our_address: str, their_address: str, now: datetime | None = None) -> bool:
    """True when the person wrote to this sender within WhatsApp's 24-hour customer service window."""
    since = (now or utcnow()) - timedelta(hours=SESSION_WINDOW_HOURS)
    return (
        Message.select(Message.id)
        .where(
            (Message.role == Role.USER.value)
            & (Message.from_number == their_address)
            & (Message.to_number == our_address)
            & (Message.created_at >= since)
        )
        .exists()
    )


def may_send_free_form(
    channel: str, our_address: str, their_address: str, now: datetime | None = None
) -> bool:
    """False only on WhatsApp with the window closed: no free-form message may go then (templates may)."""
    return Channel(channel) is not Channel.WHATSAPP or session_window_open(our_address, their_address, now)


def outside_window_error(what: str = "The message") -> PermanentError:
    """Why a free-form WhatsApp message is not sent outside the window, with Twilio's code for it."""
    return PermanentError(
        f"{what} was not sent: more than {SESSION_WINDOW_HOURS} hours passed since the person's last "
        "WhatsApp message, and WhatsApp then allows only an approved template (content_sid).",
        OUTSIDE_WINDOW_ERROR,
    )


def whatsapp_details(form: Mapping[str, str]) -> dict[str, str] | None:
    """WhatsApp's extra webhook fields, cleaned, under our names; None when there are none."""
    details = {}
    for name, key in WHATSAPP_FIELDS.items():
        value, _ = fields.clean_text(form.get(name), MAX_DETAIL_CHARS)
        value = value.strip()
        if value:
            details[key] = value
    return details or None


def describe_details(details: Mapping[str, Any] | None) -> list[str]:
    """What the model should know of a WhatsApp message beyond its text, as lines of words."""
    if not details:
        return []
    lines = []
    if details.get("content_sid"):
        variables = details.get("content_variables") or {}
        shown = ", ".join(f"{{{{{k}}}}} = {v}" for k, v in variables.items())
        lines.append(
            f"[sent the approved template {details['content_sid']}" + (f" with {shown}]" if shown else "]")
        )
    if details.get("button_text"):
        lines.append(f"[tapped the button: {details['button_text']}]")
    if details.get("latitude") and details.get("longitude"):
        place = ", ".join(str(details[k]) for k in ("label", "address") if details.get(k))
        where = f"{details['latitude']}, {details['longitude']}"
        lines.append(f"[shared a location: {place} ({where})]" if place else f"[shared a location: {where}]")
    return lines
