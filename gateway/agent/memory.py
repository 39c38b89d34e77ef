"""Agent memory: a rolling summary of each chat and a profile of each person, kept by the model.

Two memories, each switched on per agent, each updated by a background RQ job after turns (never
while a reply waits) and shown to the model as a headed paragraph of the system message:

- `summary_memory`: `Chat.summary` is a rolling summary of the chat. The update job reads the old
  summary plus only the messages after `Chat.summary_message_id` (at most SUMMARY_MAX_MESSAGES,
  the newest), asks the model for the new summary and stores it with the newest message it covers.
  WHEN it runs (`summary_due`): the prompt's window is the newest `num_last_messages` messages
  (with `full_session_memory` off, only the newest user text). A summary is made once the
  messages it does not cover yet would start leaving that window at the next exchange, i.e. once
  `unsummarized >= num_last_messages - SUMMARY_LEAD` (at least 1; with `full_session_memory` off,
  after every turn). SUMMARY_LEAD (2 messages: the person's next text and our answer) gives the
  job one exchange to finish before anything it covers leaves the window. With the default
  window of 20 that is one summary call per ~9 exchanges, and none at all in short chats.
- `user_analysis_memory`: `UserProfile.profile` is a JSON profile of the person (name,
  preferences, goals, style, facts), keyed `phone:<E.164>` for SMS chats (`chat.to_number` is the
  person) and `user:<user_id>` for API chats (none when the API chat has no user_id). It is built
  from the messages of ALL the person's chats after `UserProfile.last_message_id` (at most
  PROFILE_MAX_MESSAGES, the newest). WHEN it runs (`profile_due`): once PROFILE_BATCH new texts
  from the person have arrived, or as soon as one of their new texts belongs to a chat that has
  ended (the end of a chat flushes what it taught us, so the next chat knows it). An answer that
  is not a JSON object leaves the old profile (and `last_message_id`) untouched.

Scheduling: `schedule_after_turn(queue, chat, agent)` after every agent turn (SMS and API). The
jobs are deduplicated per chat / per profile: see `enqueue_deduplicated`. With no model
configured (the offline responder), the jobs do nothing: an echo is not a summary.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError
from rq import Queue, get_current_job
from rq.job import Job
from rq.rate_limit import RateLimit

from gateway.agent import spend, structured
from gateway.agent.history import in_conversation, transcript_lines
from gateway.config import Settings
from gateway.logs import mask_number
from gateway.queue import (
    LIVE_STATES,
    WAITING_STATES,
    job_queue,
    job_status,
    queue_name,
    redis_for,
    retry_policy,
)
from gateway.storage.db import database
from gateway.storage.models import Agent, Chat, ChatStatus, ChatType, Message, Role, UserProfile, utcnow

log = logging.getLogger(__name__)

# --- the prompt sections -----------------------------------------------------------------------

SUMMARY_HEADING = "Summary of this conversation so far (rolling summary memory):"
PROFILE_HEADING = "What we know about this person (user profile memory, from earlier conversations):"

# --- limits and rules (see the module docstring) ----------------------------------------------

SUMMARY_MAX_MESSAGES = 200  # messages one summary update reads, at most (the newest)
SUMMARY_LEAD = 2  # messages of headroom: one exchange (their text, our answer)
SUMMARY_MAX_CHARS = 4000  # a longer answer is cut here before it is stored
# The model's answer is capped (max_tokens) at what the stored JSON may hold: a summary of 4,000
# characters is about 1,000 tokens, a profile of 16,000 characters of JSON about 4,000. Not the
# agent's max_tokens: that bounds an SMS reply, and a small one would cut the JSON short.
SUMMARY_MAX_TOKENS = 1500
PROFILE_MAX_TOKENS = 4000
PROFILE_MAX_MESSAGES = 200  # messages one profile update reads, at most (the newest)
PROFILE_BATCH = 3  # new texts from the person that make a profile update worth a model call
PROFILE_MAX_JSON_CHARS = 16000  # a bigger profile answer is refused (the old one is kept)
PROFILE_PROMPT_MAX_CHARS = 4000  # how much of the profile the agent's prompt shows
MESSAGE_MAX_CHARS = 1600  # one message's text in a memory request (an SMS is at most 1600)

# --- jobs ----------------------------------------------------------------------------------------

SUMMARY_JOB = "workers.memory_jobs.update_summary"
PROFILE_JOB = "workers.memory_jobs.update_profile"
MEMORY_JOB_TIMEOUT = 300  # one model call plus two short queries
DEFAULT_RETRY_ATTEMPTS = 3
DEFAULT_RETRY_DELAY = 5.0

SUMMARY_INSTRUCTIONS = (
    "You keep the rolling summary of a conversation between an assistant (an AI agent) and a "
    "person, so that the assistant still remembers what was said after older messages leave its "
    "context. Rewrite the current summary so it also covers the new messages. Keep every fact the "
    "person shared (names, numbers, dates, places, pets, preferences, decisions, problems, open "
    "questions) and what the assistant promised or asked; drop greetings and small talk. Write in "
    "the third person ('The person ...', 'The assistant ...'), at most 250 words. Answer with ONE "
    'JSON object and nothing else: {"summary": "<the updated summary>"}.'
)
PROFILE_INSTRUCTIONS = (
    "You maintain a profile of a person, built from their conversations with an assistant (an AI "
    "agent), so that later conversations can take it into account. Update the current profile with "
    "what the new messages reveal about the person: their name, how to address them, preferences, "
    "goals, communication style (language, tone, length), and lasting facts (family, pets, "
    "location, schedule, constraints, things they own or use). Keep what the current profile holds "
    "unless the new messages contradict it. Record only what the person said or clearly implied; "
    "never guess. Answer with ONE JSON object and nothing else, using keys such as "
    '"name", "preferences", "goals", "communication_style" and "facts" (lists of short strings '
    "where several items fit); leave out what is unknown."
)


SUMMARY_SCHEMA = structured.strict_object({"summary": {"type": "string"}})
_LIST = {"type": "array", "items": {"type": "string"}}
PROFILE_SCHEMA = structured.strict_object(
    {
        "name": structured.nullable("string"),
        "preferences": _LIST,
        "goals": _LIST,
        "communication_style": structured.nullable("string"),
        "facts": _LIST,
    }
)
SUMMARY_ANSWER = structured.JsonAnswer("summary", SUMMARY_SCHEMA, SUMMARY_MAX_TOKENS)
PROFILE_ANSWER = structured.JsonAnswer("profile", PROFILE_SCHEMA, PROFILE_MAX_TOKENS)


# --- small helpers --------------------------------------------------------------------------------


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, with an ellipsis when cut."""
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def transcript(rows: Iterable[Message]) -> str:
    """Messages as `Person: ...` / `Assistant: ...` lines; the SMS parts of one reply joined."""
    return transcript_lines(list(rows), MESSAGE_MAX_CHARS)


