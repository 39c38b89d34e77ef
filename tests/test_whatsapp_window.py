"""WhatsApp's 24-hour window on a frozen clock: free-form starts inside it, templates outside it."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from gateway.conversations import lifecycle, outbound, replies
from gateway.errors import PermanentError
from gateway.storage.models import Agent, Chat, Message, PhoneNumber, Role, utcnow
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


# Every other free-form WhatsApp send respects the window too: openings sent later, operator
# texts, closing texts and notices. Nothing reaches the fake Twilio outside it.


def test_an_opening_whose_time_came_after_the_window_closed_is_not_sent(
    client, settings, fake_twilio, clock, wrote_to_us
):
    clock.at(wrote_to_us + timedelta(hours=23))
    response = start(client, message="Your order is ready for pickup.")
    assert response.status_code == 202, response.json
    chat_id = response.json["chat_id"]
    # The opening waited (the agent's sending hours, a late job) until the window had closed.
    clock.at(wrote_to_us + timedelta(hours=24, minutes=5))
    assert outbound.send_opening(settings, chat_id) == 0
    assert fake_twilio.attempts == []
    chat = client.get(f"/v1/chats/{chat_id}", headers=AUTH).json
    assert (chat["chat_status"], chat["end_reason"]) == ("error", "opening_failed")
    [opening] = chat["messages"]
    assert (opening["status"], opening["error_code"]) == ("failed", "63016")
    reason = Message.get(Message.chat == chat_id).error_message  # the chat's one message
    assert "24 hours" in reason and "template" in reason
    # The chat ended, so the pair is free for a template start (and the sweep leaves it alone).
    assert start(client, content_sid=TEMPLATE).status_code == 202


def test_an_agent_written_opening_after_the_window_closed_is_neither_written_nor_sent(
    client, settings, fake_model, fake_twilio, clock, wrote_to_us
):
    clock.at(wrote_to_us + timedelta(hours=1))
    chat_id = start(client).json["chat_id"]
    clock.at(wrote_to_us + timedelta(days=2))
    assert outbound.send_opening(settings, chat_id) == 0
    assert fake_model.requests == [] and fake_twilio.attempts == []
    chat = Chat.get_by_id(chat_id)
    assert (chat.chat_status, chat.end_reason) == ("error", "opening_failed")
    [notice] = Message.select().where(Message.chat == chat_id)
    assert (notice.kind, notice.status, notice.error_code) == ("notice", "failed", "63016")
    assert "24 hours" in notice.error_message


def test_a_template_opening_is_sent_however_late(client, settings, fake_twilio, clock, wrote_to_us):
    clock.at(wrote_to_us + timedelta(days=2))
    chat_id = start(client, content_sid=TEMPLATE).json["chat_id"]
    clock.at(wrote_to_us + timedelta(days=9))
    assert outbound.send_opening(settings, chat_id) == 1
    assert fake_twilio.messages[-1]["ContentSid"] == TEMPLATE


@pytest.fixture
def held_whatsapp_chat(client, app):
    """An ongoing WhatsApp chat (the person wrote now), taken over by an operator; its chat id."""
    PhoneNumber.create(phone_number=OUR_NUMBER)
    form = inbound_whatsapp("Can a human help me?")
    assert post_twilio(client, "/twilio/sms", form).status_code == 200
    message = Message.get(Message.twilio_sid == form["MessageSid"])
    assert client.post(f"/v1/chats/{message.chat_id}/takeover", headers=AUTH).status_code == 200
    return message.chat_id, message.created_at


def operator_text(client, chat_id, text="Hi, Sam here from the shop."):
    """POST /v1/chats/{chat_id}/messages."""
    return client.post(f"/v1/chats/{chat_id}/messages", json={"text": text}, headers=AUTH)


def test_an_operator_text_outside_the_window_is_refused_up_front(
    client, fake_twilio, clock, held_whatsapp_chat
):
    chat_id, wrote = held_whatsapp_chat
    clock.at(wrote + timedelta(hours=23, minutes=59))
    assert operator_text(client, chat_id).status_code == 202  # inside: queued

    clock.at(wrote + timedelta(hours=24, minutes=1))
    stored = Message.select().where(Message.chat == chat_id).count()
    response = operator_text(client, chat_id, "Are you still there?")
    assert response.status_code == 409
    assert response.json["error"]["code"] == "outside_session_window"
    assert "24 hours" in response.json["error"]["message"]
    assert Message.select().where(Message.chat == chat_id).count() == stored  # nothing stored
    assert fake_twilio.attempts == []


def test_the_console_says_why_an_operator_text_is_refused(client, fake_twilio, clock, held_whatsapp_chat):
    from tests.test_console import csrf_from, sign_in

    chat_id, wrote = held_whatsapp_chat
    clock.at(wrote + timedelta(days=2))
    sign_in(client)
    token = csrf_from(client.get(f"/console/chats/{chat_id}").get_data(as_text=True))
    page = client.post(
        f"/console/chats/{chat_id}/reply",
        data={"text": "Are you still there?", "csrf_token": token},
        follow_redirects=True,
    ).get_data(as_text=True)
    assert f"{PERSON} has not written on WhatsApp in the last 24 hours" in page
    assert "only an approved template" in page
    assert not Message.select().where((Message.chat == chat_id) & (Message.kind == "operator")).exists()
    assert fake_twilio.attempts == []


def test_an_operator_text_whose_send_came_after_the_window_closed_fails_with_63016(
    client, settings, fake_twilio, clock, held_whatsapp_chat
):
    from gateway.conversations import operator

    chat_id, wrote = held_whatsapp_chat
    clock.at(wrote + timedelta(hours=23, minutes=59))
    assert operator_text(client, chat_id).status_code == 202
    clock.at(wrote + timedelta(hours=24, minutes=1))  # the job ran late (Redis was down, say)
    with pytest.raises(PermanentError) as raised:
        operator.send_operator_parts(settings, chat_id)
    assert raised.value.code == "63016"
    part = Message.get((Message.chat == chat_id) & (Message.kind == "operator"))
    assert (part.status, part.error_code) == ("failed", "63016")
    assert fake_twilio.attempts == []


@pytest.fixture
def closing_agent(app):
    """The default agent closes chats silent for an hour with a closing text."""
    from gateway.conversations.agents import default_agent

    agent = default_agent()
    Agent.update(end_chat_after_silence_ms=3_600_000, auto_close_message="Closing this chat. Bye!").where(
        Agent.agent_id == agent.agent_id
    ).execute()
    return agent


@pytest.mark.parametrize(
    ("silent_for", "closing_sent"), [(timedelta(hours=2), True), (timedelta(hours=25), False)]
)
def test_a_closing_text_goes_only_inside_the_window_and_the_chat_ends_either_way(
    client, settings, fake_twilio, clock, closing_agent, silent_for, closing_sent
):
    PhoneNumber.create(phone_number=OUR_NUMBER)
    form = inbound_whatsapp("thanks, that's all")
    assert post_twilio(client, "/twilio/sms", form).status_code == 200
    message = Message.get(Message.twilio_sid == form["MessageSid"])
    Message.update(reply_state="none").where(Message.id == message.id).execute()  # no reply pending
    later = message.created_at + silent_for
    clock.at(later)
    assert lifecycle.close_silent_chats(settings, now=later) == 1
    chat = Chat.get_by_id(message.chat_id)
    assert (chat.chat_status, chat.end_reason) == ("ended", "inactivity")
    notices = list(Message.select().where((Message.chat == chat.chat_id) & (Message.kind == "notice")))
    if closing_sent:
        assert [n.content for n in notices] == ["Closing this chat. Bye!"]
        assert [m["Body"] for m in fake_twilio.messages] == ["Closing this chat. Bye!"]
    else:
        assert notices == [] and fake_twilio.attempts == []  # skipped: nothing stored, nothing sent


def test_a_spend_guard_notice_outside_the_window_is_skipped(client, settings, fake_twilio, clock, app):
    from gateway.agent.spend import Refusal
    from gateway.conversations.agents import default_agent
    from gateway.conversations.delivery import SmsTarget
    from gateway.conversations.refusals import refuse_reply
    from gateway.storage.models import ReplyState

    form = inbound_whatsapp("one more question")
    post_twilio(client, "/twilio/sms", form)
    message = Message.get(Message.twilio_sid == form["MessageSid"])
    clock.at(message.created_at + timedelta(hours=25))
    refusal = Refusal(ReplyState.RATE_LIMITED, "Too many replies to this person today.", notify=True)
    target = SmsTarget(message.chat_id, WHATSAPP_OUR, WHATSAPP_PERSON, "whatsapp")
    assert refuse_reply(settings, default_agent(), refusal, target, [message.id]) is False
    assert Message.get_by_id(message.id).reply_state == "rate_limited"
    assert not Message.select().where(Message.kind == "notice").exists()
    assert fake_twilio.attempts == []


def test_the_api_document_lists_the_operator_texts_window_refusal(client):
    document = client.get("/v1/openapi.json", headers=AUTH).json
    [operation] = [
        op
        for path in document["paths"].values()
        for op in path.values()
        if isinstance(op, dict) and op.get("operationId") == "sendOperatorMessage"
    ]
    assert "`outside_session_window`" in operation["responses"]["409"]["description"]
