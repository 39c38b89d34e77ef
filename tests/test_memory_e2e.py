"""Twenty SMS turns through the real webhook and a real worker: a fact from turn one survives a
window of four messages because the rolling summary (summary_memory) carries it.

The fake model's responder (tests.test_memory.FakeBrain) plays both the agent and the
summarizer; the assertions read what the model received in the last turn's request.
"""

from __future__ import annotations

from gateway.agent.memory import SUMMARY_HEADING
from gateway.storage.models import Agent, Chat, Message, PhoneNumber
from tests.conftest import post_twilio, wait_for
from tests.payloads import OUR_NUMBER, PERSON, inbound_sms
from tests.test_memory import FakeBrain, kind_of, requests_of

TURNS = 20
FACT = "Hi! My name is Zanzibar."


def text_in(client, body: str) -> Message:
    """Post a signed inbound SMS and return the message the webhook recorded."""
    form = inbound_sms(body)
    assert post_twilio(client, "/twilio/sms", form).status_code == 200
    return Message.get(Message.twilio_sid == form["MessageSid"])


def wait_answered(message: Message) -> None:
    """Wait until the worker answered `message` (fail fast if it gave up)."""

    def state() -> str:
        return Message.get_by_id(message.id).reply_state

    wait_for(lambda: state() in ("answered", "failed"), 30, message=f"the answer to {message.content!r}")
    assert state() == "answered", Message.get_by_id(message.id).error_message


def test_a_fact_from_the_first_turn_is_known_at_the_twentieth(client, worker, fake_model, fake_twilio):
    fake_model.responder = FakeBrain(facts=("Zanzibar",))
    agent = Agent.create(
        system_prompt="You are a friendly assistant.", num_last_messages=4, summary_memory=True
    )
    PhoneNumber.create(phone_number=OUR_NUMBER, inbound_agent=agent)

    for turn in range(1, TURNS):
        wait_answered(text_in(client, FACT if turn == 1 else f"Turn {turn}: tell me something."))
    chat = Chat.get(Chat.to_number == PERSON)
    # The summary is written in the background; by now it covers turn one.
    wait_for(lambda: "Zanzibar" in (Chat.get_by_id(chat.chat_id).summary or ""), 30, message="the summary")

    wait_answered(text_in(client, "What is my name?"))

    last = [r for r in fake_model.requests if kind_of(r) == "agent"][-1]
    assert last["messages"][-1] == {"role": "user", "content": "What is my name?"}
    system, history = last["messages"][0]["content"], last["messages"][1:]
    # The window holds the last four messages only: turn one is long gone from the history...
    assert len(history) <= 4 and not any("Zanzibar" in m["content"] for m in history)
    # ...and reached the model through the rolling summary section.
    assert system.startswith("You are a friendly assistant.\n\n" + SUMMARY_HEADING + "\n")
    assert "Zanzibar" in system.split(SUMMARY_HEADING, 1)[1]
    assert fake_twilio.messages[-1]["Body"] == "I remember: Zanzibar."
    assert fake_twilio.messages[-1]["To"] == PERSON

    # Bounded updates: the first text was read as a message by one summary request only; later
    # ones got it through the old summary, each reading only the messages after the last mark.
    summaries = requests_of(fake_model, "summary")
    assert 1 <= len(summaries) <= TURNS
    assert sum(f"Person: {FACT}" in r["messages"][1]["content"] for r in summaries) == 1
    assert all(r["messages"][1]["content"].count("\nPerson: ") <= TURNS // 2 for r in summaries)
