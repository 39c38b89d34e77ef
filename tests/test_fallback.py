"""When the model fails for good, the person gets the agent's fallback text, once; Twilio failures don't."""

from __future__ import annotations

import pytest
from rq.job import Job, JobStatus

from gateway.conversations import answering, replies
from gateway.queue import (
    JobSerializer,
    enqueue_reply,
    fetch_job,
    job_queue,
    queue_name,
    reply_job_id,
    retry_policy,
)
from gateway.storage.models import Agent, Chat, ChatType, Message, PhoneNumber, Role
from tests.conftest import GATEWAY_API_KEY, SimpleWorker, post_twilio, wait_for
from tests.payloads import OUR_NUMBER, PERSON, inbound_sms
from workers import context

AUTH = {"Authorization": f"Bearer {GATEWAY_API_KEY}"}


@pytest.fixture
def configured(app, settings):
    """Jobs run in this process see the test settings."""
    context.configure(settings)
    yield settings
    context.configure(None)


def sms_chat(**agent_fields) -> Chat:
    """An ongoing SMS chat with a fresh agent (retries at once)."""
    agent_fields.setdefault("retry_delay", 0)
    agent = Agent.create(system_prompt="Be brief.", **agent_fields)
    return Chat.create(
        agent=agent,
        chat_type=ChatType.SMS.value,
        from_number=OUR_NUMBER,
        to_number=PERSON,
        ongoing_pair=f"{OUR_NUMBER}|{PERSON}",
    )


def inbound(chat: Chat, body: str) -> Message:
    """An inbound SMS waiting for its answer."""
    return Message.create(
        chat=chat,
        role=Role.USER.value,
        content=body,
        status="received",
        from_number=PERSON,
        to_number=OUR_NUMBER,
        reply_state="pending",
    )


def reply_job(settings, redis_conn, message: Message) -> Job:
    """Enqueue the reply as the webhook does, with the agent's retries, and run every job at once."""
    agent = Chat.get_by_id(message.chat_id).agent
    queue = job_queue(queue_name(settings), redis_conn)
    job = enqueue_reply(
        queue,
        chat_id=message.chat_id,
        message_id=message.id,
        retry=retry_policy(agent.retry_attempts, 0),
        check_existing=True,
    )
    SimpleWorker([queue], connection=redis_conn, serializer=JobSerializer).work(
        burst=True, with_scheduler=False
    )
    return fetch_job(job.id, redis_conn)


def fresh(message: Message) -> Message:
    """The message as stored now."""
    return Message.get_by_id(message.id)


def agent_messages(chat: Chat) -> list[Message]:
    """The chat's agent messages, in order."""
    query = Message.select().where((Message.chat == chat) & (Message.role == Role.AGENT.value))
    return list(query.order_by(Message.id))


def test_retries_spent_bring_the_fallback_once(configured, redis_conn, fake_model, fake_twilio):
    chat = sms_chat(retry_attempts=1)
    message = inbound(chat, "hello?")
    fake_model.fail_next(status=500, times=10)

    job = reply_job(configured, redis_conn, message)

    assert len(fake_model.requests) == 2  # the try and its one retry
    assert [(m["To"], m["Body"]) for m in fake_twilio.messages] == [(PERSON, answering.FALLBACK_MESSAGE)]
    stored = fresh(message)
    assert (stored.reply_state, stored.error_code) == ("failed", "500")
    assert "500" in stored.error_message
    [part] = agent_messages(chat)
    assert (part.content, part.twilio_sid, part.reply_to_id) == (
        answering.FALLBACK_MESSAGE,
        fake_twilio.messages[0]["sid"],
        message.id,
    )
    assert part.error_code is None and part.prompt_tokens is None
    assert job.get_status() == JobStatus.FAILED  # RQ sees the model's failure


def test_permanent_model_error_brings_the_agents_fallback_at_once(
    configured, redis_conn, fake_model, fake_twilio
):
    chat = sms_chat(retry_attempts=3, fallback_message="We're having trouble; a person will call you.")
    first, second = inbound(chat, "hi"), inbound(chat, "anyone?")
    fake_model.fail_next(status=401, times=10)

    job = reply_job(configured, redis_conn, first)

    assert len(fake_model.requests) == 1  # no retry
    assert [m["Body"] for m in fake_twilio.messages] == ["We're having trouble; a person will call you."]
    for message in (first, second):  # the burst shares the one fallback and the failure
        stored = fresh(message)
        assert (stored.reply_state, stored.error_code) == ("failed", "401")
        assert "refused the API key" in stored.error_message
    assert job.get_status() == JobStatus.FAILED
    assert "PermanentError" in (job.latest_result().exc_string or "")
    # The second message's own job finds nothing left to do.
    assert replies.answer_message(configured, second.id).outcome == "skipped"
    assert len(fake_twilio.messages) == 1


