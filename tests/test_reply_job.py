"""The reply job, in process: real openai/twilio clients against the loopback fakes, real RQ."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from rq.job import Job, JobStatus
from rq.rate_limit import RateLimitRegistry

from gateway.agent.analysis import analysis_job_id
from gateway.agent.prompt import build_messages
from gateway.conversations import answering, replies
from gateway.errors import PermanentError, TransientError
from gateway.queue import (
    JobSerializer,
    enqueue_reply,
    fetch_job,
    job_queue,
    queue_name,
    reply_job_id,
    retry_policy,
)
from gateway.storage.models import Agent, Chat, ChatStatus, ChatType, Contact, Message, Role, utcnow
from tests.conftest import PUBLIC_BASE_URL, SimpleWorker
from workers import context, jobs

OUR = "+15550001000"
THEIRS = "+15557654321"


@pytest.fixture
def configured(app, settings):
    """Jobs run in this process see the test settings."""
    context.configure(settings)
    yield settings
    context.configure(None)


def make_chat(**agent_fields) -> Chat:
    """An ongoing SMS chat with a fresh agent."""
    agent_fields.setdefault("system_prompt", "You are a test agent.")
    agent_fields.setdefault("retry_delay", 0)
    agent = Agent.create(**agent_fields)
    return Chat.create(
        agent=agent,
        chat_type=ChatType.SMS.value,
        from_number=OUR,
        to_number=THEIRS,
        ongoing_pair=f"{OUR}|{THEIRS}",
    )


def inbound(chat: Chat, body: str, **kw) -> Message:
    """An inbound SMS waiting for its answer, as the webhook records it."""
    return Message.create(
        chat=chat,
        role=Role.USER.value,
        content=body,
        status="received",
        from_number=THEIRS,
        to_number=OUR,
        reply_state="pending",
        **kw,
    )


def agent_parts(chat: Chat) -> list[Message]:
    """The chat's outbound parts, in order."""
    return list(
        Message.select()
        .where((Message.chat == chat) & (Message.role == Role.AGENT.value))
        .order_by(Message.id)
    )


def fresh(message: Message) -> Message:
    """The message as stored now."""
    return Message.get_by_id(message.id)


def run_jobs(settings, redis_conn) -> None:
    """Run every queued job (and immediate retries) in this process, then return."""
    queue = job_queue(queue_name(settings), redis_conn)
    SimpleWorker([queue], connection=redis_conn, serializer=JobSerializer).work(
        burst=True, with_scheduler=False
    )


def enqueue(settings, redis_conn, message: Message, attempts: int = 2):
    """Enqueue the reply job as the webhook does (retries at once: retry_delay 0)."""
    queue = job_queue(queue_name(settings), redis_conn)
    return enqueue_reply(
        queue,
        chat_id=message.chat_id,
        message_id=message.id,
        retry=retry_policy(attempts, 0),
        check_existing=True,
    )


def test_reply_is_sent_from_our_number_with_status_callback(configured, fake_model, fake_twilio):
    chat = make_chat()
    message = inbound(chat, "Hello?")
    fake_model.reply_with("**Hi!** How can I help?")

    outcome = replies.answer_message(configured, message.id)

    assert outcome.outcome == "answered"
    [sent] = fake_twilio.messages
    assert (sent["From"], sent["To"], sent["Body"]) == (OUR, THEIRS, "Hi! How can I help?")
    assert sent["StatusCallback"] == PUBLIC_BASE_URL + "/twilio/status"
    [part] = agent_parts(chat)
    assert part.twilio_sid == sent["sid"]
    assert part.status == "queued"
    assert part.reply_to_id == message.id
    assert part.part_index == 0
    assert part.prompt_tokens and part.completion_tokens
    assert fresh(message).reply_state == "answered"
    request = fake_model.requests[0]
    assert request["model"] == "fake-model"
    assert request["messages"] == [
        {"role": "system", "content": "You are a test agent."},
        {"role": "user", "content": "Hello?"},
    ]


