"""A person, by their phone number: what is stored about them, their opt-out state, export and erasure.

Everything the gateway keeps about a person hangs off their number: their contact rows (one per
our number, with the opt-out state), their SMS chats (`Chat.to_number`) with every message and
its media references, API chats whose `user_id` is the number, their profile (`phone:<number>`),
the idempotency keys whose stored answer names them, the jobs queued for those chats and
messages (event deliveries included), and the spend guard's counters in Redis (named by a hash of
the number). `export_person` gathers all of it as JSON; `erase_person` deletes all of it, jobs
included, so that no row of any table mentions the number afterwards.

Erasing also forgets an opt-out (the contact row is what held it); Twilio keeps its own opt-out
list for STOP on long codes and toll-free numbers, which still refuses texts to that person.
"""

from __future__ import annotations

import logging
from datetime import date, datetime
from typing import Any

from peewee import Expression
from playhouse.shortcuts import model_to_dict
from redis.exceptions import RedisError
from rq import Queue
from rq.job import Job

from gateway.agent import spend
from gateway.agent.analysis import analysis_job_id
from gateway.agent.memory import profile_job_id, summary_job_id
from gateway.config import Settings
from gateway.conversations.consent import set_opted_out
from gateway.events import DELIVER_JOB
from gateway.logs import mask_number
from gateway.queue import opening_job_id, reply_job_id
from gateway.storage.db import database
from gateway.storage.models import Chat, ChatType, Contact, IdempotencyKey, Message, UserProfile

log = logging.getLogger(__name__)


def profile_keys(phone: str) -> list[str]:
    """The profile keys that can belong to this number (SMS chats, and API chats keyed by it)."""
    return [f"phone:{phone}", f"user:{phone}"]


def _chats_where(phone: str) -> Expression:
    """The chats of a person: SMS chats with them, API chats whose user_id is their number."""
    return (
        ((Chat.chat_type == ChatType.SMS.value) & (Chat.to_number == phone))
        | (Chat.user_id == phone)
        | (Chat.from_number == phone)
    )


def chat_ids_of(phone: str) -> list[str]:
    """Ids of every chat of the person, oldest first."""
    query = Chat.select(Chat.chat_id).where(_chats_where(phone)).order_by(Chat.start_timestamp, Chat.chat_id)
    return [row.chat_id for row in query]


def _messages_where(phone: str, chat_ids: list[str]) -> Expression:
    """Every message of those chats, and any other message to or from the number."""
    condition = (Message.from_number == phone) | (Message.to_number == phone)
    if chat_ids:
        condition |= Message.chat.in_(chat_ids)
    return condition


def _idempotency_where(phone: str) -> Expression:
    """Idempotency keys whose stored answer names the number (an outbound start to them)."""
    return IdempotencyKey.response.cast("text").contains(phone)


def _plain(value: Any) -> Any:
    """A row value as JSON can hold it (datetimes as ISO 8601)."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _row(model) -> dict[str, Any]:
    """A row as a dict of its columns (foreign keys as ids)."""
    return _plain(model_to_dict(model, recurse=False))


def contact_summary(phone: str) -> dict[str, Any]:
    """The person's opt-out state per our number, their chats (without messages) and profile."""
    with database.connection_context():
        contacts = list(Contact.select().where(Contact.phone_number == phone).order_by(Contact.our_number))
        chats = list(Chat.select().where(_chats_where(phone)).order_by(Chat.start_timestamp, Chat.chat_id))
        profile = UserProfile.get_or_none(UserProfile.key == f"phone:{phone}")
    return {
        "phone_number": phone,
        "numbers": [
            {
                "our_number": c.our_number,
                "opted_out": bool(c.opted_out),
                "opted_out_at": _plain(c.opted_out_at),
                "first_contact_at": _plain(c.created_at),
            }
            for c in contacts
        ],
        "chats": chats,
        "profile": dict(profile.profile or {}) if profile is not None else None,
    }


def set_opt_out(phone: str, our_number: str, opted_out: bool) -> None:
    """Put the person on (or take them off) the do-not-text list of one of our numbers."""
    with database.connection_context():
        set_opted_out(our_number, phone, opted_out)
    log.info(
        "contacts: %s %s texts from %s",
        mask_number(phone),
        "opted out of" if opted_out else "opted back into",
        mask_number(our_number),
    )


def export_person(phone: str) -> dict[str, Any]:
    """Everything stored about the person, as JSON-ready data."""
    with database.connection_context():
        chat_ids = chat_ids_of(phone)
        chats = (
            {c.chat_id: _row(c) for c in Chat.select().where(Chat.chat_id.in_(chat_ids))} if chat_ids else {}
        )
        messages = list(Message.select().where(_messages_where(phone, chat_ids)).order_by(Message.id))
        for chat in chats.values():
            chat["messages"] = []
        loose = []
        for message in messages:
            data = _row(message)
            chat = chats.get(message.chat_id)
            (chat["messages"] if chat is not None else loose).append(data)
        return {
            "phone_number": phone,
            "exported_at": _plain(datetime.now().astimezone()),
            "contacts": [_row(c) for c in Contact.select().where(Contact.phone_number == phone)],
            "chats": [chats[chat_id] for chat_id in chat_ids],
            "other_messages": loose,
            "profiles": [
                _row(p) for p in UserProfile.select().where(UserProfile.key.in_(profile_keys(phone)))
            ],
            "idempotency_keys": [
                {"key": k.key, "created_at": _plain(k.created_at), "response": k.response}
                for k in IdempotencyKey.select().where(_idempotency_where(phone))
            ],
        }