def test_no_fallback_when_turned_off(configured, redis_conn, fake_model, fake_twilio):
    chat = sms_chat(retry_attempts=1, fallback_enabled=False)
    message = inbound(chat, "hello?")
    fake_model.fail_next(status=500, times=10)

    job = reply_job(configured, redis_conn, message)

    assert fake_twilio.attempts == []
    assert agent_messages(chat) == []
    stored = fresh(message)
    assert (stored.reply_state, stored.error_code) == ("failed", "500")
    assert job.get_status() == JobStatus.FAILED


def test_a_fallback_interrupted_by_twilio_is_sent_by_the_retry(
    configured, redis_conn, fake_model, fake_twilio
):
    """The fallback is stored before it is sent: a Twilio hiccup repeats the send, not the model."""
    chat = sms_chat(retry_attempts=2)
    message = inbound(chat, "hello?")
    fake_model.fail_next(status=404, times=10)
    fake_twilio.fail_next(code=20429, status=429)

    job = reply_job(configured, redis_conn, message)

    assert len(fake_model.requests) == 1
    assert len(fake_twilio.attempts) == 2
    assert [m["Body"] for m in fake_twilio.messages] == [answering.FALLBACK_MESSAGE]
    stored = fresh(message)
    assert (stored.reply_state, stored.error_code) == ("failed", "404")
    assert job.get_status() == JobStatus.FINISHED
    assert job.latest_result().return_value["outcome"] == "fallback"


@pytest.mark.parametrize(
    ("script", "error_code"),
    [
        ({"code": 21211, "status": 400}, "21211"),  # permanent: once
        ({"code": 20429, "status": 429, "times": 10}, "20429"),  # transient: each attempt, then given up
    ],
)
def test_twilio_failures_bring_no_fallback(
    configured, redis_conn, fake_model, fake_twilio, script, error_code
):
    chat = sms_chat(retry_attempts=1)
    message = inbound(chat, "hello?")
    fake_model.reply_with("The answer.")
    fake_twilio.fail_next(**script)

    reply_job(configured, redis_conn, message)

    assert {a["Body"] for a in fake_twilio.attempts} == {"The answer."}
    assert fake_twilio.messages == []
    stored = fresh(message)
    assert (stored.reply_state, stored.error_code) == ("failed", error_code)


def test_end_to_end_the_person_gets_the_fallback(client, worker, fake_model, fake_twilio, redis_conn):
    agent = Agent.create(system_prompt="Be brief.", retry_attempts=1, retry_delay=0)
    PhoneNumber.create(phone_number=OUR_NUMBER, inbound_agent=agent)
    fake_model.fail_next(status=503, times=10)
    form = inbound_sms("are you there?")
    assert post_twilio(client, "/twilio/sms", form).status_code == 200
    message = Message.get(Message.twilio_sid == form["MessageSid"])

    [sent] = fake_twilio.wait_for_messages(1, timeout=30)
    assert (sent["To"], sent["Body"]) == (PERSON, answering.FALLBACK_MESSAGE)
    wait_for(lambda: fresh(message).reply_state == "failed", message="the message failed")
    assert fresh(message).error_code == "503"
    wait_for(
        lambda: fetch_job(reply_job_id(message.id), redis_conn).get_status() == JobStatus.FAILED,
        message="the job failed",
    )
    assert len(fake_model.requests) == 2 and len(fake_twilio.messages) == 1
    # The chat shows the fallback as the agent's message and the failure on the person's.
    chat = client.get(f"/v1/chats/{message.chat_id}", headers=AUTH).json
    assert [(m["role"], m["content"], m["error_code"]) for m in chat["messages"]] == [
        ("user", "are you there?", "503"),
        ("agent", answering.FALLBACK_MESSAGE, None),
    ]


def test_fallback_enabled_is_an_agent_setting(client):
    created = client.post("/v1/agents", json={"name": "a"}, headers=AUTH).json
    assert created["fallback_enabled"] is True
    agent_id = created["agent_id"]
    changed = client.patch(f"/v1/agents/{agent_id}", json={"fallback_enabled": False}, headers=AUTH)
    assert changed.status_code == 200 and changed.json["fallback_enabled"] is False
    assert client.get(f"/v1/agents/{agent_id}", headers=AUTH).json["fallback_enabled"] is False
    refused = client.patch(f"/v1/agents/{agent_id}", json={"fallback_enabled": "no"}, headers=AUTH)
    assert refused.status_code == 422
