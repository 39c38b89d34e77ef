"""Text in, reply out: signed webhook -> RQ -> a real `smsgw worker` process -> the fakes.

Everything is real except what lies outside the machine: Redis, the database, RQ, the worker
process, the openai and twilio client libraries speaking HTTP to loopback fakes.
"""

from __future__ import annotations

import pytest
from rq.job import JobStatus

from gateway.queue import fetch_job, reply_job_id
from gateway.storage.models import Message, Role
from tests.conftest import PUBLIC_BASE_URL, post_twilio, wait_for
from tests.payloads import OUR_NUMBER, PERSON, inbound_sms
from workers import context, jobs

SMS = "/twilio/sms"


@pytest.fixture
def configured(settings):
    """In-process calls of the jobs (the sweep) see the test settings."""
    context.configure(settings)
    yield settings
    context.configure(None)


def text_in(client, body: str) -> Message:
    """Post a signed inbound SMS and return the message the webhook recorded."""
    form = inbound_sms(body)
    response = post_twilio(client, SMS, form)
    assert response.status_code == 200
    return Message.get(Message.twilio_sid == form["MessageSid"])


def reply_state(message: Message) -> str:
    """The message's reply state as stored now."""
    return Message.get_by_id(message.id).reply_state


def wait_answered(message: Message, timeout: float = 30) -> None:
    """Wait until the worker answered `message` (fail fast if it gave up)."""
    wait_for(
        lambda: reply_state(message) in ("answered", "failed"),
        timeout,
        message=f"answer to {message.content!r}",
    )
    assert reply_state(message) == "answered", Message.get_by_id(message.id).error_message


def job_status(redis_conn, message: Message) -> JobStatus:
    """The RQ status of the message's reply job."""
    return fetch_job(reply_job_id(message.id), redis_conn).get_status()


def test_text_in_reply_out(client, worker, fake_model, fake_twilio, redis_conn):
    fake_model.reply_with("Hello! **How** can I help?")
    message = text_in(client, "Hi")

    [sent] = fake_twilio.wait_for_messages(1, timeout=30)
    assert (sent["From"], sent["To"]) == (OUR_NUMBER, PERSON)
    assert sent["Body"] == "Hello! How can I help?"
    assert sent["StatusCallback"] == PUBLIC_BASE_URL + "/twilio/status"
    wait_answered(message)
    part = Message.get((Message.role == Role.AGENT.value) & (Message.reply_to == message.id))
    assert part.twilio_sid == sent["sid"]
    wait_for(lambda: job_status(redis_conn, message) == JobStatus.FINISHED, message="job finished")
    assert fake_model.requests[0]["messages"][-1] == {"role": "user", "content": "Hi"}


def test_long_reply_arrives_in_parts_in_order(client, worker, fake_model, fake_twilio):
    words = [f"word{i}" for i in range(800)]
    fake_model.reply_with(" ".join(words))
    message = text_in(client, "Tell me a long story")

    wait_answered(message)
    bodies = [m["Body"] for m in fake_twilio.messages]
    assert len(bodies) == 4
    assert " ".join(bodies).split() == words
    assert all(
        len(b) <= 1600 and m["To"] == PERSON for b, m in zip(bodies, fake_twilio.messages, strict=True)
    )


def test_transient_model_error_is_retried_then_answered(client, worker, fake_model, fake_twilio):
    fake_model.fail_next(status=500)
    fake_model.reply_with("Sorry for the wait.")
    message = text_in(client, "Anyone?")

    wait_answered(message)
    assert len(fake_model.requests) == 2
    assert [m["Body"] for m in fake_twilio.messages] == ["Sorry for the wait."]


def test_permanent_twilio_error_is_recorded_without_retry(
    client, worker, fake_model, fake_twilio, redis_conn
):
    fake_twilio.fail_next(code=21211, status=400)
    message = text_in(client, "Hi")

    wait_for(lambda: reply_state(message) == "failed", 30, message="the failure to be recorded")
    stored = Message.get_by_id(message.id)
    assert stored.error_code == "21211" and stored.error_message
    part = Message.get((Message.role == Role.AGENT.value) & (Message.reply_to == message.id))
    assert (part.status, part.error_code) == ("failed", "21211")
    # FAILED is final: RQ will not run it again (a retry would be SCHEDULED or QUEUED instead).
    wait_for(lambda: job_status(redis_conn, message) == JobStatus.FAILED, message="job failed")
    assert len(fake_twilio.attempts) == 1
    assert len(fake_model.requests) == 1


def test_worker_killed_mid_job_leads_to_exactly_one_reply(
    client, worker, configured, fake_model, fake_twilio, redis_conn
):
    fake_model.latency = 3
    message = text_in(client, "Are you there?")
    fake_model.wait_for_requests(1, timeout=30)
    worker.kill()  # SIGKILL while the model is thinking
    assert job_status(redis_conn, message) == JobStatus.STARTED  # RQ still thinks it runs

    fake_model.latency = 0
    worker.start()
    # The sweep sees the job's worker is dead and hands the job to RQ's abandoned-job handling.
    jobs.sweep_unanswered(min_age_seconds=0)

    wait_answered(message)
    wait_for(lambda: job_status(redis_conn, message) == JobStatus.FINISHED, message="job finished")
    assert jobs.sweep_unanswered(min_age_seconds=0) == 0
    assert len(fake_twilio.messages) == 1
    assert len(Message.select().where(Message.reply_to == message.id)) == 1


def test_redis_down_when_text_arrives_then_answered_once(
    client, worker, configured, redis_server, fake_model, fake_twilio, redis_conn
):
    fake_model.reply_with("Got it.")
    redis_server.stop()
    try:
        message = text_in(client, "Hello while Redis is down")
        assert reply_state(message) == "pending"
    finally:
        redis_server.start()

    assert jobs.sweep_unanswered(min_age_seconds=0) == 1
    wait_answered(message)
    wait_for(lambda: job_status(redis_conn, message) == JobStatus.FINISHED, message="job finished")
    assert jobs.sweep_unanswered(min_age_seconds=0) == 0
    assert [m["Body"] for m in fake_twilio.messages] == ["Got it."]


def test_burst_of_texts_never_overlaps_and_history_is_coherent(client, worker, fake_model, fake_twilio):
    fake_model.latency = 0.5
    fake_model.responder = lambda body: f"reply {len(fake_model.requests)}"
    texts = ["first", "second", "third"]
    messages = [text_in(client, t) for t in texts]

    for message in messages:
        wait_answered(message)
    assert fake_model.max_in_flight == 1  # one reply job per chat at a time
    requests = fake_model.requests
    assert 1 <= len(requests) <= 3
    assert len(fake_twilio.messages) == len(requests)
    # The last prompt holds every text in order, with each earlier reply between them.
    last = requests[-1]["messages"]
    user_text = "\n".join(m["content"] for m in last if m["role"] == "user")
    assert user_text.split("\n") == texts
    replies_seen = [m["content"] for m in last if m["role"] == "assistant"]
    assert replies_seen == [m["Body"] for m in fake_twilio.messages[:-1]]
    roles = [m["role"] for m in last if m["role"] != "system"]
    assert all(a != b for a, b in zip(roles, roles[1:], strict=False))  # turns alternate
