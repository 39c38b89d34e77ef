"""RQ job functions, enqueued by dotted path: the reply to a message and the periodic sweeps.

The jobs are thin: the reply logic lives in gateway/conversations/replies.py. Jobs run in threads of one
worker process (workers/pool.py), so everything here is thread-safe: the settings come from
workers.context, the model and Twilio clients are built once per process, and each database
phase opens and closes its own connection.
"""

from __future__ import annotations

import contextlib
import logging
import math
from datetime import timedelta

from peewee import fn
from redis import Redis
from rq import Queue, get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.rate_limit import RateLimitRegistry

from gateway import events, metrics
from gateway.agent.analysis import schedule_analysis
from gateway.config import Settings
from gateway.conversations import lifecycle, operator, outbound, replies, retention, tool_actions
from gateway.errors import GatewayError, PermanentError
from gateway.queue import (
    JobSerializer,
    enqueue_opening,
    enqueue_reply,
    fetch_job,
    job_is_live,
    job_queue,
    opening_job_id,
    queue_name,
    redis_for,
    reply_job_id,
    retry_policy,
)
from gateway.storage import db
from gateway.storage.db import database
from gateway.storage.models import (
    Agent,
    Chat,
    ChatStatus,
    ChatType,
    Message,
    MessageStatus,
    ReplyState,
    Role,
    utcnow,
)
from gateway.twilio.senders import SenderPaced
from gateway.twilio.statuses import apply_early_statuses
from workers import memory_jobs
from workers.context import get_settings
from workers.pool import expire_abandoned, run_now, worker_is_dead

log = logging.getLogger(__name__)

# Older than this, a text is not answered any more: a reply days late confuses more than it helps.
SWEEP_MAX_AGE = timedelta(days=2)
# Messages looked at per sweep run (oldest first); the next run takes the rest.
SWEEP_BATCH = 500


def reply_to_message(message_id: int) -> dict:
    """Answer inbound SMS `message_id`; RQ retries transient failures, never permanent ones."""
    settings = _settings()
    outcome = _attempt(lambda last: replies.answer_message(settings, message_id, last_attempt=last))
    count_reply_outcome(outcome)
    if outcome.action is not None:
        # The reply is out; now end the chat or hand it to a human, as the model asked.
        _do_tool_action(settings, message_id, outcome)
    if outcome.outcome == "answered":
        memory_jobs.after_reply(outcome.covered[-1] if outcome.covered else message_id)  # never raises
    return {
        "outcome": outcome.outcome,
        "message_id": outcome.message_id,
        "parts_sent": outcome.parts_sent,
        "covered": list(outcome.covered),
    }


def _do_tool_action(settings: Settings, message_id: int, outcome: replies.ReplyOutcome) -> None:
    """Do the built-in tool call a reply ended with (end_chat, handoff_to_human). Never raises."""
    with database.connection_context():
        reply = (
            Message.get_or_none(Message.id == outcome.reply_message_id) if outcome.reply_message_id else None
        )
        chat_id = Message.select(Message.chat).where(Message.id == message_id).scalar()
    if chat_id is None:
        return
    message = None
    if reply is not None:
        message = {"message_id": f"msg_{reply.id}", "role": reply.role, "content": reply.content}
    queue = job_queue(queue_name(settings), _redis(settings))
    tool_actions.perform(settings, queue, chat_id, outcome.action, message)


# Reply outcomes counted in smsgw_texts_received_total ("skipped": another attempt counted them).
COUNTED_OUTCOMES = ("answered", "fallback", "opted_out", "rate_limited", "budget_exhausted", "held")


def count_reply_outcome(outcome: replies.ReplyOutcome) -> None:
    """Count the texts a reply answered (and how long the oldest waited for it) in the metrics."""
    if outcome.outcome not in (
        "answered",
        "fallback",
        "opted_out",
        "rate_limited",
        "budget_exhausted",
        "held",
    ):
        return  # skipped: another attempt answered and counted them
    metrics.count("texts_received", len(outcome.covered) or 1, outcome=outcome.outcome)
    if outcome.outcome in ("answered", "fallback") and outcome.covered:
        with database.connection_context():
            received = Message.select(Message.created_at).where(Message.id == outcome.covered[0]).scalar()
        if received is not None:
            metrics.observe("reply_delay_seconds", (utcnow() - received).total_seconds())


def send_opening(chat_id: str) -> dict:
    """Write (if the caller did not) and send the opening text of outbound SMS chat `chat_id`."""
    settings = _settings()
    sent = _attempt(lambda last: outbound.send_opening(settings, chat_id, last_attempt=last))
    return {"chat_id": chat_id, "parts_sent": sent}


def send_operator_parts(chat_id: str) -> dict:
    """Send the unsent parts an operator wrote in SMS chat `chat_id` (human takeover)."""
    settings = _settings()
    sent = _attempt(lambda last: operator.send_operator_parts(settings, chat_id))
    return {"chat_id": chat_id, "parts_sent": sent}