def test_long_reply_is_split_into_parts_in_order(configured, fake_model, fake_twilio):
    chat = make_chat()
    message = inbound(chat, "Tell me everything")
    words = [f"w{i:04d}" for i in range(700)]  # ~3,500 characters
    fake_model.reply_with(" ".join(words))

    replies.answer_message(configured, message.id)

    bodies = [m["Body"] for m in fake_twilio.messages]
    assert len(bodies) == 3
    assert all(len(b) <= 1600 for b in bodies)
    assert " ".join(bodies).split() == words
    parts = agent_parts(chat)
    assert [p.part_index for p in parts] == [0, 1, 2]
    assert [p.twilio_sid for p in parts] == [m["sid"] for m in fake_twilio.messages]
    assert parts[0].prompt_tokens is not None and parts[1].prompt_tokens is None
    # The next prompt sees the split reply as one assistant turn.
    inbound(chat, "thanks")
    history = build_messages(Chat.get_by_id(chat.chat_id), chat.agent, configured)
    assert [m["role"] for m in history] == ["system", "user", "assistant", "user"]
    assert history[2]["content"].split() == words


def test_pending_burst_gets_one_answer(configured, fake_model, fake_twilio):
    chat = make_chat()
    first = inbound(chat, "hi")
    second = inbound(chat, "are you there?")
    third = inbound(chat, "hello??")
    fake_model.reply_with("Yes, I'm here.")

    assert replies.answer_message(configured, first.id).covered == (first.id, second.id, third.id)
    assert replies.answer_message(configured, second.id).outcome == "skipped"
    assert replies.answer_message(configured, third.id).outcome == "skipped"

    assert len(fake_model.requests) == 1
    assert fake_model.requests[0]["messages"][-1] == {
        "role": "user",
        "content": "hi\nare you there?\nhello??",
    }
    assert [m["Body"] for m in fake_twilio.messages] == ["Yes, I'm here."]
    assert {fresh(m).reply_state for m in (first, second, third)} == {"answered"}
    assert agent_parts(chat)[0].reply_to_id == third.id


def test_stored_reply_is_resent_without_asking_the_model_again(configured, fake_model, fake_twilio):
    """A previous attempt stored the parts and sent the first, then died: only the rest go out."""
    chat = make_chat()
    message = inbound(chat, "question")
    now = utcnow()
    common = dict(chat=chat, role="agent", from_number=OUR, to_number=THEIRS, reply_to=message)
    Message.create(content="part one", part_index=0, status="sent", twilio_sid="SM" + "a" * 32, **common)
    Message.create(content="part two", part_index=1, status="queued", **common)
    # Claimed by an attempt that died mid-send long ago (its lease ran out).
    Message.create(
        content="part three", part_index=2, status="sending", updated_at=now - timedelta(minutes=5), **common
    )

    outcome = replies.answer_message(configured, message.id)

    assert outcome.parts_sent == 2
    assert fake_model.requests == []
    assert [m["Body"] for m in fake_twilio.messages] == ["part two", "part three"]
    assert fresh(message).reply_state == "answered"
    assert all(p.twilio_sid for p in agent_parts(chat))


def test_a_part_being_sent_by_a_live_attempt_is_not_sent_twice(configured, fake_model, fake_twilio):
    chat = make_chat()
    message = inbound(chat, "question")
    Message.create(
        chat=chat, role="agent", content="in flight", part_index=0, status="sending", reply_to=message
    )
    with pytest.raises(TransientError):
        replies.answer_message(configured, message.id, last_attempt=True)  # the other attempt decides
    assert fake_twilio.messages == [] and fake_model.requests == []
    assert fresh(message).reply_state == "pending"


