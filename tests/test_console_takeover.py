"""Human takeover in process (both backends): the agent is silent while an operator holds a chat,
the operator's text goes out through the reply send path, and a held chat is never auto-closed."""

from __future__ import annotations

from datetime import timedelta

import pytest

from gateway.agent.prompt import build_messages
from gateway.conversations import operator, replies
from gateway.storage.models import Agent, Chat, ChatType, Contact, Message, MessageKind, Role, utcnow
from tests.conftest import GATEWAY_API_KEY
from workers import context, jobs

OUR = "+15550001000"
THEIRS = "+15557654321"


@pytest.fixture
def configured(app, settings):
    """Jobs run in this process see the test settings."""
    context.configure(settings)
    yield settings
    context.configure(None)


@pytest.fixture
def chat(app) -> Chat:
    """An ongoing SMS chat with its agent."""
    agent = Agent.create(system_prompt="You are a test agent.", retry_delay=0, end_chat_after_silence_ms=1000)
    return Chat.create(
        agent=agent,
        chat_type=ChatType.SMS.value,
        from_number=OUR,
        to_number=THEIRS,
        ongoing_pair=f"{OUR}|{THEIRS}",
    )


def inbound(chat: Chat, body: str) -> Message:
    """A text from the person waiting for its answer, as the webhook records it."""
    return Message.create(
        chat=chat, role=Role.USER.value, content=body, status="received", reply_state="pending"
    )


def test_held_chat_gets_no_agent_reply(configured, chat, fake_model, fake_twilio):
    """While held, the person's text is recorded and left unanswered; after hand back it is answered."""
    operator.take_over(chat.chat_id)
    text = inbound(chat, "hello?")
    outcome = replies.answer_message(configured, text.id)
    assert outcome.outcome == "held"
    assert Message.get_by_id(text.id).reply_state == "none"
    assert fake_model.requests == [] and fake_twilio.messages == []

    assert operator.hand_back(chat.chat_id)
    fake_model.reply_with("back again")
    later = inbound(chat, "anyone?")
    assert replies.answer_message(configured, later.id).outcome == "answered"
    assert [m["Body"] for m in fake_twilio.messages] == ["back again"]


def test_operator_text_is_sent_and_read_by_the_agent_as_its_own(configured, chat, fake_twilio):
    """The operator's text is stored as kind operator, sent with its SID and status, and in the prompt
    it is an assistant turn."""
    inbound(chat, "is someone there?")
    operator.take_over(chat.chat_id)
    [part] = operator.send_operator_message(chat.chat_id, "Yes, **I** am here.", None)
    assert part.kind == MessageKind.OPERATOR.value and part.role == Role.AGENT.value
    assert jobs.send_operator_parts(chat.chat_id)["parts_sent"] == 1
    assert [m["Body"] for m in fake_twilio.messages] == ["Yes, **I** am here."]
    stored = Message.get_by_id(part.id)
    assert stored.twilio_sid and stored.status == "queued"
    assert jobs.send_operator_parts(chat.chat_id)["parts_sent"] == 0  # never sent twice

    prompt = build_messages(Chat.get_by_id(chat.chat_id), chat.agent, configured)
    assert {"role": "assistant", "content": "Yes, **I** am here."} in prompt


def test_operator_cannot_text_a_person_who_opted_out(configured, chat, fake_twilio):
    """Opt-out is respected: refused in words, nothing stored or sent."""
    Contact.create(our_number=OUR, phone_number=THEIRS, opted_out=True, opted_out_at=utcnow())
    operator.take_over(chat.chat_id)
    with pytest.raises(operator.OperatorRefused) as refused:
        operator.send_operator_message(chat.chat_id, "hello", None)
    assert refused.value.code == "opted_out" and "STOP" in refused.value.message
    assert not Message.select().where(Message.kind == MessageKind.OPERATOR.value).exists()


def test_operator_must_hold_the_chat_to_text(configured, chat):
    """Without taking over first, the operator's text is refused (the agent would answer too)."""
    with pytest.raises(operator.OperatorRefused) as refused:
        operator.send_operator_message(chat.chat_id, "hello", None)
    assert refused.value.code == "not_held"


def test_auto_close_leaves_a_held_chat_open(configured, chat, fake_twilio):
    """A silent chat held by an operator is not ended by the silence timer; handed back, it is."""
    operator.take_over(chat.chat_id)
    Chat.update(last_activity_at=utcnow() - timedelta(hours=1)).where(Chat.chat_id == chat.chat_id).execute()
    assert jobs.close_silent_chats() == 0
    assert Chat.get_by_id(chat.chat_id).chat_status == "ongoing"
    operator.hand_back(chat.chat_id)
    assert jobs.close_silent_chats() == 1


AUTH = {"Authorization": f"Bearer {GATEWAY_API_KEY}"}


def test_takeover_over_the_api(client, chat, fake_twilio, settings):
    """takeover, an operator text (202, kind operator), handback; refusals as JSON errors."""
    not_held = client.post(f"/v1/chats/{chat.chat_id}/messages", json={"text": "hi"}, headers=AUTH)
    assert not_held.status_code == 409 and not_held.get_json()["error"]["code"] == "not_held"

    held = client.post(f"/v1/chats/{chat.chat_id}/takeover", headers=AUTH)
    assert held.status_code == 200 and held.get_json()["operator_held_at"]

    sent = client.post(f"/v1/chats/{chat.chat_id}/messages", json={"text": "A person here."}, headers=AUTH)
    assert sent.status_code == 202
    [message] = sent.get_json()["messages"]
    assert (message["role"], message["kind"], message["content"]) == ("agent", "operator", "A person here.")
    assert message["status"] == "queued"

    empty = client.post(f"/v1/chats/{chat.chat_id}/messages", json={"text": ""}, headers=AUTH)
    assert empty.status_code == 422 and empty.get_json()["error"]["field"] == "text"

    back = client.post(f"/v1/chats/{chat.chat_id}/handback", headers=AUTH)
    assert back.status_code == 200 and back.get_json()["operator_held_at"] is None


def test_api_chats_cannot_be_taken_over(client, app):
    """Takeover is for SMS chats: an API chat gets 409 not_sms_chat."""
    agent = Agent.create(name="api")
    api_chat = Chat.create(agent=agent, chat_type=ChatType.API.value)
    refused = client.post(f"/v1/chats/{api_chat.chat_id}/takeover", headers=AUTH)
    assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "not_sms_chat"