def parse_json_object(text: str | None) -> dict[str, Any] | None:
    """The first JSON object in a model's answer, or None.

    Servers without `response_format` support wrap JSON in prose or code fences; this takes the
    whole text when it is an object, else the first `{...}` that decodes to an object.
    """
    if not text:
        return None
    text = text.strip()
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if isinstance(value, dict):
        return value
    decoder = json.JSONDecoder()
    for tries, match in enumerate(re.finditer(r"\{", text)):
        if tries >= 50:
            break
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def summary_text(text: str) -> str:
    """The summary in a model's answer: the JSON's "summary", or the whole text from a server that
    answered in prose."""
    answer = parse_json_object(text)
    if answer is not None and isinstance(answer.get("summary"), str):
        return answer["summary"]
    return text


# --- rolling summary ------------------------------------------------------------------------------


def summary_threshold(agent: Agent) -> int:
    """How many not-yet-summarized messages make a summary update due (see the module docstring)."""
    if not agent.full_session_memory:
        return 1  # only the newest text is in the prompt: everything answered has left it
    return max(1, (agent.num_last_messages or 0) - SUMMARY_LEAD)


def _after_summary(chat: Chat):
    """The condition for this chat's messages the summary does not cover yet."""
    condition = (Message.chat == chat.chat_id) & in_conversation()
    if chat.summary_message_id is not None:
        condition &= Message.id > chat.summary_message_id
    return condition


