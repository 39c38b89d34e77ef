"""RQ jobs for agent memory and post-chat analysis (enqueued by dotted path from gateway.memory/analysis).

Each job reads its settings from workers.context and lets errors reach RQ: TransientError (a model
timeout, a 5xx, an analysis that was not JSON) is retried by the job's Retry policy, anything else
fails the job where `rq` shows it. They are idempotent: each re-reads the database and writes
conditionally, so a duplicate run costs at most a model call.
"""

from __future__ import annotations

import logging

from rq import Queue

from gateway.agent import analysis, memory
from gateway.storage.db import database
from gateway.storage.models import Agent, Chat, Message
from workers.context import get_settings

log = logging.getLogger(__name__)


def update_summary(chat_id: str) -> str:
    """Fold a chat's newest messages into its rolling summary, when due; returns the outcome."""
    outcome = memory.update_summary(get_settings(), chat_id)
    return f"{outcome.outcome}: {outcome.detail}".rstrip(": ")


def update_profile(profile_key: str) -> str:
    """Fold a person's unread messages into their profile, when due; returns the outcome."""
    outcome = memory.update_profile(get_settings(), profile_key)
    return f"{outcome.outcome}: {outcome.detail}".rstrip(": ")


def analyze_chat(chat_id: str) -> dict | None:
    """Analyse an ended chat into chat.chat_analysis; first queue the flush of the person's profile."""
    settings = get_settings()
    flush_profile(chat_id)
    return analysis.analyze_chat(settings, chat_id)


def after_reply(message_id: int) -> None:
    """The reply to inbound `message_id` was sent: queue the memory updates its agent asks for.

    Called by the reply job (workers.jobs). Never raises: the reply is out already, and a missed
    update is made up by the next turn's (see gateway.memory.schedule_after_turn).
    """
    try:
        with database.connection_context():
            chat_id = Message.select(Message.chat).where(Message.id == message_id).scalar()
            chat = Chat.get_or_none(Chat.chat_id == chat_id) if chat_id else None
            agent = Agent.get_or_none(Agent.agent_id == chat.agent_id) if chat else None
        if chat is None or agent is None:
            return
        memory.schedule_after_turn(job_queue(), chat, agent)
    except Exception:
        log.exception("memory: could not queue the memory updates after the reply to message %s", message_id)


def flush_profile(chat_id: str) -> None:
    """A chat ended: queue its person's profile update (due now, see gateway.memory.profile_due)."""
    with database.connection_context():
        chat = Chat.get_or_none(Chat.chat_id == chat_id)
        agent = Agent.get_or_none(Agent.agent_id == chat.agent_id) if chat is not None else None
    if chat is None or agent is None or not agent.user_analysis_memory:
        return
    key = memory.profile_key_for(chat)
    queue = job_queue()
    if key is not None and queue is not None:
        memory.schedule_profile(queue, key, agent)


def job_queue() -> Queue | None:
    """The queue of the job running in this thread (or, outside a job, the gateway's queue)."""
    return memory.queue_for(get_settings())
