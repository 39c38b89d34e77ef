"""WhatsApp through the same Twilio webhook: recorded, its own chat, answered on WhatsApp, `read` kept."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from gateway.conversations import replies
from gateway.conversations.agents import DEFAULT_HELP_MESSAGE
from gateway.storage.models import Chat, Contact, Message, Role
from gateway.twilio.keywords import WHATSAPP_START_CONFIRMATION, WHATSAPP_STOP_CONFIRMATION
from tests.conftest import GATEWAY_API_KEY, post_twilio
from tests.payloads import (
    OUR_NUMBER,
    PERSON,
    WHATSAPP_CASES,
    WHATSAPP_OUR,
    WHATSAPP_PERSON,
    inbound_sms,
    inbound_whatsapp,
    status_callback,
)

AUTH = {"Authorization": f"Bearer {GATEWAY_API_KEY}"}


def record(client, form: dict[str, str]) -> Message:
    """POST the webhook form; the message as recorded."""
    response = post_twilio(client, "/twilio/sms", form)
    assert response.status_code == 200, response.get_data(as_text=True)
    return Message.get(Message.twilio_sid == form["MessageSid"])


@pytest.mark.parametrize(
    ("form", "details", "model_reads"), [c[1:] for c in WHATSAPP_CASES], ids=[c[0] for c in WHATSAPP_CASES]
)
def test_whatsapp_webhook_is_recorded_with_its_details(
    client, form, details, model_reads, settings, fake_model
):
    message = record(client, form)
    assert (message.from_number, message.to_number) == (WHATSAPP_PERSON, WHATSAPP_OUR)
    assert message.details == details
    assert message.reply_state == "pending"
    chat = Chat.get_by_id(message.chat_id)
    assert (chat.channel, chat.from_number, chat.to_number) == ("whatsapp", WHATSAPP_OUR, WHATSAPP_PERSON)

    fake_model.reply_with("Noted.")
    replies.answer_message(settings, message.id)
    prompt = fake_model.requests[-1]["messages"]
    system, last_user = prompt[0]["content"], prompt[-1]["content"]
    text = last_user if isinstance(last_user, str) else " ".join(p.get("text", "") for p in last_user)
    assert model_reads in text
    assert f"profile name is {details['profile_name']}" in system


def test_reply_goes_back_on_whatsapp_in_whatsapp_formatting(client, settings, fake_model, fake_twilio):
    message = record(client, inbound_whatsapp("What can I order?"))
    fake_model.reply_with("Here is the **menu**:\n\n- *soup*\n- ~~salad~~ sold out\n\n```\nTotal: 12.00\n```")
    outcome = replies.answer_message(settings, message.id)
    assert outcome.outcome == "answered"
    sent = fake_twilio.messages[-1]
    assert (sent["From"], sent["To"]) == (WHATSAPP_OUR, WHATSAPP_PERSON)
    assert sent["Body"] == "Here is the *menu*:\n\n- _soup_\n- ~salad~ sold out\n\n```\nTotal: 12.00\n```"


def test_sms_reply_stays_plain_text(client, settings, fake_model, fake_twilio):
    message = record(client, inbound_sms("What can I order?"))
    fake_model.reply_with("Here is the **menu**: *soup*")
    replies.answer_message(settings, message.id)
    sent = fake_twilio.messages[-1]
    assert (sent["From"], sent["To"], sent["Body"]) == (OUR_NUMBER, PERSON, "Here is the menu: soup")


def test_whatsapp_and_sms_with_one_person_are_separate_chats_filtered_by_channel(client):
    on_whatsapp = record(client, inbound_whatsapp("hi on whatsapp"))
    on_sms = record(client, inbound_sms("hi by sms"))
    assert on_whatsapp.chat_id != on_sms.chat_id

    listed = client.get("/v1/chats?channel=whatsapp", headers=AUTH).get_json()
    assert [(c["chat_id"], c["channel"]) for c in listed["items"]] == [(on_whatsapp.chat_id, "whatsapp")]
    listed = client.get("/v1/chats?channel=sms", headers=AUTH).get_json()
    assert [(c["chat_id"], c["channel"]) for c in listed["items"]] == [(on_sms.chat_id, "sms")]
    # The person's number finds both conversations.
    listed = client.get(f"/v1/chats?phone_number={PERSON}", headers=AUTH).get_json()
    assert {c["chat_id"] for c in listed["items"]} == {on_whatsapp.chat_id, on_sms.chat_id}
    assert client.get("/v1/chats?channel=fax", headers=AUTH).status_code == 422


def test_stop_on_whatsapp_opts_out_of_whatsapp_and_is_not_answered(client, settings, fake_model, fake_twilio):
    record(client, inbound_whatsapp("STOP"))
    contact = Contact.get((Contact.our_number == WHATSAPP_OUR) & (Contact.phone_number == WHATSAPP_PERSON))
    assert contact.opted_out
    after = record(client, inbound_whatsapp("are you there?"))
    assert after.reply_state == "none"
    assert fake_twilio.messages == [] and fake_model.requests == []
    # The SMS conversation with the same person is not affected.
    assert record(client, inbound_sms("hello")).reply_state == "pending"


def answered(client, form: dict[str, str]) -> tuple[list[str], Message]:
    """POST the webhook form; (the texts of the TwiML answer, the recorded message)."""
    response = post_twilio(client, "/twilio/sms", form)
    assert response.status_code == 200, response.get_data(as_text=True)
    texts = [m.text for m in ET.fromstring(response.get_data())]
    return texts, Message.get(Message.twilio_sid == form["MessageSid"])


def is_opted_out(our: str, theirs: str) -> bool:
    """The contact row's opt-out flag."""
    return Contact.get((Contact.our_number == our) & (Contact.phone_number == theirs)).opted_out