def summary_due(chat: Chat, agent: Agent) -> bool:
    """True when enough messages are outside the summary (one query reading at most N ids)."""
    threshold = summary_threshold(agent)
    rows = Message.select(Message.id).where(_after_summary(chat)).limit(threshold)
    return len(list(rows.tuples())) >= threshold


def unsummarized_messages(chat: Chat, limit: int = SUMMARY_MAX_MESSAGES) -> tuple[list[Message], bool]:
    """The newest `limit` messages after the summary, oldest first, and whether older ones were left out."""
    rows = list(Message.select().where(_after_summary(chat)).order_by(Message.id.desc()).limit(limit + 1))
    more = len(rows) > limit
    rows = rows[:limit]
    rows.reverse()
    return rows, more


def summary_request(old_summary: str | None, rows: list[Message], more: bool) -> list[dict[str, str]]:
    """The model request that turns the old summary plus new messages into the new summary."""
    gap = (
        "\n(Older messages after the current summary were too many to include; they are skipped.)"
        if more
        else ""
    )
    user = (
        f"Current summary:\n{old_summary.strip() if old_summary else '(none yet)'}\n\n"
        f"New messages, oldest first:{gap}\n{transcript(rows)}\n\n"
        "Write the updated summary."
    )
    return [{"role": "system", "content": SUMMARY_INSTRUCTIONS}, {"role": "user", "content": user}]


@dataclass(frozen=True)
class MemoryOutcome:
    """What one memory job did: `updated`, `not_due`, `skipped` or `invalid_json`, and why."""

    outcome: str
    detail: str = ""


def update_summary(settings: Settings, chat_id: str) -> MemoryOutcome:
    """The summary job: fold the messages after the summary into it, when that is due.

    No database connection is held while the model writes. The write is conditional on the
    summary not having moved meanwhile, so a slower run can never put an older summary back.
    """
    if not settings.model_configured:
        return MemoryOutcome("skipped", "no model configured")
    with database.connection_context():
        chat = Chat.get_or_none(Chat.chat_id == chat_id)
        if chat is None:
            return MemoryOutcome("skipped", "no such chat")
        agent = Agent.get_by_id(chat.agent_id)
        if not agent.summary_memory:
            return MemoryOutcome("skipped", "summary_memory is off")
        if not summary_due(chat, agent):
            return MemoryOutcome("not_due")
        rows, more = unsummarized_messages(chat)
        if not rows:
            return MemoryOutcome("not_due")
        request = summary_request(chat.summary, rows, more)
        old_mark = chat.summary_message_id
    try:
        completion = structured.complete_json_counted(settings, agent, SUMMARY_ANSWER, request)
    except spend.OverBudget as exc:
        return MemoryOutcome("skipped", exc.reason)
    summary = clip(summary_text(completion.text), SUMMARY_MAX_CHARS)
    if not summary:
        return MemoryOutcome("skipped", "empty answer")
    newest = rows[-1].id
    with database.connection_context():
        unchanged = (
            Chat.summary_message_id.is_null() if old_mark is None else Chat.summary_message_id == old_mark
        )
        written = (
            Chat.update(summary=summary, summary_message_id=newest)
            .where((Chat.chat_id == chat_id) & unchanged)
            .execute()
        )
    if not written:
        return MemoryOutcome("skipped", "the summary moved meanwhile")
    log.info("memory: summary of %s now covers up to message %s", chat_id, newest)
    return MemoryOutcome("updated", f"covers up to message {newest}")


def summary_section(chat: Chat, agent: Agent, settings: Settings) -> str | None:
    """The chat's rolling summary, headed, when the agent has summary_memory on."""
    if not agent.summary_memory or not (chat.summary and chat.summary.strip()):
        return None
    return f"{SUMMARY_HEADING}\n{chat.summary.strip()}"


# --- user profile ---------------------------------------------------------------------------------


