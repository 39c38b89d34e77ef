"""Webhook payloads shaped like the forms Twilio really POSTs (every field it sends)."""

from __future__ import annotations

import itertools
import secrets

ACCOUNT_SID = "AC" + "0" * 32
OUR_NUMBER = "+15005550006"
PERSON = "+14155550123"
OTHER_PERSON = "+14155550199"
MESSAGING_SERVICE_SID = "MG" + "1" * 32

_counter = itertools.count(1)


def message_sid(prefix: str = "SM") -> str:
    """A fresh, unique sid shaped like Twilio's (SM/MM + 32 hex digits)."""
    return f"{prefix}{secrets.token_hex(12)}{next(_counter):08x}"


def inbound_sms(body: str = "Hello there", *, sid: str | None = None, **overrides: str) -> dict[str, str]:
    """Twilio's inbound message webhook form for a plain SMS from PERSON to OUR_NUMBER."""
    sid = sid or message_sid("SM")
    form = {
        "ToCountry": "US",
        "ToState": "CA",
        "SmsMessageSid": sid,
        "NumMedia": "0",
        "ToCity": "SAN FRANCISCO",
        "FromZip": "94105",
        "SmsSid": sid,
        "FromState": "CA",
        "SmsStatus": "received",
        "FromCity": "SAN FRANCISCO",
        "Body": body,
        "FromCountry": "US",
        "To": OUR_NUMBER,
        "MessagingServiceSid": MESSAGING_SERVICE_SID,
        "ToZip": "94107",
        "NumSegments": "1",
        "ReferralNumMedia": "0",
        "MessageSid": sid,
        "AccountSid": ACCOUNT_SID,
        "From": PERSON,
        "ApiVersion": "2010-04-01",
    }
    form.update(overrides)
    return form


def inbound_mms(body: str, media: list[tuple[str, str]], **overrides: str) -> dict[str, str]:
    """An inbound MMS: NumMedia with MediaUrlN/MediaContentTypeN per attachment (sid MM...)."""
    sid = message_sid("MM")
    form = inbound_sms(body, sid=sid, NumMedia=str(len(media)), **overrides)
    for index, (url, content_type) in enumerate(media):
        form[f"MediaContentType{index}"] = content_type
        form[f"MediaUrl{index}"] = url
    return form


def media_url(name: str) -> str:
    """A media URL in Twilio's form."""
    return f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{message_sid('MM')}/Media/ME{name}"


def status_callback(sid: str, status: str, **overrides: str) -> dict[str, str]:
    """Twilio's message status callback for an outbound message from OUR_NUMBER to PERSON."""
    form = {
        "SmsSid": sid,
        "SmsStatus": status,
        "MessageStatus": status,
        "To": PERSON,
        "MessagingServiceSid": MESSAGING_SERVICE_SID,
        "MessageSid": sid,
        "AccountSid": ACCOUNT_SID,
        "From": OUR_NUMBER,
        "ApiVersion": "2010-04-01",
    }
    form.update(overrides)
    return form


# Inbound texts and what the gateway must make of them:
# (case id, form, expected reply_state, whether a reply job is queued).
_MMS_MEDIA = [
    (media_url("a1"), "image/jpeg"),
    (media_url("b2"), "image/png"),
]

INBOUND_CASES = [
    ("plain-sms", inbound_sms("What time do you open tomorrow?"), "pending", True),
    ("mms-two-media", inbound_mms("Look at these", _MMS_MEDIA), "pending", True),
    ("mms-no-body", inbound_mms("", _MMS_MEDIA[:1]), "pending", True),
    ("emoji", inbound_sms("Thanks 🙏🏽 see you at 5 👍"), "pending", True),
    ("non-gsm", inbound_sms("Привет! Как дела? 你好 — ça va?", NumSegments="2"), "pending", True),
    ("empty-body", inbound_sms(""), "pending", True),
    (
        "unknown-extra-fields",
        inbound_sms(
            "hi",
            AddOns='{"status":"successful","message":null,"code":null,"results":{}}',
            SomeFieldTwilioAddsNextYear="surprise",
            ChannelMetadata="{}",
        ),
        "pending",
        True,
    ),
    ("keyword-with-spaces", inbound_sms("  stop \n"), "none", False),
    ("stop-in-a-sentence", inbound_sms("please don't stop texting me"), "pending", True),
    ("help", inbound_sms("HELP"), "none", False),
    ("info", inbound_sms("info"), "none", False),
    ("advanced-opt-out", inbound_sms("ARRET", OptOutType="STOP"), "none", False),
]