def test_answered_and_opted_out_messages_get_no_reply(configured, fake_model, fake_twilio):
    chat = make_chat()
    done = inbound(chat, "old")
    Message.update(reply_state="answered").where(Message.id == done.id).execute()
    assert replies.answer_message(configured, done.id).outcome == "skipped"

    Contact.create(our_number=OUR, phone_number=THEIRS, opted_out=True)
    message = inbound(chat, "hi")
    assert replies.answer_message(configured, message.id).outcome == "opted_out"
    assert fresh(message).reply_state == "none"
    assert fake_model.requests == [] and fake_twilio.messages == []


def test_offline_responder_answers_without_a_model(configured, fake_twilio, settings_with):
    chat = make_chat()
    message = inbound(chat, "ping")
    offline = settings_with(openai_api_key=None, openai_base_url=None)
    replies.answer_message(offline, message.id)
    [sent] = fake_twilio.messages
    assert sent["Body"].startswith("[offline responder") and "ping" in sent["Body"]


def test_transient_model_error_is_retried_by_rq(configured, redis_conn, fake_model, fake_twilio):
    chat = make_chat()
    message = inbound(chat, "hello")
    fake_model.fail_next(status=500)
    fake_model.reply_with("Back again.")
    job = enqueue(configured, redis_conn, message)

    run_jobs(configured, redis_conn)

    assert len(fake_model.requests) == 2
    assert [m["Body"] for m in fake_twilio.messages] == ["Back again."]
    assert fresh(message).reply_state == "answered"
    assert fetch_job(job.id, redis_conn).get_status() == JobStatus.FINISHED


def test_transient_errors_until_retries_run_out_are_recorded(configured, redis_conn, fake_model, fake_twilio):
    chat = make_chat()
    message = inbound(chat, "hello")
    fake_model.fail_next(status=503, times=10)
    job = enqueue(configured, redis_conn, message, attempts=2)

    run_jobs(configured, redis_conn)

    assert len(fake_model.requests) == 3  # the first try and two retries
    stored = fresh(message)
    assert (stored.reply_state, stored.error_code) == ("failed", "503")
    assert "503" in stored.error_message
    assert fetch_job(job.id, redis_conn).get_status() == JobStatus.FAILED
    # The person is not left waiting in silence (tests/test_fallback.py).
    assert [m["Body"] for m in fake_twilio.messages] == [answering.FALLBACK_MESSAGE]


def test_permanent_model_error_fails_the_job_without_retry(configured, redis_conn, fake_model, fake_twilio):
    chat = make_chat()
    message = inbound(chat, "hello")
    fake_model.fail_next(status=404, times=10)
    job = enqueue(configured, redis_conn, message, attempts=3)

    run_jobs(configured, redis_conn)

    assert len(fake_model.requests) == 1
    stored = fresh(message)
    assert (stored.reply_state, stored.error_code) == ("failed", "404")
    job = fetch_job(job.id, redis_conn)
    assert job.get_status() == JobStatus.FAILED
    assert job.id in job_queue(queue_name(configured), redis_conn).failed_job_registry
    assert "PermanentError" in (job.latest_result().exc_string or "")


def test_permanent_twilio_error_is_recorded_without_retry(configured, redis_conn, fake_model, fake_twilio):
    chat = make_chat()
    message = inbound(chat, "hello")
    fake_twilio.fail_next(code=21211, status=400)
    job = enqueue(configured, redis_conn, message, attempts=3)

    run_jobs(configured, redis_conn)

    assert len(fake_twilio.attempts) == 1
    assert len(fake_model.requests) == 1
    stored = fresh(message)
    assert (stored.reply_state, stored.error_code) == ("failed", "21211")
    [part] = agent_parts(chat)
    assert (part.status, part.error_code, part.twilio_sid) == ("failed", "21211", None)
    assert fetch_job(job.id, redis_conn).get_status() == JobStatus.FAILED