def profile_key_for(chat: Chat) -> str | None:
    """Whose profile a chat feeds: `phone:<their number>` (SMS), `user:<user_id>` (API), or None."""
    if chat.chat_type == ChatType.SMS.value:
        return f"phone:{chat.to_number}" if chat.to_number else None
    return f"user:{chat.user_id}" if chat.user_id else None


def chats_of(key: str):
    """A subquery of the ids of every chat of the person `key` names."""
    kind, _, value = key.partition(":")
    if kind == "phone":
        where = (Chat.chat_type == ChatType.SMS.value) & (Chat.to_number == value)
    elif kind == "user":
        where = (Chat.chat_type == ChatType.API.value) & (Chat.user_id == value)
    else:
        raise ValueError(f"not a profile key: {key!r}")
    return Chat.select(Chat.chat_id).where(where)


def _after_profile(key: str, last_message_id: int | None):
    """The condition for the person's messages (in all their chats) the profile has not read."""
    condition = Message.chat.in_(chats_of(key)) & in_conversation()
    if last_message_id is not None:
        condition &= Message.id > last_message_id
    return condition


def profile_due(key: str, last_message_id: int | None) -> bool:
    """True when PROFILE_BATCH new texts came from the person, or one in a chat that has ended."""
    theirs = _after_profile(key, last_message_id) & (Message.role == Role.USER.value)
    count = len(list(Message.select(Message.id).where(theirs).limit(PROFILE_BATCH).tuples()))
    if count >= PROFILE_BATCH:
        return True
    if count == 0:
        return False
    ended = (
        Message.select(Message.id)
        .join(Chat, on=(Message.chat == Chat.chat_id))
        .where(theirs & (Chat.chat_status != ChatStatus.ONGOING.value))
        .limit(1)
    )
    return ended.exists()


def unread_messages(
    key: str, last_message_id: int | None, limit: int = PROFILE_MAX_MESSAGES
) -> tuple[list[Message], bool]:
    """The person's newest `limit` unread messages (all chats), oldest first, and whether more exist."""
    rows = list(
        Message.select()
        .where(_after_profile(key, last_message_id))
        .order_by(Message.id.desc())
        .limit(limit + 1)
    )
    more = len(rows) > limit
    rows = rows[:limit]
    rows.reverse()
    return rows, more


def profile_request(profile: dict[str, Any], rows: list[Message], more: bool) -> list[dict[str, str]]:
    """The model request that updates a profile from new messages, grouped by chat."""
    blocks: list[str] = []
    chunk: list[Message] = []
    for row in rows:
        if chunk and row.chat_id != chunk[-1].chat_id:
            blocks.append(transcript(chunk))
            chunk = []
        chunk.append(row)
    if chunk:
        blocks.append(transcript(chunk))
    gap = "(Older unread messages were too many to include; they are skipped.)\n" if more else ""
    conversations = "\n--- another conversation ---\n".join(blocks)
    user = (
        f"Current profile (JSON):\n{json.dumps(profile or {}, ensure_ascii=False)}\n\n"
        f"New messages, oldest first:\n{gap}{conversations}\n\n"
        "Answer with the updated profile as one JSON object."
    )
    return [{"role": "system", "content": PROFILE_INSTRUCTIONS}, {"role": "user", "content": user}]