def test_help_on_whatsapp_is_answered_there_and_stored_in_the_chat(client, settings, fake_model, fake_twilio):
    texts, help_ = answered(client, inbound_whatsapp("help"))
    assert texts == [DEFAULT_HELP_MESSAGE]  # TwiML: Twilio sends it back on WhatsApp
    assert (help_.kind, help_.reply_state) == ("keyword", "none")
    answer = Message.get((Message.reply_to == help_.id) & (Message.role == Role.AGENT.value))
    assert (answer.chat_id, answer.kind, answer.status) == (help_.chat_id, "help_answer", "sent")
    assert (answer.from_number, answer.to_number, answer.content) == (
        WHATSAPP_OUR,
        WHATSAPP_PERSON,
        DEFAULT_HELP_MESSAGE,
    )
    chat = client.get(f"/v1/chats/{help_.chat_id}", headers=AUTH).get_json()
    assert [(m["role"], m["kind"]) for m in chat["messages"]] == [
        ("user", "keyword"),
        ("agent", "help_answer"),
    ]
    assert fake_twilio.messages == [] and fake_model.requests == []  # no REST send, no model call


def test_stop_is_confirmed_on_whatsapp_but_left_to_twilio_on_sms(client, fake_twilio):
    # SMS: Twilio itself answers STOP on our numbers, so the gateway's TwiML is empty.
    texts, _ = answered(client, inbound_sms("STOP"))
    assert texts == []
    # WhatsApp: Twilio does not, so the gateway confirms it, once per STOP, stored in the chat.
    texts, stop = answered(client, inbound_whatsapp("stop"))
    assert texts == [WHATSAPP_STOP_CONFIRMATION]
    confirmation = Message.get(Message.reply_to == stop.id)
    assert (confirmation.kind, confirmation.status, confirmation.to_number) == (
        "notice",
        "sent",
        WHATSAPP_PERSON,
    )
    assert Chat.get_by_id(stop.chat_id).end_reason == "opt_out"
    # A Messaging Service's Advanced Opt-Out answered it already (OptOutType): no second answer.
    texts, _ = answered(client, inbound_whatsapp("STOP", OptOutType="STOP"))
    assert texts == []
    assert fake_twilio.messages == []


def test_start_on_whatsapp_lifts_only_the_whatsapp_opt_out(client, fake_twilio):
    answered(client, inbound_sms("STOP"))
    answered(client, inbound_whatsapp("STOP"))
    assert is_opted_out(OUR_NUMBER, PERSON) and is_opted_out(WHATSAPP_OUR, WHATSAPP_PERSON)

    texts, start = answered(client, inbound_whatsapp("Start"))
    assert texts == [WHATSAPP_START_CONFIRMATION]
    assert Message.get(Message.reply_to == start.id).kind == "notice"
    assert not is_opted_out(WHATSAPP_OUR, WHATSAPP_PERSON)
    assert is_opted_out(OUR_NUMBER, PERSON)  # the SMS opt-out stands
    assert record(client, inbound_whatsapp("hello again")).reply_state == "pending"
    assert record(client, inbound_sms("hello by sms")).reply_state == "none"
    # START from someone not opted out changes nothing and gets no confirmation.
    texts, again = answered(client, inbound_whatsapp("START"))
    assert texts == [] and not Message.select().where(Message.reply_to == again.id).exists()
    assert fake_twilio.messages == []


def test_read_is_recorded_after_delivered_and_never_moves_back(client, settings, fake_model, fake_twilio):
    message = record(client, inbound_whatsapp("hello"))
    fake_model.reply_with("Hi!")
    replies.answer_message(settings, message.id)
    part = Message.get((Message.reply_to == message.id) & (Message.role == Role.AGENT.value))
    callbacks = {"From": WHATSAPP_OUR, "To": WHATSAPP_PERSON}

    def status_after(status: str) -> str:
        post_twilio(client, "/twilio/status", status_callback(part.twilio_sid, status, **callbacks))
        return Message.get_by_id(part.id).status

    assert status_after("delivered") == "delivered"
    assert status_after("read") == "read"
    assert status_after("delivered") == "read"  # a late callback does not undo read
    assert status_after("sent") == "read"
    chat = client.get(f"/v1/chats/{message.chat_id}", headers=AUTH).get_json()
    assert chat["messages"][-1]["status"] == "read"


def test_read_never_replaces_a_failure(client, settings, fake_model, fake_twilio):
    message = record(client, inbound_whatsapp("hello"))
    fake_model.reply_with("Hi!")
    replies.answer_message(settings, message.id)
    part = Message.get((Message.reply_to == message.id) & (Message.role == Role.AGENT.value))
    post_twilio(client, "/twilio/status", status_callback(part.twilio_sid, "undelivered", ErrorCode="63016"))
    post_twilio(client, "/twilio/status", status_callback(part.twilio_sid, "read"))
    assert Message.get_by_id(part.id).status == "undelivered"