def _job_ids(phone: str, chat_ids: list[str], message_ids: list[int]) -> list[str]:
    """The ids of every job that may be queued for the person's chats, messages and profile."""
    ids = [reply_job_id(m) for m in message_ids]
    for chat_id in chat_ids:
        ids += [opening_job_id(chat_id), analysis_job_id(chat_id), summary_job_id(chat_id)]
    for key in profile_keys(phone):
        ids.append(profile_job_id(key))
    # Memory jobs come in pairs (`<id>` and `<id>-again`, see gateway.agent.memory).
    return ids + [f"{job_id}-again" for job_id in ids if job_id.startswith("memory-")]


def _delete_jobs(queue: Queue | None, job_ids: list[str]) -> int:
    """Delete these jobs (and their registry entries) from Redis; how many existed."""
    if queue is None or not job_ids:
        return 0
    deleted = 0
    for job_id in job_ids:
        try:
            # The queue's serializer (JSON): RQ's default would unpickle whatever Redis holds.
            job = Job.fetch(job_id, connection=queue.connection, serializer=queue.serializer)
        except Exception:  # NoSuchJobError, or a hash that expired
            continue
        job.delete()  # removes it from its queue and every registry too
        deleted += 1
    return deleted


def _registries(queue: Queue) -> list[Any]:
    """Every registry of the queue a job can sit in until it expires."""
    return [
        queue.scheduled_job_registry,
        queue.started_job_registry,
        queue.deferred_job_registry,
        queue.failed_job_registry,
        queue.finished_job_registry,
        queue.canceled_job_registry,
    ]


def _event_job_ids(queue: Queue | None, chat_ids: list[str]) -> list[str]:
    """The ids of the event-delivery jobs of these chats: queued, scheduled for a retry, running,
    failed (kept 7 days) or finished. Their ids are random, so each job of the queue and its
    registries is read (as JSON, with the queue's serializer) and kept when it delivers an event of
    one of these chats (its second argument)."""
    if queue is None or not chat_ids:
        return []
    wanted = set(chat_ids)
    candidates: list[str] = list(queue.get_job_ids())
    for registry in _registries(queue):
        candidates += registry.get_job_ids()
    found: list[str] = []
    unique = list(dict.fromkeys(candidates))
    for start in range(0, len(unique), 500):
        for job in _fetch_readable(queue, unique[start : start + 500]):
            try:
                if job.func_name == DELIVER_JOB and len(job.args) > 1 and job.args[1] in wanted:
                    found.append(job.id)
            except Exception:  # a job whose data cannot be read (an old pickle): not one of ours
                continue
    return found


def _fetch_readable(queue: Queue, job_ids: list[str]) -> list[Job]:
    """These jobs as JSON (gone ones left out); one that cannot be read is skipped, not fatal."""
    try:
        jobs = Job.fetch_many(job_ids, connection=queue.connection, serializer=queue.serializer)
        return [job for job in jobs if job is not None]
    except Exception:  # one unreadable job spoils the batch: read them one by one
        readable = []
        for job_id in job_ids:
            try:
                readable.append(Job.fetch(job_id, connection=queue.connection, serializer=queue.serializer))
            except Exception:  # NoSuchJobError, or data the JSON serializer refuses
                continue
        return readable


def erase_person(phone: str, queue: Queue | None, settings: Settings | None = None) -> dict[str, int]:
    """Delete everything stored about the person (and their queued jobs); the counts deleted.

    The jobs are those of their chats, messages and profile, and every event delivery of their
    chats (the payloads name the number). With `settings`, the spend guard's counters of the person
    (in Redis, keyed by a hash of the number) go too.

    Jobs go first, so none starts on a chat that is being deleted; a job already running finds
    its message or chat gone and does nothing.
    """
    with database.connection_context():
        chat_ids = chat_ids_of(phone)
        message_ids = [m.id for m in Message.select(Message.id).where(_messages_where(phone, chat_ids))]
    jobs = _delete_jobs(queue, _job_ids(phone, chat_ids, message_ids) + _event_job_ids(queue, chat_ids))
    # The spend guard's counters of the person (keyed by a hash of the number).
    try:
        spend_keys = spend.forget_person(settings, phone) if settings is not None else 0
    except RedisError as exc:
        log.warning("contacts: could not delete the spend-guard counters of %s: %s", mask_number(phone), exc)
        spend_keys = 0
    with database.connection_context(), database.atomic():
        if message_ids:
            # Replies may point at messages being deleted: unlink first (SET NULL, portably).
            Message.update(reply_to=None).where(Message.reply_to.in_(message_ids)).execute()
        messages = Message.delete().where(Message.id.in_(message_ids)).execute() if message_ids else 0
        chats = Chat.delete().where(Chat.chat_id.in_(chat_ids)).execute() if chat_ids else 0
        contacts = Contact.delete().where(Contact.phone_number == phone).execute()
        profiles = UserProfile.delete().where(UserProfile.key.in_(profile_keys(phone))).execute()
        keys = IdempotencyKey.delete().where(_idempotency_where(phone)).execute()
    counts = {
        "chats": chats,
        "messages": messages,
        "contacts": contacts,
        "profiles": profiles,
        "idempotency_keys": keys,
        "jobs": jobs,
        "spend_keys": spend_keys,
    }
    log.info("contacts: erased everything stored about %s (%s)", mask_number(phone), counts)
    return counts
