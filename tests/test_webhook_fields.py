"""Webhook fields are cleaned or refused alike on SQLite and PostgreSQL: a 400 that says why, never a 500."""

from __future__ import annotations

import pytest

from gateway.storage.models import Chat, Contact, Message
from tests.conftest import post_twilio
from tests.payloads import OUR_NUMBER, PERSON, inbound_mms, inbound_sms, status_callback
from tests.test_webhook_status import outbound  # noqa: F401  (fixture)

SMS = "/twilio/sms"
STATUS = "/twilio/status"


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("From", "+1415\x005550123", "control characters"),
        ("To", "+1500\x00555000", "control characters"),
        ("MessageSid", "SM\x00" + "a" * 32, "MessageSid"),
        ("From", "+1" + "4" * 40, "longer than"),
        ("From", "14155550123", "starts with +"),
        ("From", "<script>", "not an E.164 number"),
        ("NumMedia", "1e9", "NumMedia"),
    ],
)
def test_malformed_sms_webhook_is_a_readable_400(client, field, value, reason):
    """A field Twilio would never send gets a 400 naming it, and nothing is recorded."""
    form = inbound_sms("Hello")
    form[field] = value
    if field == "MessageSid":
        form["SmsSid"] = form["SmsMessageSid"] = value
    response = post_twilio(client, SMS, form)
    assert response.status_code == 400
    assert reason in response.get_data(as_text=True)
    assert Message.select().count() == 0


def test_control_characters_are_dropped_from_text(client):
    """NUL and other control characters leave Body, media URLs and content types; tabs and newlines stay."""
    form = inbound_mms(
        "Hi\x00 there\x07\r\n\tbye\x1b",
        [("https://api.twilio.com/2010-04-01/Media/ME1\x00x", "image/jpeg\x00")],
        OptOutType="\x00",
    )
    response = post_twilio(client, SMS, form)
    assert response.status_code == 200, response.get_data(as_text=True)
    message = Message.get(Message.twilio_sid == form["MessageSid"])
    assert message.content == "Hi there\r\n\tbye"
    url = "https://api.twilio.com/2010-04-01/Media/ME1x"
    assert message.media == [{"url": url, "content_type": "image/jpeg"}]
    assert message.truncated is False


def test_a_body_beyond_twilios_limit_is_recorded_truncated(client):
    """A Body longer than 1600 characters is stored cut to 1600 and flagged, and answered as one text."""
    form = inbound_sms("x" * 20_000)
    response = post_twilio(client, SMS, form)
    assert response.status_code == 200
    message = Message.get(Message.twilio_sid == form["MessageSid"])
    assert (len(message.content), message.truncated) == (1600, True)


@pytest.mark.parametrize(
    "sender",
    ["whatsapp:+14155550123", "12345", "MyBank", "+447700900123"],
    ids=["whatsapp", "short-code", "alphanumeric", "e164"],
)
def test_every_sender_form_twilio_uses_is_recorded(client, sender):
    """E.164, short codes, alphanumeric sender ids and whatsapp: addresses are accepted as sent."""
    form = inbound_sms("Hello", From=sender)
    response = post_twilio(client, SMS, form)
    assert response.status_code == 200, response.get_data(as_text=True)
    message = Message.get(Message.twilio_sid == form["MessageSid"])
    assert message.from_number == sender
    assert Chat.get_by_id(message.chat_id).to_number == sender
    if sender.startswith(("+", "whatsapp:")):
        assert message.reply_state == "pending"
    else:  # no SMS reply can reach it: recorded, not answered, and it says why
        assert message.reply_state == "none"
        assert "phone numbers and WhatsApp" in message.error_message


def test_whatsapp_on_both_sides_is_recorded(client):
    """A WhatsApp message (both addresses whatsapp:) fits the chat's pair key."""
    form = inbound_sms("Hola", From="whatsapp:+14155550123", To="whatsapp:+15005550006")
    assert post_twilio(client, SMS, form).status_code == 200
    chat = Chat.get(Chat.to_number == "whatsapp:+14155550123")
    assert chat.ongoing_pair == "whatsapp:+15005550006|whatsapp:+14155550123"


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("MessageSid", "SM\x00abc", "MessageSid"),
        ("From", "+1500\x00555", "control characters"),
        ("To", "x" * 40, "longer than"),
        ("ErrorCode", "21610\x00", "ErrorCode"),
    ],
)
def test_malformed_status_callback_is_a_readable_400(client, outbound, field, value, reason):  # noqa: F811
    """A status callback field Twilio would never send gets a 400 naming it; the message is untouched."""
    form = status_callback(outbound.twilio_sid, "delivered")
    form[field] = value
    if field == "MessageSid":
        form["SmsSid"] = value
    response = post_twilio(client, STATUS, form)
    assert response.status_code == 400
    assert reason in response.get_data(as_text=True)
    assert Message.get_by_id(outbound.id).status == "queued"


def test_status_error_message_is_cleaned(client, outbound):  # noqa: F811
    """A NUL in ErrorMessage is dropped, the rest recorded."""
    form = status_callback(outbound.twilio_sid, "failed", ErrorCode="30008", ErrorMessage="Unknown\x00 error")
    assert post_twilio(client, STATUS, form).status_code == 200
    stored = Message.get_by_id(outbound.id)
    assert (stored.status, stored.error_code, stored.error_message) == ("failed", "30008", "Unknown error")


def test_21610_from_a_long_sender_address(client, outbound):  # noqa: F811
    """A 21610 callback whose From is longer than a phone number (a whatsapp: address) records the opt-out."""
    ours = "whatsapp:+15005550006"
    form = status_callback(outbound.twilio_sid, "failed", ErrorCode="21610", From=ours, To=PERSON)
    assert post_twilio(client, STATUS, form).status_code == 200
    assert Contact.get((Contact.our_number == ours) & (Contact.phone_number == PERSON)).opted_out is True


def test_21610_with_a_forged_long_from_is_refused(client, outbound):  # noqa: F811
    """A From of 40 characters on a 21610 callback is a 400, not a database error."""
    form = status_callback(outbound.twilio_sid, "failed", ErrorCode="21610", From="+1" + "5" * 38)
    response = post_twilio(client, STATUS, form)
    assert response.status_code == 400
    assert Contact.select().where(Contact.our_number == OUR_NUMBER).count() == 0
