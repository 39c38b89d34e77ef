"""The sweep makes up for jobs an outage lost: memory updates (summary, profile) and post-chat analyses.

In-process and quick (no worker): the jobs are looked for in Redis, as a worker would find them.
"""

from __future__ import annotations

import pytest

from gateway.agent.analysis import analysis_job_id
from gateway.agent.memory import profile_job_id, summary_job_id
from gateway.conversations.agents import default_agent
from gateway.queue import job_queue, job_status, queue_name
from gateway.storage.models import Agent, Chat, Message, utcnow
from tests.payloads import OUR_NUMBER, PERSON
from workers import context, memory_jobs


@pytest.fixture
def queue(app, settings, redis_conn):
    """The gateway's queue on the test Redis; jobs called in-process see the test settings."""
    context.configure(settings)
    yield job_queue(queue_name(settings), redis_conn)
    context.configure(None)


def chat_with_texts(status: str = "ongoing") -> Chat:
    """An SMS chat of the default agent with a text and a reply, as if answered while Redis was down."""
    chat = Chat.create(
        agent=default_agent(),
        chat_type="sms_chat",
        chat_status=status,
        from_number=OUR_NUMBER,
        to_number=PERSON,
        ongoing_pair=f"{OUR_NUMBER}|{PERSON}" if status == "ongoing" else None,
        end_timestamp=utcnow() if status != "ongoing" else None,
    )
    Message.create(chat=chat, role="user", content="hi", status="received", reply_state="answered")
    Message.create(chat=chat, role="agent", content="hello", status="delivered", twilio_sid="SM" + "1" * 32)
    return chat


def test_summary_update_lost_to_an_outage_is_queued_once(queue, redis_conn):
    """A due summary update with no job in Redis (never queued, or lost with Redis) is queued, once."""
    chat = chat_with_texts()
    Agent.update(summary_memory=True, full_session_memory=False).execute()

    assert memory_jobs.sweep_memory(queue_settings(), queue, utcnow()) == 1
    assert job_status(redis_conn, summary_job_id(chat.chat_id)) is not None
    assert memory_jobs.sweep_memory(queue_settings(), queue, utcnow()) == 0  # queued already


def test_analysis_and_profile_of_a_chat_that_ended_during_an_outage_are_queued(queue, redis_conn):
    """A chat that ended while Redis was down has no analysis job and a profile update due: both queued."""
    chat = chat_with_texts(status="ended")
    Agent.update(user_analysis_memory=True).execute()

    assert memory_jobs.sweep_memory(queue_settings(), queue, utcnow()) == 2
    assert job_status(redis_conn, analysis_job_id(chat.chat_id)) is not None
    assert job_status(redis_conn, profile_job_id(f"phone:{PERSON}")) is not None
    assert memory_jobs.sweep_memory(queue_settings(), queue, utcnow()) == 0


def queue_settings():
    """The settings the jobs see (the test's)."""
    return context.get_settings()