def _attempt(run):
    """Run one attempt of a sending job, telling it whether it is the last; a permanent error ends it.

    RQ retries while retries_left > 0; with none left (or no Retry at all) this is the last try.
    On PermanentError, handle_job_failure reads this very Job object: with no retries left it
    records the job FAILED (with the traceback) instead of scheduling another attempt.
    """
    job = get_current_job()
    # SQLite has no pool to give a connection back to: one connection for the whole attempt
    # (the phases' own connection contexts nest in it) saves reopening it for every phase.
    # PostgreSQL's phases keep returning theirs to the pool while the model is waited on.
    keep = database.connection_context() if db.is_sqlite() else contextlib.nullcontext()
    last = job is None or not job.retries_left
    try:
        with keep:
            return run(last)
    except SenderPaced as exc:
        # The number is at its send rate (a TransientError, so caught before GatewayError): no
        # failure, and no retry of the agent's used up; the job comes back when its slot nears.
        if job is not None:
            _come_back_after(job, exc.wait)
        raise
    except GatewayError as exc:
        # One line per failed attempt, no traceback (gateway.logs drops RQ's for these errors).
        final = last or isinstance(exc, PermanentError)
        log.warning(
            "%s: attempt failed at %s: %s (%s)",
            job.description if job is not None else "job",
            exc.endpoint or "the gateway",
            exc,
            "giving up" if final else "will retry",
            extra={"endpoint": exc.endpoint, "code": exc.code, "job_id": job.id if job is not None else None},
        )
        if isinstance(exc, PermanentError) and job is not None:
            job.retries_left = 0
        raise


def _come_back_after(job: Job, wait: float) -> None:
    """Have RQ run the job again after `wait` seconds without using up one of its retries.

    RQ's retry path (handle_job_failure -> Job.retry) reads this very Job object: one more retry
    is granted, scheduled after `wait`, and the intervals of the retries left stay what they were.
    """
    left = job.retries_left or 0
    intervals = list(job.retry_intervals or [0])

    def original(retries_left: int) -> int:
        return intervals[max(len(intervals) - retries_left, 0)]

    # Job.get_retry_interval picks index len - retries_left: ours first, then the old ones in order.
    job.retry_intervals = [max(1, math.ceil(wait))] + [original(r) for r in range(left, 0, -1)]
    job.retries_left = left + 1


def close_silent_chats() -> int:
    """End chats silent for longer than their agent allows (sending its closing text); how many."""
    settings = _settings()
    queue = job_queue(queue_name(settings), _redis(settings))

    def on_ended(chat_id: str) -> None:
        schedule_analysis(queue, chat_id)
        events.emit(queue, settings, events.CHAT_ENDED, chat_id)

    return lifecycle.close_silent_chats(settings, on_ended=on_ended)


def delete_expired_messages() -> dict:
    """Delete messages older than RETENTION_DAYS (nothing when it is unset); the counts deleted."""
    return retention.delete_expired(_settings().retention_days)


def sweep_unanswered(min_age_seconds: float | None = None) -> int:
    """Enqueue the reply to every pending inbound message whose reply job is not live; how many.

    This answers messages recorded while Redis was down (the webhook could not enqueue), and
    messages whose job was lost: failed for good in RQ's eyes, deleted, or abandoned by a worker
    that was killed (see `_job_is_live`).
    """
    settings = _settings()
    connection = _redis(settings)
    queue = job_queue(queue_name(settings), connection)
    min_age = timedelta(seconds=settings.sweep_min_age if min_age_seconds is None else min_age_seconds)
    now = utcnow()
    with database.connection_context():
        rows = list(
            Message.select(Message.id, Chat.chat_id, Agent.retry_attempts, Agent.retry_delay)
            .join(Chat, on=(Message.chat == Chat.chat_id))
            .join(Agent, on=(Chat.agent == Agent.agent_id))
            .where(
                (Message.reply_state == ReplyState.PENDING.value)
                & (Message.role == Role.USER.value)
                & (Message.created_at <= now - min_age)
                & (Message.created_at >= now - SWEEP_MAX_AGE)
            )
            .order_by(Message.id)
            .limit(SWEEP_BATCH)
            .tuples()
        )
    enqueued = 0
    dead_workers: dict[str, bool] = {}  # worker name -> dead? (asked once per sweep)
    for message_id, chat_id, attempts, delay in rows:
        if _job_is_live(connection, reply_job_id(message_id), dead_workers):
            continue
        job = enqueue_reply(
            queue,
            chat_id=chat_id,
            message_id=message_id,
            retry=retry_policy(attempts, delay),
            check_existing=True,
        )
        if job is not None:
            enqueued += 1
            log.info("sweep: enqueued the reply to unanswered message %s", message_id)
    with database.connection_context():
        apply_early_statuses()  # status callbacks that arrived before their SID was stored
    enqueued += memory_jobs.sweep_memory(settings, queue, now - min_age)
    return enqueued + _sweep_openings(settings, queue, now - min_age, dead_workers)