# Twilio's default keyword lists (long codes and toll-free), with the keyword each means.
KEYWORD_CASES = [
    *[
        (word, "STOP")
        for word in ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT")
    ],
    *[(word, "START") for word in ("START", "YES", "UNSTOP")],
    *[(word, "HELP") for word in ("HELP", "INFO")],
]


# --- WhatsApp: the same webhook, `whatsapp:` addresses and WhatsApp's extra fields ------------------

WHATSAPP_OUR = "whatsapp:" + OUR_NUMBER
WHATSAPP_PERSON = "whatsapp:" + PERSON


def inbound_whatsapp(
    body: str = "Hello there", *, sid: str | None = None, **overrides: str
) -> dict[str, str]:
    """Twilio's inbound message webhook form for a WhatsApp text from PERSON to our WhatsApp sender."""
    sid = sid or message_sid("SM")
    form = {
        "SmsMessageSid": sid,
        "NumMedia": "0",
        "ProfileName": "Ana Souza",
        "MessageType": "text",
        "SmsSid": sid,
        "WaId": PERSON.lstrip("+"),
        "SmsStatus": "received",
        "Body": body,
        "To": WHATSAPP_OUR,
        "NumSegments": "1",
        "ReferralNumMedia": "0",
        "MessageSid": sid,
        "AccountSid": ACCOUNT_SID,
        "From": WHATSAPP_PERSON,
        "ApiVersion": "2010-04-01",
    }
    form.update(overrides)
    return form


# (case id, form, the Message.details recorded, a line the model must read for it).
WHATSAPP_CASES = [
    (
        "text",
        inbound_whatsapp("Do you deliver on Sundays?"),
        {"profile_name": "Ana Souza", "wa_id": PERSON.lstrip("+"), "message_type": "text"},
        "Do you deliver on Sundays?",
    ),
    (
        "media",
        inbound_whatsapp(
            "",
            sid=message_sid("MM"),
            NumMedia="1",
            MessageType="image",
            MediaContentType0="image/jpeg",
            MediaUrl0=media_url("wa1"),
        ),
        {"profile_name": "Ana Souza", "wa_id": PERSON.lstrip("+"), "message_type": "image"},
        "[attachment",
    ),
    (
        "button-reply",
        inbound_whatsapp(
            "Yes, confirm",
            MessageType="button",
            ButtonText="Yes, confirm",
            ButtonPayload="confirm_booking_42",
            OriginalRepliedMessageSender=WHATSAPP_OUR,
            OriginalRepliedMessageSid=message_sid("MM"),
        ),
        {
            "profile_name": "Ana Souza",
            "wa_id": PERSON.lstrip("+"),
            "message_type": "button",
            "button_text": "Yes, confirm",
            "button_payload": "confirm_booking_42",
        },
        "[tapped the button: Yes, confirm]",
    ),
    (
        "location",
        inbound_whatsapp(
            "",
            MessageType="location",
            Latitude="37.7879277",
            Longitude="-122.4075989",
            Address="375 Beale St, San Francisco, CA 94105",
            Label="Twilio HQ",
        ),
        {
            "profile_name": "Ana Souza",
            "wa_id": PERSON.lstrip("+"),
            "message_type": "location",
            "latitude": "37.7879277",
            "longitude": "-122.4075989",
            "address": "375 Beale St, San Francisco, CA 94105",
            "label": "Twilio HQ",
        },
        "[shared a location: Twilio HQ, 375 Beale St, San Francisco, CA 94105 (37.7879277, -122.4075989)]",
    ),
    (
        "profile-name-only",
        inbound_whatsapp("hi", ProfileName="Zoë 🌻", MessageType="text"),
        {"profile_name": "Zoë 🌻", "wa_id": PERSON.lstrip("+"), "message_type": "text"},
        "hi",
    ),
]
