"""Chat lifecycle over SMS: a silent chat is auto-closed, and the person's next text opens a new one."""

from __future__ import annotations

from datetime import timedelta

from gateway.conversations.agents import default_agent
from gateway.storage.models import Agent, Chat, utcnow
from tests.conftest import post_twilio
from workers import jobs
from workers.context import configure

OURS = "+14155550100"
THEIRS = "+14155550123"


def text(client, sid: str, body: str):
    """A signed inbound SMS from the person to our number."""
    params = {"MessageSid": sid, "AccountSid": "AC" + "0" * 32, "From": THEIRS, "To": OURS, "Body": body}
    response = post_twilio(client, "/twilio/sms", params)
    assert response.status_code == 200


def test_silent_chat_is_closed_and_the_next_text_opens_a_new_one(
    client, settings, worker, fake_twilio, fake_model
):
    """Auto-close sends the closing text and records why; the next text starts a fresh chat."""
    with client.application.app_context():
        agent = default_agent()
        Agent.update(
            end_chat_after_silence_ms=60_000, auto_close_message="Closing this chat. Text anytime!"
        ).where(Agent.agent_id == agent.agent_id).execute()
    text(client, "SM" + "1" * 32, "Hi there")
    fake_twilio.wait_for_messages(1)
    first = Chat.get(Chat.to_number == THEIRS)

    # An hour of silence later (moved back in time rather than waited for).
    Chat.update(last_activity_at=utcnow() - timedelta(minutes=5)).where(
        Chat.chat_id == first.chat_id
    ).execute()
    configure(settings)
    assert jobs.close_silent_chats() == 1
    closed = Chat.get_by_id(first.chat_id)
    assert (closed.chat_status, closed.end_reason, closed.ongoing_pair) == ("ended", "inactivity", None)
    [_, closing] = fake_twilio.wait_for_messages(2)
    assert (closing["To"], closing["Body"]) == (THEIRS, "Closing this chat. Text anytime!")

    text(client, "SM" + "2" * 32, "Me again")
    fake_twilio.wait_for_messages(3)
    chats = list(Chat.select().where(Chat.to_number == THEIRS).order_by(Chat.start_timestamp))
    assert [c.chat_id == first.chat_id for c in chats] == [True, False]
    assert chats[1].chat_status == "ongoing"
    # The new chat starts fresh: the reply's prompt does not hold the closed chat's turns.
    [reply_request] = [r for r in fake_model.requests if "Me again" in str(r["messages"][-1]["content"])]
    assert not any("Hi there" in str(m["content"]) for m in reply_request["messages"])
