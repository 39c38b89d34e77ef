"""Model usage: each agent reply records its tokens; a chat reports its totals."""

from __future__ import annotations

import pytest

from gateway.conversations import replies
from gateway.storage.models import Agent, Chat, ChatType, Message, Role
from tests.conftest import GATEWAY_API_KEY
from tests.fakes.model import content_text, count_tokens
from tests.payloads import OUR_NUMBER, PERSON
from workers import context

AUTH = {"Authorization": f"Bearer {GATEWAY_API_KEY}"}


@pytest.fixture
def configured(app, settings):
    """Replies run in this process see the test settings."""
    context.configure(settings)
    yield settings
    context.configure(None)


def test_sms_chat_reports_the_tokens_of_its_replies(client, configured, fake_model, fake_twilio):
    agent = Agent.create(system_prompt="Be brief.")
    chat = Chat.create(
        agent=agent,
        chat_type=ChatType.SMS.value,
        from_number=OUR_NUMBER,
        to_number=PERSON,
        ongoing_pair=f"{OUR_NUMBER}|{PERSON}",
    )
    answers = ["Hello there, how can I help?", "We open at nine. " + "More words " * 150]
    fake_model.queue_replies(answers)
    for text in ("hi", "when do you open?"):
        message = Message.create(
            chat=chat, role=Role.USER.value, content=text, status="received", reply_state="pending"
        )
        assert replies.answer_message(configured, message.id).outcome == "answered"
    assert len(fake_twilio.messages) == 1 + 2  # the second reply went out in two parts

    sent_prompts = [m for request in fake_model.requests for m in request["messages"]]
    expected_prompt = sum(count_tokens(content_text(m["content"])) for m in sent_prompts)
    expected_completion = sum(count_tokens(answer) for answer in answers)
    chat_json = client.get(f"/v1/chats/{chat.chat_id}", headers=AUTH).json
    assert chat_json["usage"] == {"prompt_tokens": expected_prompt, "completion_tokens": expected_completion}
    assert expected_prompt > 0 and expected_completion > 0
    # Each reply's tokens are on its first part only, so split replies are not counted twice.
    tokens = [
        (m.part_index, m.prompt_tokens is not None)
        for m in Message.select()
        .where((Message.chat == chat) & (Message.role == Role.AGENT.value))
        .order_by(Message.id)
    ]
    assert tokens == [(0, True), (0, True), (1, False)]
