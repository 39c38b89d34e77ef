"""RQ jobs for agent memory and post-chat analysis (enqueued by dotted path from gateway.memory/analysis).

Each job reads its settings from workers.context and lets errors reach RQ: TransientError (a model
timeout, a 5xx, an analysis that was not JSON) is retried by the job's Retry policy, anything else
fails the job where `rq` shows it. They are idempotent: each re-reads the database and writes
conditionally, so a duplicate run costs at most a model call.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from rq import Queue

from gateway.agent import analysis, memory
from gateway.agent.analysis import analysis_job_id, schedule_analysis
from gateway.agent.memory import (
    profile_due,
    profile_job_id,
    profile_key_for,
    schedule_profile,
    schedule_summary,
    summary_due,
    summary_job_id,
)
from gateway.config import Settings
from gateway.queue import job_status
from gateway.storage.db import database
from gateway.storage.models import Agent, Chat, ChatStatus, Message, UserProfile, utcnow
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


# Chats active this recently (and ended this recently, for analysis) are looked at by the sweep.
MEMORY_SWEEP_WINDOW = timedelta(hours=2)
MEMORY_SWEEP_BATCH = 200


def sweep_memory(settings: Settings, queue: Queue, older_than: datetime) -> int:
    """Queue the memory jobs an outage lost: a summary or profile that is due, an analysis never made.

    Like the reply sweep, only for work whose job does not exist at all (it was never queued,
    or Redis lost it): a job that failed is left where `rq` shows it, not retried forever.
    Chats whose last activity is between MEMORY_SWEEP_WINDOW ago and `older_than` are read.
    """
    connection = queue.connection
    since = utcnow() - MEMORY_SWEEP_WINDOW
    enqueued = 0
    with database.connection_context():
        ended = list(
            Chat.select(Chat.chat_id)
            .where(
                (Chat.chat_status != ChatStatus.ONGOING.value)
                & Chat.chat_analysis.is_null()
                & (Chat.end_timestamp >= since)
                & (Chat.end_timestamp <= older_than)
            )
            .limit(MEMORY_SWEEP_BATCH)
            .tuples()
        )
        active = list(
            Chat.select(Chat, Agent)
            .join(Agent, on=(Chat.agent == Agent.agent_id))
            .where(
                (Agent.summary_memory | Agent.user_analysis_memory)
                & (Chat.last_activity_at >= since)
                & (Chat.last_activity_at <= older_than)
            )
            .limit(MEMORY_SWEEP_BATCH)
        )
        due: list[tuple[str, str, Chat, Agent]] = []
        for chat in active:
            agent = chat.agent
            if agent.summary_memory and summary_due(chat, agent):
                due.append(("summary", chat.chat_id, chat, agent))
            key = profile_key_for(chat) if agent.user_analysis_memory else None
            if key is not None:
                profile = UserProfile.get_or_none(UserProfile.key == key)
                if profile_due(key, profile.last_message_id if profile else None):
                    due.append(("profile", key, chat, agent))
    if settings.model_configured:
        for (chat_id,) in ended:
            if _no_job(connection, analysis_job_id(chat_id)) and schedule_analysis(queue, chat_id):
                enqueued += 1
                log.info("sweep: queued the lost analysis of chat %s", chat_id)
    seen: set[tuple[str, str]] = set()
    for kind, key, _chat, agent in due:
        if (kind, key) in seen:
            continue
        seen.add((kind, key))
        base = summary_job_id(key) if kind == "summary" else profile_job_id(key)
        if not (_no_job(connection, base) and _no_job(connection, f"{base}-again")):
            continue
        job = (
            schedule_summary(queue, key, agent) if kind == "summary" else schedule_profile(queue, key, agent)
        )
        if job is not None:
            enqueued += 1
            log.info("sweep: queued the lost %s update of %s", kind, key)
    return enqueued


def _no_job(connection, job_id: str) -> bool:
    """True when RQ has no job with this id (never queued, or lost with Redis's data)."""
    return job_status(connection, job_id) is None
