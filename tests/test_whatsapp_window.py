"""WhatsApp's 24-hour window on a frozen clock: free-form starts inside it, templates outside it."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from gateway.conversations import outbound, replies
from gateway.errors import PermanentError
from gateway.storage.models import Chat, Message, PhoneNumber, Role, utcnow
from gateway.twilio import channels
from tests.conftest import GATEWAY_API_KEY, post_twilio
from tests.payloads import OUR_NUMBER, PERSON, WHATSAPP_OUR, WHATSAPP_PERSON, inbound_sms, inbound_whatsapp

AUTH = {"Authorization": f"Bearer {GATEWAY_API_KEY}"}
TEMPLATE = "HX" + "b" * 32


@pytest.fixture
def clock(monkeypatch):
    """The window's clock, frozen where the test sets it (`clock.at(datetime)`)."""

    class Clock:
        def at(self, when):
            monkeypatch.setattr(channels, "utcnow", lambda: when)

    return Clock()


@pytest.fixture
def wrote_to_us(client, app):
    """Our number is registered; the person wrote to our WhatsApp sender (now), and that chat ended."""
    PhoneNumber.create(phone_number=OUR_NUMBER)
    form = inbound_whatsapp("Hi, is my order ready?")
    assert post_twilio(client, "/twilio/sms", form).status_code == 200
    message = Message.get(Message.twilio_sid == form["MessageSid"])
    assert client.post(f"/v1/chats/{message.chat_id}/end", headers=AUTH).status_code == 200
    return message.created_at


def start(client, **fields):
    """POST /v1/sms-chats on WhatsApp from our number to the person."""
    body = {"from_number": OUR_NUMBER, "to_number": PERSON, "channel": "whatsapp", **fields}
    return client.post("/v1/sms-chats", json=body, headers=AUTH)


def test_free_form_inside_the_window_is_sent_on_whatsapp(client, settings, fake_twilio, clock, wrote_to_us):
    clock.at(wrote_to_us + timedelta(hours=23, minutes=59))
    response = start(client, message="Your order is ready for pickup.")
    assert response.status_code == 202, response.json
    chat = response.json
    assert (chat["channel"], chat["from_number"], chat["to_number"]) == (
        "whatsapp",
        WHATSAPP_OUR,
        WHATSAPP_PERSON,
    )
    outbound.send_opening(settings, chat["chat_id"])
    sent = fake_twilio.messages[-1]
    assert (sent["From"], sent["To"], sent["Body"]) == (
        WHATSAPP_OUR,
        WHATSAPP_PERSON,
        "Your order is ready for pickup.\nReply STOP to opt out.",  # the first text we start to them
    )


def test_free_form_outside_the_window_is_refused_and_nothing_is_sent(client, fake_twilio, clock, wrote_to_us):
    clock.at(wrote_to_us + timedelta(hours=24, minutes=1))
    chats_before = Chat.select().count()
    response = start(client, message="Your order is ready for pickup.")
    assert response.status_code == 409
    assert response.json["error"]["code"] == "outside_session_window"
    # Without a message the agent would write one: refused just the same.
    assert start(client).json["error"]["code"] == "outside_session_window"
    assert Chat.select().count() == chats_before
    assert fake_twilio.attempts == []


def test_never_written_means_outside_the_window(client, fake_twilio, app):
    PhoneNumber.create(phone_number=OUR_NUMBER)
    response = start(client, message="Hello!")
    assert (response.status_code, response.json["error"]["code"]) == (409, "outside_session_window")
    assert fake_twilio.attempts == []


def test_template_outside_the_window_goes_through_the_content_api(
    client, settings, fake_twilio, clock, wrote_to_us
):
    clock.at(wrote_to_us + timedelta(days=3))
    response = start(
        client,
        from_number=WHATSAPP_OUR,  # prefixed numbers are accepted too
        to_number=WHATSAPP_PERSON,
        content_sid=TEMPLATE,
        content_variables={"1": "Ada", "2": "12:30"},
    )
    assert response.status_code == 202, response.json
    chat_id = response.json["chat_id"]
    assert outbound.send_opening(settings, chat_id) == 1
    sent = fake_twilio.messages[-1]
    assert (sent["From"], sent["To"], sent["ContentSid"]) == (WHATSAPP_OUR, WHATSAPP_PERSON, TEMPLATE)
    assert json.loads(sent["ContentVariables"]) == {"1": "Ada", "2": "12:30"}
    assert not sent["Body"]
    opening = Message.get((Message.chat == chat_id) & (Message.role == Role.AGENT.value))
    assert opening.twilio_sid == sent["sid"]
    assert opening.details == {"content_sid": TEMPLATE, "content_variables": {"1": "Ada", "2": "12:30"}}


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"content_variables": {"1": "Ada"}}, "content_variables"),
        ({"content_sid": TEMPLATE, "message": "hi"}, "content_sid"),
        ({"content_sid": "HX123"}, "content_sid"),
        ({"channel": "sms", "to_number": WHATSAPP_PERSON}, None),
        ({"channel": "fax"}, "channel"),
    ],
)
def test_invalid_whatsapp_starts_are_refused(client, fake_twilio, app, fields, field):
    PhoneNumber.create(phone_number=OUR_NUMBER)
    response = start(client, **fields)
    assert response.status_code == 422, response.json
    if field:
        assert response.json["error"]["field"] == field
    assert fake_twilio.attempts == []


def test_a_late_reply_outside_the_window_is_not_sent(client, settings, fake_model, fake_twilio, clock, app):
    form = inbound_whatsapp("are you open?")
    post_twilio(client, "/twilio/sms", form)
    message = Message.get(Message.twilio_sid == form["MessageSid"])
    clock.at(message.created_at + timedelta(hours=25))  # the reply job ran (or was swept) this late
    with pytest.raises(PermanentError):
        replies.answer_message(settings, message.id)
    stored = Message.get_by_id(message.id)
    assert (stored.reply_state, stored.error_code) == ("failed", "63016")
    assert fake_twilio.attempts == [] and fake_model.requests == []


def test_window_is_per_channel_an_sms_does_not_open_it(client, app):
    PhoneNumber.create(phone_number=OUR_NUMBER)
    now = utcnow()
    assert post_twilio(client, "/twilio/sms", inbound_sms("hi by SMS")).status_code == 200
    assert not channels.session_window_open(WHATSAPP_OUR, WHATSAPP_PERSON, now)
    assert post_twilio(client, "/twilio/sms", inbound_whatsapp("hi")).status_code == 200
    assert channels.session_window_open(WHATSAPP_OUR, WHATSAPP_PERSON, now)
    assert not channels.session_window_open(
        WHATSAPP_OUR, WHATSAPP_PERSON, now + timedelta(hours=24, seconds=1)
    )