def test_twilio_opt_out_error_marks_the_contact(configured, fake_model, fake_twilio):
    chat = make_chat()
    message = inbound(chat, "hello")
    fake_twilio.fail_next(code=21610, status=400)
    with pytest.raises(PermanentError):
        replies.answer_message(configured, message.id)
    contact = Contact.get((Contact.our_number == OUR) & (Contact.phone_number == THEIRS))
    assert contact.opted_out and contact.opted_out_at
    later = inbound(chat, "hello again")
    assert replies.answer_message(configured, later.id).outcome == "opted_out"
    assert len(fake_twilio.attempts) == 1


def test_transient_twilio_error_resends_only_the_unsent_part(configured, redis_conn, fake_model, fake_twilio):
    chat = make_chat()
    message = inbound(chat, "hello")
    fake_model.reply_with("x" * 1500 + " " + "y" * 1500)

    fake_twilio.fail_next(code=20429, status=429)  # the first part is refused once
    enqueue(configured, redis_conn, message)
    run_jobs(configured, redis_conn)

    assert len(fake_model.requests) == 1  # the stored reply is resent, not regenerated
    assert [m["Body"][0] for m in fake_twilio.messages] == ["x", "y"]
    assert fresh(message).reply_state == "answered"


def test_sweep_enqueues_messages_without_a_live_job(configured, redis_conn, fake_model, fake_twilio):
    chat = make_chat()
    old = inbound(chat, "recorded while Redis was down", created_at=utcnow() - timedelta(minutes=1))
    too_young = inbound(chat, "just now")
    Message.create(
        chat=chat,
        role="user",
        content="ancient",
        reply_state="pending",
        created_at=utcnow() - jobs.SWEEP_MAX_AGE - timedelta(hours=1),
    )

    assert jobs.sweep_unanswered() == 1
    assert fetch_job(reply_job_id(old.id), redis_conn).get_status() == JobStatus.QUEUED
    assert jobs.sweep_unanswered() == 0  # already queued: not twice

    run_jobs(configured, redis_conn)
    # The job answered the whole pending burst, the young message included.
    assert fresh(old).reply_state == "answered" and fresh(too_young).reply_state == "answered"
    assert len(fake_twilio.messages) == 1


def test_sweep_frees_a_chat_slot_left_held_by_a_worker_killed_after_its_job_finished(
    configured, redis_conn, fake_model, fake_twilio
):
    """A worker SIGKILLed between recording a job's success and releasing the chat's RateLimit slot
    leaves the chat's next reply waiting behind a job that will never run again: the sweep frees it."""
    chat = make_chat()
    first = inbound(chat, "first", created_at=utcnow() - timedelta(minutes=2))
    enqueue(configured, redis_conn, first)
    run_jobs(configured, redis_conn)
    assert fresh(first).reply_state == "answered"
    # What the killed worker left: the finished job still holding the chat's only slot.
    holder = fetch_job(reply_job_id(first.id), redis_conn)
    assert holder.get_status() == JobStatus.FINISHED
    registry = RateLimitRegistry.from_job(holder)
    redis_conn.zadd(registry.allowed_key, {holder.id: time.time()})
    redis_conn.hset(registry.config_key, "concurrency", 1)
    redis_conn.sadd(registry.rl_keys_key, registry.key)

    second = inbound(chat, "second", created_at=utcnow() - timedelta(minutes=1))
    waiting = enqueue(configured, redis_conn, second)
    assert waiting.get_status() == JobStatus.RATE_LIMITED
    # Stuck behind the leaked slot: no worker can dequeue it (RQ's own maintenance runs rarely).
    assert job_queue(queue_name(configured), redis_conn).get_job_ids() == []

    assert jobs.sweep_unanswered() == 0  # its job is live again (queued), not enqueued twice
    assert fetch_job(reply_job_id(second.id), redis_conn).get_status() == JobStatus.QUEUED
    run_jobs(configured, redis_conn)
    assert fresh(second).reply_state == "answered"
    assert len(fake_twilio.messages) == 2