def _sweep_openings(settings: Settings, queue: Queue, older_than, dead_workers: dict[str, bool]) -> int:
    """Enqueue the opening of outbound chats whose opening was never written or never all sent."""
    connection = queue.connection
    has_messages = Message.select(Message.id).where(Message.chat == Chat.chat_id)
    unsent_opening = Message.select(Message.id).where(
        (Message.chat == Chat.chat_id)
        & (Message.role == Role.AGENT.value)
        & Message.reply_to.is_null()
        & Message.twilio_sid.is_null()
        & (Message.status == MessageStatus.QUEUED.value)
    )
    with database.connection_context():
        rows = list(
            Chat.select(Chat.chat_id, Agent.retry_attempts, Agent.retry_delay)
            .join(Agent, on=(Chat.agent == Agent.agent_id))
            .where(
                (Chat.chat_status == ChatStatus.ONGOING.value)
                & (Chat.chat_type == ChatType.SMS.value)
                & Chat.operator_held_at.is_null()  # an operator writes a held chat's first text
                & (Chat.start_timestamp <= older_than)
                & (Chat.start_timestamp >= older_than - SWEEP_MAX_AGE)
                # An opening waiting for the agent's sending hours has its activity time then.
                & (Chat.last_activity_at <= older_than)
                & (~fn.EXISTS(has_messages) | fn.EXISTS(unsent_opening))
            )
            .order_by(Chat.start_timestamp)
            .limit(SWEEP_BATCH)
            .tuples()
        )
    enqueued = 0
    for chat_id, attempts, delay in rows:
        if _job_is_live(connection, opening_job_id(chat_id), dead_workers):
            continue
        if enqueue_opening(queue, chat_id=chat_id, retry=retry_policy(attempts, delay), check_existing=True):
            enqueued += 1
            log.info("sweep: enqueued the opening text of outbound chat %s", chat_id)
    return enqueued


def _job_is_live(connection: Redis, job_id: str, dead_workers: dict[str, bool] | None = None) -> bool:
    """True when the job will still run (gateway.queue.job_is_live); a dead job is cleared.

    A job STARTED by a worker that is known to be dead (same host, its process is gone) is handed
    to RQ's own abandoned-job handling right away, instead of waiting up to ~90 s for its
    heartbeat to expire: RQ then retries it (if it has retries left) or fails it. A failed,
    stopped, canceled or finished job of a message that is still pending is deleted (which
    also removes it from RQ's registries) so the same job id can be enqueued again. A job waiting
    on its chat's rate-limit slot held by a job that already ended gets the slot freed first.
    """

    def settle(job: Job) -> JobStatus | None:
        """The job's status once a slot or a start left by a dead worker is settled (None: gone)."""
        status = job.get_status(refresh=False)
        if status == JobStatus.RATE_LIMITED and job.rate_limit_key:
            status = _unblock_rate_limit(job)
        if status == JobStatus.STARTED and worker_is_dead(connection, job.worker_name, dead_workers):
            log.warning("sweep: job %s was abandoned by dead worker %s", job_id, job.worker_name)
            expire_abandoned(connection, job, serializer=JobSerializer)
            # RQ may have scheduled the retry after its backoff; the death was no service's fault.
            run_now(connection, job_id, serializer=JobSerializer)
            try:
                status = fetch_job(job_id, connection).get_status(refresh=False)
            except NoSuchJobError:
                return None
        return status

    return job_is_live(connection, job_id, settle=settle, clear_dead=True)


def _unblock_rate_limit(job: Job) -> JobStatus | None:
    """Free the chat's slot if a finished or failed job still holds it; the waiting job's status then.

    RQ releases a job's RateLimit slot just after the transaction that records its outcome: a
    worker SIGKILLed between the two leaves the slot held by a job that will never run again, and
    the chat's next reply waits behind it until RQ's maintenance (every minute or more) frees it.
    RQ's registry cleanup frees only slots whose job is neither queued nor started (nor still
    executing), so a live holder keeps its slot.
    """
    RateLimitRegistry.from_job(job).cleanup()
    return job.get_status(refresh=True)


def _settings() -> Settings:
    """The process's settings, with the database opened if nobody opened it yet."""
    settings = get_settings()
    if database.obj is None:
        db.open_from_settings(settings, check=False)
    return settings


def _redis(settings: Settings) -> Redis:
    """The running job's Redis connection, else this process's client for REDIS_URL (gateway.queue)."""
    client = redis_for(settings)
    if client is None:
        raise RuntimeError("REDIS_URL is not set")
    return client