def update_profile(settings: Settings, key: str, *, model: str | None = None) -> MemoryOutcome:
    """The profile job: fold the person's unread messages into their profile, when that is due.

    The old profile stays (and the messages stay unread) when the answer is not a JSON object.
    """
    if not settings.model_configured:
        return MemoryOutcome("skipped", "no model configured")
    with database.connection_context():
        row = UserProfile.get_or_none(UserProfile.key == key)
        profile = dict(row.profile or {}) if row is not None else {}
        last_id = row.last_message_id if row is not None else None
        if not profile_due(key, last_id):
            return MemoryOutcome("not_due")
        rows, more = unread_messages(key, last_id)
        if not rows:
            return MemoryOutcome("not_due")
        agent = Agent.get_by_id(Chat.get_by_id(rows[-1].chat_id).agent_id)  # the newest chat's pays
        if model is None:
            model = structured.model_for(agent, settings)
        request = profile_request(profile, rows, more)
    try:
        completion = structured.complete_json_counted(settings, agent, PROFILE_ANSWER, request, model=model)
    except spend.OverBudget as exc:
        return MemoryOutcome("skipped", exc.reason)
    updated = parse_json_object(completion.text)
    if updated is not None:
        # Strict schemas make every key present; unknown ones arrive as null or empty.
        updated = {k: v for k, v in updated.items() if v not in (None, "", [], {})}
    if updated is None:
        log.warning(
            "memory: the profile answer for %s was not a JSON object; the old profile stays", key_label(key)
        )
        return MemoryOutcome("invalid_json", completion.text[:200])
    if len(json.dumps(updated, ensure_ascii=False)) > PROFILE_MAX_JSON_CHARS:
        log.warning("memory: the profile answer for %s is too big; the old profile stays", key_label(key))
        return MemoryOutcome("invalid_json", "profile too big")
    newest = rows[-1].id
    now = utcnow()
    with database.connection_context():
        if row is None:
            written = (
                UserProfile.insert(key=key, profile=updated, last_message_id=newest, updated_at=now)
                .on_conflict_ignore()
                .execute()
            )
        else:
            unchanged = (
                UserProfile.last_message_id.is_null()
                if last_id is None
                else UserProfile.last_message_id == last_id
            )
            written = (
                UserProfile.update(profile=updated, last_message_id=newest, updated_at=now)
                .where((UserProfile.key == key) & unchanged)
                .execute()
            )
    if not written:
        return MemoryOutcome("skipped", "the profile moved meanwhile")
    log.info("memory: profile %s now covers up to message %s", key_label(key), newest)
    return MemoryOutcome("updated", f"covers up to message {newest}")


def render_profile(profile: dict[str, Any]) -> str:
    """A profile as `- key: value` lines (lists joined with `; `), empty values left out, bounded."""
    lines = []
    for name, value in profile.items():
        if value is None or value == "" or value == [] or value == {}:
            continue
        label = str(name).replace("_", " ")
        if isinstance(value, list):
            text = "; ".join(v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in value)
        elif isinstance(value, str):
            text = value
        else:
            text = json.dumps(value, ensure_ascii=False)
        lines.append(f"- {label}: {text}")
    return clip("\n".join(lines), PROFILE_PROMPT_MAX_CHARS)


def profile_section(chat: Chat, agent: Agent, settings: Settings) -> str | None:
    """The person's profile, headed, when the agent has user_analysis_memory on (one keyed read)."""
    if not agent.user_analysis_memory:
        return None
    key = profile_key_for(chat)
    if key is None:
        return None
    profile = UserProfile.select(UserProfile.profile).where(UserProfile.key == key).scalar()
    text = render_profile(profile) if isinstance(profile, dict) else ""
    return f"{PROFILE_HEADING}\n{text}" if text else None


# --- scheduling -----------------------------------------------------------------------------------


def key_label(key: str) -> str:
    """A profile key as logs and job descriptions show it: a phone number by its last 4 digits."""
    kind, _, value = key.partition(":")
    return f"phone:{mask_number(value)}" if kind == "phone" else key