def test_sweep_hands_back_a_started_job_of_a_dead_worker_that_has_no_registry_entry(
    configured, redis_conn, fake_model, fake_twilio
):
    """A job left STARTED by a dead worker, with its StartedJobRegistry entry already gone (a cleanup
    racing the kill), would look live for ever: the sweep hands it to RQ's retry all the same."""
    chat = make_chat()
    message = inbound(chat, "hello", created_at=utcnow() - timedelta(minutes=1))
    job = enqueue(configured, redis_conn, message)
    job_queue(queue_name(configured), redis_conn).remove(job.id)
    job.worker_name = "worker-that-is-gone"  # no registration: dead
    job.save()
    job.set_status(JobStatus.STARTED)

    assert jobs.sweep_unanswered() == 0  # handed to RQ's retry (queued again), not enqueued twice
    assert fetch_job(reply_job_id(message.id), redis_conn).get_status() == JobStatus.QUEUED
    run_jobs(configured, redis_conn)
    assert fresh(message).reply_state == "answered"
    assert len(fake_twilio.messages) == 1


def test_sweep_replaces_a_failed_job(configured, redis_conn, fake_model, fake_twilio):
    chat = make_chat()
    message = inbound(chat, "hello", created_at=utcnow() - timedelta(minutes=1))
    job = enqueue(configured, redis_conn, message)
    job.set_status(JobStatus.FAILED)  # as RQ leaves a job abandoned with no retries left

    assert jobs.sweep_unanswered() == 1
    run_jobs(configured, redis_conn)
    assert fresh(message).reply_state == "answered"
    assert len(fake_twilio.messages) == 1


def test_close_silent_chats(configured, fake_twilio, redis_conn):
    silent = make_chat(
        end_chat_after_silence_ms=60_000, auto_close_message="Chat closed. Text again anytime!"
    )
    Chat.update(last_activity_at=utcnow() - timedelta(minutes=2)).where(
        Chat.chat_id == silent.chat_id
    ).execute()
    active = Chat.create(
        agent=silent.agent, chat_type=ChatType.SMS.value, from_number=OUR, to_number="+15550000009"
    )
    api_chat = Chat.create(agent=silent.agent, last_activity_at=utcnow() - timedelta(minutes=5))

    assert jobs.close_silent_chats() == 2
    assert jobs.close_silent_chats() == 0  # never twice

    ended = Chat.get_by_id(silent.chat_id)
    assert (ended.chat_status, ended.end_reason, ended.ongoing_pair) == (
        ChatStatus.ENDED.value,
        "inactivity",
        None,
    )
    assert ended.end_timestamp is not None
    assert Chat.get_by_id(active.chat_id).chat_status == "ongoing"
    assert Chat.get_by_id(api_chat.chat_id).chat_status == "ended"
    [sent] = fake_twilio.messages
    assert (sent["From"], sent["To"], sent["Body"]) == (OUR, THEIRS, "Chat closed. Text again anytime!")
    [closing] = agent_parts(silent)
    assert closing.twilio_sid == sent["sid"]
    # Each ended chat gets its post-chat analysis queued.
    for chat in (silent, api_chat):
        assert Job.exists(analysis_job_id(chat.chat_id), connection=redis_conn)


def test_a_long_answer_is_bounded_and_max_tokens_is_asked(configured, fake_model, fake_twilio):
    """The model is asked with the agent's max_tokens; an essay becomes at most max_reply_parts texts."""
    chat = make_chat(max_tokens=300, max_reply_parts=3)
    message = inbound(chat, "Tell me everything")
    fake_model.reply_with("blah " * 20_000)

    outcome = replies.answer_message(configured, message.id)

    assert fake_model.requests[-1]["max_tokens"] == 300
    assert outcome.parts_sent == 3
    assert len(fake_twilio.messages) == 3
    assert fake_twilio.messages[-1]["Body"].endswith("…")