def key_hash(key: str) -> str:
    """A profile key as job ids and rate-limit keys hold it: a hash, never the number itself."""
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def job_token(value: str) -> str:
    """`value` as a job id part (letters, digits, `_`, `-`), unique per value."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "-", value)[:64]
    return f"{safe}-{hashlib.sha1(value.encode()).hexdigest()[:12]}"


def enqueue_deduplicated(
    queue: Queue,
    func: str,
    arg: str,
    *,
    base_id: str,
    rate_key: str,
    retry_attempts: int = DEFAULT_RETRY_ATTEMPTS,
    retry_delay: float = DEFAULT_RETRY_DELAY,
    description: str = "",
) -> Job | None:
    """Enqueue `func(arg)` unless a run that has not started yet will cover this call anyway.

    Two job ids per key, `<base>` and `<base>-again`, with RQ's RateLimit (concurrency 1 per
    `rate_key`), so at most one runs and at most one waits. When either is still waiting, nothing
    is enqueued (it reads the newest data when it starts): a burst of turns costs one job. When
    one is running (it may have read the data before this turn), the other id is enqueued and
    waits for it, so the latest turn is always covered. Returns the job enqueued, or None.
    """
    ids = (base_id, f"{base_id}-again")
    states = [job_status(queue.connection, job_id) for job_id in ids]
    if any(state in WAITING_STATES for state in states):
        return None
    for job_id, state in zip(ids, states, strict=True):
        if state not in LIVE_STATES:
            return queue.enqueue(
                func,
                arg,
                job_id=job_id,
                rate_limit=RateLimit(rate_key, concurrency=1),
                retry=retry_policy(retry_attempts, retry_delay),
                job_timeout=MEMORY_JOB_TIMEOUT,
                result_ttl=600,
                failure_ttl=7 * 24 * 3600,
                description=description or f"{func}({arg})",
            )
    return None  # both "running": one is a leftover RQ's cleanup will settle


def queue_for(settings: Settings) -> Queue | None:
    """The queue of the RQ job running in this thread, else the gateway's queue on REDIS_URL (or None).

    For code that runs inside jobs (the reply job, the auto-close sweep) and wants to queue more.
    """
    job = get_current_job()
    if job is not None and job.origin:
        return job_queue(job.origin, job.connection)
    client = redis_for(settings)
    return job_queue(queue_name(settings), client) if client is not None else None


def summary_job_id(chat_id: str) -> str:
    """The base job id of a chat's summary updates."""
    return f"memory-summary-{job_token(chat_id)}"


def profile_job_id(key: str) -> str:
    """The base job id of a profile's updates."""
    return f"memory-profile-{key_hash(key)}"


def schedule_summary(queue: Queue, chat_id: str, agent: Agent | None = None) -> Job | None:
    """Queue a summary update of one chat (deduplicated)."""
    return _schedule(
        queue,
        SUMMARY_JOB,
        chat_id,
        summary_job_id(chat_id),
        f"memory-summary:{chat_id}",
        agent,
        f"update the rolling summary of {chat_id}",
    )


def schedule_profile(queue: Queue, key: str, agent: Agent | None = None) -> Job | None:
    """Queue an update of one person's profile (deduplicated)."""
    return _schedule(
        queue,
        PROFILE_JOB,
        key,
        profile_job_id(key),
        f"memory-profile:{key_hash(key)}",
        agent,
        f"update the user profile {key_label(key)}",
    )


def _schedule(
    queue: Queue, func: str, arg: str, base_id: str, rate_key: str, agent: Agent | None, description: str
) -> Job | None:
    """Queue one memory job (deduplicated), retried with the agent's backoff (at least 1 s)."""
    return enqueue_deduplicated(
        queue,
        func,
        arg,
        base_id=base_id,
        rate_key=rate_key,
        retry_attempts=agent.retry_attempts if agent is not None else DEFAULT_RETRY_ATTEMPTS,
        retry_delay=max(agent.retry_delay, 1.0) if agent is not None else DEFAULT_RETRY_DELAY,
        description=description,
    )


def schedule_after_turn(queue: Queue | None, chat: Chat, agent: Agent) -> list[Job]:
    """After an agent turn: queue the memory updates the agent's settings ask for.

    Never raises: callers are the reply job and the API request, which must not fail over
    memory. A missed update (Redis down) is logged and made up by the next turn's, since each
    job reads everything after the last mark. Reads nothing from the database.
    """
    if queue is None or not (agent.summary_memory or agent.user_analysis_memory):
        return []
    jobs: list[Job | None] = []
    try:
        if agent.summary_memory:
            jobs.append(schedule_summary(queue, chat.chat_id, agent))
        key = profile_key_for(chat) if agent.user_analysis_memory else None
        if key is not None:
            jobs.append(schedule_profile(queue, key, agent))
    except RedisError as exc:
        log.warning("memory: could not queue the memory updates of %s: %s", chat.chat_id, exc)
    except Exception:
        log.exception("memory: could not queue the memory updates of %s", chat.chat_id)
    return [job for job in jobs if job is not None]
