"""Where an inbound SMS gets its answer: prompt, model, plain text, parts, Twilio, in that order.

`answer_message` is the whole reply to one inbound message, in phases that each hold a database
connection only briefly (none while the model or Twilio is being waited on):

1. read: the message, its chat and agent; skip it when it no longer needs an answer;
2. if a previous attempt already stored the reply's parts (and died while sending), go to 4;
3. ask the model about every pending message of the chat (this one, and any that arrived
   since: a burst of texts gets one answer), then store the reply's parts in ONE transaction,
   before anything is sent;
4. send each part that has no Twilio SID yet, storing each SID as soon as Twilio answers;
5. mark the inbound messages the reply covers `answered`.

Because the parts are stored before the first send and a part with a SID is never sent again,
a crash anywhere leaves at most one part whose send may or may not have reached Twilio. That part
is marked with the sending attempt (`claimed_by`); another attempt takes it over at once when that
attempt is over (its process is gone, or it failed) or after SEND_LEASE, and first asks Twilio
whether it was accepted (`find_sent`), so it is not sent twice.
Failures are recorded on the messages and re-raised, so RQ sees them (and retries transient ones).

When the model fails for good (a PermanentError, or a TransientError on the last attempt), the
agent's fallback text (answering.fallback_text; unless `fallback_enabled` is off) is the reply:
stored as parts with the model's error recorded on the inbound messages in the same transaction,
sent like any reply, then those messages are marked `failed` (a pending inbound message with an
error_code is one answered by a fallback), and the model's error is re-raised for RQ. Twilio
failures never bring a fallback: it would fail the same way.

The prompt, the model call, the token budget and the stored answer's columns are the shared
"answer this chat" service (gateway/conversations/answering.py); this module keeps what is SMS's
own: covering a burst of texts, opt-out, splitting into parts and sending them. An operator who
takes the chat over while the model thinks wins: the answer is dropped when it would be stored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from peewee import InterfaceError, OperationalError

from gateway import metrics
from gateway.agent import llm, spend, tools
from gateway.agent.text import split_sms, to_plain_text, to_whatsapp_text
from gateway.config import Settings
from gateway.conversations import answering
from gateway.conversations.refusals import refuse_reply
from gateway.conversations.sessions import has_opted_out
from gateway.errors import GatewayError, PermanentError, TransientError, is_opted_out
from gateway.logs import mask_number, traffic
from gateway.processes import attempt_token, claim_is_abandoned
from gateway.storage.db import database, write_transaction
from gateway.storage.models import (
    Agent,
    Channel,
    Chat,
    ChatStatus,
    ChatType,
    Contact,
    Message,
    MessageKind,
    MessageStatus,
    ReplyState,
    Role,
    utcnow,
)
from gateway.twilio import media
from gateway.twilio.channels import OUTSIDE_WINDOW_ERROR, session_window_open
from gateway.twilio.client import find_sent, send_sms, show_typing
from gateway.twilio.senders import SENDER_PACED, Sender, sender_for, wait_for_slot
from gateway.twilio.statuses import apply_early_statuses, map_twilio_status

log = logging.getLogger(__name__)

# A part marked `sending` (claimed by an attempt that is talking to Twilio) with no SID yet is
# taken over by another attempt only after this long: longer than one Twilio call may take, so
# the first attempt has either stored the SID or died by then.
SEND_LEASE = timedelta(seconds=90)
# A taken-over part is looked for among Twilio's messages created since its claim, minus this
# (Twilio's clock and ours differ a little; its dates have whole seconds).
SEND_CLOCK_SLACK = timedelta(seconds=5)
# Tries to record a sent part's SID when the database connection drops meanwhile.
SID_STORE_ATTEMPTS = 3
# The code of the TransientError raised when another attempt holds a part of this reply.
IN_PROGRESS = "reply_in_progress"
# At most this many waiting texts are answered by one reply (the rest get the next one).
MAX_COVERED = 50
# Parts of one reply when the agent has no max_reply_parts (the column's default).
DEFAULT_MAX_REPLY_PARTS = 5


@dataclass(frozen=True)
class ReplyOutcome:
    """What one attempt did: `answered`, `skipped` (nothing to do), `opted_out`, or over a spend cap
    (`rate_limited`, `budget_exhausted`: no model call; see gateway/conversations/refusals.py)."""

    outcome: str
    message_id: int
    parts_sent: int = 0
    covered: tuple[int, ...] = ()
    # The built-in tool call (end_chat, handoff_to_human) the reply ended with, as stored: the
    # caller does what it asks (gateway/conversations/tool_actions.py) now that the reply is out.
    action: dict | None = None
    reply_message_id: int | None = None


@dataclass(frozen=True)
class SmsTarget:
    """Who the reply goes to (read once, so later phases need no lazy loads)."""

    chat_id: str
    our_number: str
    their_number: str
    channel: str = Channel.SMS.value


def status_callback_url(settings: Settings) -> str | None:
    """Where Twilio reports delivery of our parts, when the gateway knows its public origin."""
    return f"{settings.public_base_url.rstrip('/')}/twilio/status" if settings.public_base_url else None


def answer_message(settings: Settings, message_id: int, *, last_attempt: bool = True) -> ReplyOutcome:
    """Answer inbound message `message_id` (and the pending ones before it) exactly once.

    Raises TransientError to be retried; on the `last_attempt` a transient failure is recorded
    as the messages' failure first. PermanentError is recorded, then raised. A model failure
    that is final sends the agent's fallback text first (see the module's docstring).
    """
    covered: list[int] = [message_id]
    sent = 0
    model_failure: GatewayError | None = None
    try:
        # Usually one turn; a second when this attempt first finished an older stored reply that
        # did not cover this message.
        while True:
            with database.connection_context():
                message = Message.get_or_none(Message.id == message_id)
                if message is None or message.reply_state != ReplyState.PENDING.value:
                    # Answered already. A retry of an attempt that died after sending the reply
                    # but before doing its end_chat/handoff still gets that action (it is idempotent).
                    reply = _covering_reply(message) if message is not None and not sent else None
                    action = tools.requested_action(reply.tool_calls) if reply is not None else None
                    return ReplyOutcome(
                        "answered" if sent else "skipped",
                        message_id,
                        sent,
                        tuple(covered),
                        action,
                        reply.id if action is not None else None,
                    )
                chat = Chat.get_by_id(message.chat_id)
                agent = Agent.get_by_id(chat.agent_id)
                if chat.chat_type != ChatType.SMS.value or not (chat.from_number and chat.to_number):
                    raise PermanentError("Only SMS chats are answered by SMS.", "not_sms_chat")
                target = SmsTarget(chat.chat_id, chat.from_number, chat.to_number, chat.channel)
                # Every text of the chat still waiting gets one answer, newer ones included:
                # a burst of texts is answered as one, and their own jobs find them answered.
                covered = _pending_ids(target.chat_id)
                newest = max(covered, default=message_id)
                if _opted_out(target):
                    _set_reply_state(covered, ReplyState.NONE)
                    return ReplyOutcome("opted_out", message_id, covered=tuple(covered))
                if chat.operator_held_at is not None:
                    # A human operator holds the chat (gateway/conversations/operator.py).
                    _set_reply_state(covered, ReplyState.NONE)
                    return ReplyOutcome("held", message_id, covered=tuple(covered))
                anchor = _stored_reply_anchor(target.chat_id)
                if anchor is None and not _may_send_free_form(target):
                    raise PermanentError(
                        "More than 24 hours passed since the person's last WhatsApp message; WhatsApp "
                        "allows only an approved template now.",
                        OUTSIDE_WINDOW_ERROR,
                    )
                # The spend guard counts this reply, or refuses it (gateway/agent/spend.py).
                refusal = (
                    spend.admit_reply(settings, agent, target.their_number, newest)
                    if anchor is None
                    else None
                )
                if anchor is None and refusal is None:
                    prompt = answering.build_prompt(
                        settings, chat, agent, upto_message_id=newest, images=True
                    )
                    if target.channel == Channel.WHATSAPP.value:
                        # WhatsApp shows "typing..." while the model works (best effort, not waited on).
                        show_typing(
                            settings, Message.select(Message.twilio_sid).where(Message.id == newest).scalar()
                        )

            if refusal is not None:
                refuse_reply(
                    settings,
                    agent,
                    refusal,
                    chat_id=target.chat_id,
                    our_number=target.our_number,
                    their_number=target.their_number,
                    message_ids=covered,
                    status_callback=status_callback_url(settings),
                )
                return ReplyOutcome(refusal.state.value, message_id, sent, tuple(covered))
            if anchor is None:
                # No connection is held while media downloads and the model thinks.
                prompt = media.resolve_images(settings, prompt)
                completion: llm.Completion | None = None
                calls: list[dict] = []
                try:
                    run, parts = ask_for_sms(settings, agent, chat, prompt, with_tools=True)
                    completion, calls = run.completion, run.calls
                    if not parts:  # a built-in tool call with nothing to say: no reply goes out
                        silent = _store_silent_action(target, newest, run)
                        if silent is None:
                            return ReplyOutcome("skipped", message_id)
                        outcome = "held" if run.action == tools.HANDOFF else "answered"
                        return ReplyOutcome(outcome, message_id, 0, tuple(covered), *silent)
                except GatewayError as exc:
                    if not answering.falls_back(agent, exc, last_attempt):
                        raise
                    log.warning(
                        "model failed for good in chat %s (%s); sending the fallback", target.chat_id, exc
                    )
                    parts = split_sms(answering.fallback_text(agent), max_parts=reply_parts_cap(agent))
                    completion, model_failure, calls = None, exc, []
                anchor, stored = _store_parts(
                    target, newest, parts, completion, failure=model_failure, tool_calls=calls
                )
                if stored == HELD:  # an operator took the chat over while the model was thinking
                    return ReplyOutcome("held", message_id, covered=tuple(covered))
                if anchor is None:  # answered by another attempt meanwhile
                    return ReplyOutcome("skipped", message_id)
                if stored != STORED:
                    model_failure = None  # another attempt's stored reply goes out instead

            with database.connection_context():
                covered = _pending_ids(target.chat_id, upto=anchor)
            sent += _send_unsent_parts(settings, target, anchor)
            with database.connection_context():
                fell_back = _finish_reply(covered)
                first_part = _first_part(anchor)
            if model_failure is not None:
                raise model_failure  # the person has the fallback; RQ records the model's failure
            if anchor >= message_id:
                outcome = "fallback" if fell_back else "answered"
                return ReplyOutcome(
                    outcome,
                    message_id,
                    sent,
                    tuple(covered),
                    tools.requested_action(first_part.tool_calls if first_part else None),
                    first_part.id if first_part else None,
                )
    except PermanentError as exc:
        _record_failure(covered, exc)
        raise
    except TransientError as exc:
        # "reply_in_progress": another attempt is sending this reply; it records the outcome.
        # "sender_paced": the number is at its send rate; the job comes back, no retry used.
        if last_attempt and exc.code not in (IN_PROGRESS, SENDER_PACED):
            _record_failure(covered, exc)
        raise
    except Exception as exc:  # a bug or a database outage: RQ sees it; the last attempt records it
        if last_attempt:
            _record_failure(covered, PermanentError(f"Internal error: {exc!r}"[:500], "internal_error"))
        raise


def ask_for_sms(
    settings: Settings, agent: Agent, chat: Chat, prompt: list[dict], *, with_tools: bool = False
) -> tuple[tools.ToolRun, list[str]]:
    """The agent's answer to `prompt`, as parts formatted for the chat's channel (empty: transient).

    SMS gets plain text; WhatsApp gets the markdown in WhatsApp's own formatting. `with_tools`
    offers the agent's tools (answering.answer_with_tools); a hand-off to a human may come with no
    text (and end_chat with no closing text): then there are no parts.
    """
    run = answering.answer_with_tools(settings, agent, chat if with_tools else None, prompt)
    completion = run.completion
    render = to_whatsapp_text if chat.channel == Channel.WHATSAPP.value else to_plain_text
    text = render(completion.text) or completion.text.strip()
    parts = split_sms(text, max_parts=reply_parts_cap(agent))
    if not parts and run.action is None:
        raise TransientError("The model's answer was empty once formatted for SMS.", "empty_response")
    return run, parts


def reply_parts_cap(agent: Agent) -> int:
    """How many SMS parts one reply of this agent may become (a longer one is cut)."""
    return max(1, agent.max_reply_parts or DEFAULT_MAX_REPLY_PARTS)


def _pending_ids(chat_id: str, *, upto: int | None = None) -> list[int]:
    """Ids of the chat's inbound messages still waiting for an answer (up to `upto`), oldest first."""
    query = Message.select(Message.id).where(
        (Message.chat == chat_id) & (Message.reply_state == ReplyState.PENDING.value)
    )
    if upto is not None:
        query = query.where(Message.id <= upto)
    return [row.id for row in query.order_by(Message.id).limit(MAX_COVERED)]


def _stored_reply_anchor(chat_id: str) -> int | None:
    """The inbound message a stored-but-unfinished reply answers, if a previous attempt stored one.

    That is an agent part whose `reply_to` is still pending: the reply text exists, so the model
    is not asked again; only the parts without a SID are sent.
    """
    pending = Message.select(Message.id).where(
        (Message.chat == chat_id) & (Message.reply_state == ReplyState.PENDING.value)
    )
    row = (
        Message.select(Message.reply_to)
        .where((Message.role == Role.AGENT.value) & Message.reply_to.in_(pending))
        .order_by(Message.reply_to.desc())
        .first()
    )
    return row.reply_to_id if row else None


# What _store_parts did: stored the reply, found one stored by another attempt, found the message
# answered already, or found the chat held by an operator (the reply is dropped).
STORED, EXISTING, GONE, HELD = "stored", "existing", "gone", "held"


def _store_parts(
    target: SmsTarget,
    message_id: int,
    parts: list[str],
    completion: llm.Completion | None,
    *,
    failure: GatewayError | None = None,
    tool_calls: list[dict] | None = None,
) -> tuple[int | None, str]:
    """Store the reply's parts in one transaction; return (the message they answer, what happened).

    The chat row is written first: that serialises attempts on one chat (a row lock on
    PostgreSQL, the write lock on SQLite), so two attempts cannot both store a reply. If another
    attempt stored one meanwhile, ours is dropped and that one is sent instead. If an operator
    took the chat over meanwhile, ours is dropped and the texts are left to the operator. With
    `failure` the parts are a fallback: the model's error goes on the pending inbound messages
    they answer.
    """
    now = utcnow()
    with database.connection_context(), write_transaction():
        if not answering.lock_unheld_chat(target.chat_id, now):
            answering.drop_for_operator(target.chat_id, message_id, now)
            return None, HELD
        existing = _stored_reply_anchor(target.chat_id)
        if existing is not None:
            return existing, EXISTING
        state = Message.select(Message.reply_state).where(Message.id == message_id).scalar()
        if state != ReplyState.PENDING.value:
            return None, GONE
        if failure is not None:
            code, reason = _code_reason(failure)
            Message.update(error_code=code, error_message=reason, updated_at=now).where(
                (Message.chat == target.chat_id)
                & (Message.role == Role.USER.value)
                & (Message.reply_state == ReplyState.PENDING.value)
                & (Message.id <= message_id)
            ).execute()
        rows = answering.answer_rows(
            target.chat_id,
            parts,
            completion,
            now,
            reply_to=message_id,
            # A fallback is the gateway's words, not the agent's: the model never reads it.
            kind=MessageKind.TEXT if failure is None else MessageKind.NOTICE,
            status=MessageStatus.QUEUED.value,
            from_number=target.our_number,
            to_number=target.their_number,
            tool_calls=tool_calls,
        )
        Message.insert_many(rows).execute()
    return message_id, STORED


def _store_silent_action(target: SmsTarget, message_id: int, run: tools.ToolRun) -> tuple[dict, int] | None:
    """The model ended the chat or handed it to a human and wrote nothing: keep its tool calls on
    an agent message with no text (nothing is sent) and mark the waiting texts as needing no reply,
    in one transaction. Returns (the built-in call, that message's id); None when there is nothing
    to do (another attempt answered meanwhile, or an operator holds the chat already)."""
    now = utcnow()
    with database.connection_context(), write_transaction():
        if not answering.lock_unheld_chat(target.chat_id, now):
            answering.drop_for_operator(target.chat_id, message_id, now)
            return None
        if _stored_reply_anchor(target.chat_id) is not None:
            return None
        if (
            Message.select(Message.reply_state).where(Message.id == message_id).scalar()
            != ReplyState.PENDING.value
        ):
            return None
        [row] = answering.answer_rows(
            target.chat_id,
            [""],
            run.completion,
            now,
            reply_to=message_id,
            kind=MessageKind.NOTICE,  # no words of the agent's: the model never reads it
            tool_calls=run.calls,
        )
        record_id = Message.insert(row).execute()
        _set_reply_state(_pending_ids(target.chat_id, upto=message_id), ReplyState.NONE)
    return tools.requested_action(run.calls), record_id


def _covering_reply(message: Message) -> Message | None:
    """The first part of the agent's reply that answered an inbound message (None: there is none).

    A text left without reply (`none`) counts only when the reply is a silent end_chat/handoff
    record: texts that arrived while an operator held the chat were answered by no agent reply.
    """
    if message.role != Role.USER.value or message.reply_state not in (
        ReplyState.ANSWERED.value,
        ReplyState.NONE.value,
    ):
        return None
    reply = (
        Message.select(Message.id, Message.content, Message.tool_calls)
        .where(
            (Message.chat == message.chat_id)
            & (Message.role == Role.AGENT.value)
            & (Message.reply_to >= message.id)
        )
        .order_by(Message.reply_to, Message.part_index, Message.id)
        .first()
    )
    if reply is not None and message.reply_state == ReplyState.NONE.value and reply.content:
        return None
    return reply


def _first_part(anchor: int) -> Message | None:
    """The first part of the reply to `anchor` (its id and the tool calls stored on it)."""
    return (
        Message.select(Message.id, Message.tool_calls)
        .where((Message.reply_to == anchor) & (Message.role == Role.AGENT.value))
        .order_by(Message.part_index, Message.id)
        .first()
    )


# What `send_parts` reads of a stored part.
PART_COLUMNS = (
    Message.id,
    Message.content,
    Message.media,
    Message.details,
    Message.part_index,
    Message.twilio_sid,
)


def _send_unsent_parts(settings: Settings, target: SmsTarget, anchor: int) -> int:
    """Send, in order, each part of the reply to `anchor` that has no SID; return how many."""
    with database.connection_context():
        parts = list(
            Message.select(*PART_COLUMNS)
            .where((Message.reply_to == anchor) & (Message.role == Role.AGENT.value))
            .order_by(Message.part_index, Message.id)
        )
    return send_parts(settings, target, parts)


def send_parts(settings: Settings, target: SmsTarget, parts: list[Message]) -> int:
    """Send, in order, each of these stored parts that has no SID yet; return how many were sent.

    Each part is claimed before the send and its SID stored right after, so a part is never
    sent twice by two attempts; a permanent failure fails the rest of the parts with its reason.
    """
    callback = status_callback_url(settings)
    with database.connection_context():
        sender = sender_for(settings, target.our_number)
    sent = 0
    for index, part in enumerate(parts):
        if part.twilio_sid:
            continue
        with attempt_token() as token:
            if _send_part(settings, target, parts, index, token, callback, sender):
                sent += 1
    return sent


def _send_part(
    settings: Settings,
    target: SmsTarget,
    parts: list[Message],
    index: int,
    token: str,
    callback: str | None,
    sender: Sender,
) -> bool:
    """Claim, send and record one part (see send_parts); False when another attempt just sent it."""
    part = parts[index]
    claim = _claim(part.id, token)
    if claim is None:
        with database.connection_context():
            if Message.select(Message.twilio_sid).where(Message.id == part.id).scalar():
                return False  # another attempt sent it a moment ago
        raise TransientError("Another attempt is sending this reply right now.", IN_PROGRESS)
    try:
        # The number's send rate (max_mps), shared by every worker, taken as close to the send
        # as possible; SenderPaced (the part is released) when the next slot is far off.
        wait_for_slot(settings, sender)
        template = part.details if isinstance(part.details, dict) else {}
        # Taken over from a sender that died mid-send: Twilio may have accepted the part
        # already (the sender died before storing the SID); then it is not sent again.
        found = (
            find_sent(
                settings,
                from_=target.our_number,
                to=target.their_number,
                body=part.content,
                since=claim - SEND_CLOCK_SLACK,
            )
            if claim is not True
            else None
        )
        sid, status = found or send_sms(
            settings,
            from_=target.our_number,
            to=target.their_number,
            body=part.content,
            media_urls=[m["url"] for m in part.media or [] if isinstance(m, dict) and m.get("url")],
            status_callback=callback,
            content_sid=template.get("content_sid"),
            content_variables=template.get("content_variables"),
            messaging_service_sid=sender.messaging_service_sid,
        )
    except PermanentError as exc:
        unsent = [p.id for p in parts[index:] if not p.twilio_sid]
        metrics.count("reply_parts", len(unsent), result="failed", error_code=str(exc.code or "error"))
        record_part_failure(unsent, exc)
        if is_opted_out(exc):
            _mark_opted_out(target)
        raise
    except Exception as exc:
        _unclaim(part.id)  # let the next attempt send it at once
        code = str(getattr(exc, "code", None) or type(exc).__name__)
        metrics.count("reply_parts", result="retried", error_code=code)
        raise
    _store_sid(part.id, sid, status)
    metrics.count("reply_parts", result="sent", error_code="")
    log_part_out(target, index, len(parts), _our_status(status))
    return True


def _store_sid(part_id: int, sid: str, status: str | None) -> None:
    """Record the SID Twilio gave a part; a dropped database connection is retried a few times.

    Twilio has the part by now: losing the SID would leave the part claimed until another
    attempt asks Twilio for it (find_sent), so a fresh connection is worth a few tries.
    """
    for attempt in range(SID_STORE_ATTEMPTS):
        try:
            with database.connection_context():
                Message.update(twilio_sid=sid, status=_our_status(status), updated_at=utcnow()).where(
                    Message.id == part_id
                ).execute()
                apply_early_statuses(sid)  # a callback that beat us here
            return
        except (OperationalError, InterfaceError):
            if attempt == SID_STORE_ATTEMPTS - 1:
                raise
            log.warning("part %s: storing its SID %s failed (database); trying again", part_id, sid)
            time.sleep(0.5 * (attempt + 1))


def log_part_out(target: SmsTarget, index: int, count: int, status: str) -> None:
    """The one INFO line of a part Twilio took (the number shown by its last 4 digits)."""
    log.info(
        "sms out: chat %s to %s, part %d/%d %s",
        target.chat_id,
        mask_number(target.their_number),
        index + 1,
        count,
        status,
        extra=traffic(target.chat_id, "out", status, target.their_number, part=index + 1),
    )


def _claim(part_id: int, token: str) -> bool | datetime | None:
    """Mark a part `sending` by this attempt (`token`) unless a live attempt holds it.

    True: this attempt may send it. A datetime: the part was taken over from an attempt that
    ended mid-send (its process died, or it failed after claiming; or its lease expired) at
    about that time; Twilio must be asked whether that send went through. None: another live
    attempt holds it.
    """
    now = utcnow()
    mine = {Message.status: "sending", Message.claimed_by: token, Message.updated_at: now}
    with database.connection_context():
        if (
            Message.update(mine)
            .where(
                (Message.id == part_id)
                & Message.twilio_sid.is_null()
                & (Message.status == MessageStatus.QUEUED.value)
            )
            .execute()
        ):
            return True
        row = (
            Message.select(Message.status, Message.claimed_by, Message.updated_at)
            .where((Message.id == part_id) & Message.twilio_sid.is_null())
            .first()
        )
        if row is None or row.status != "sending":
            return None
        if not (row.updated_at < now - SEND_LEASE or claim_is_abandoned(row.claimed_by)):
            return None
        holder = (
            Message.claimed_by.is_null() if row.claimed_by is None else Message.claimed_by == row.claimed_by
        )
        taken = (
            Message.update(mine)
            .where(
                (Message.id == part_id)
                & Message.twilio_sid.is_null()
                & (Message.status == "sending")
                & (Message.updated_at == row.updated_at)
                & holder
            )
            .execute()
        )
        if taken:
            log.warning("part %s: its sender died mid-send; taking it over (checking Twilio first)", part_id)
        return row.updated_at if taken else None


def _unclaim(part_id: int) -> None:
    """Give a claimed part back after a failed send (best effort: the lease expires anyway)."""
    try:
        with database.connection_context():
            Message.update(status=MessageStatus.QUEUED.value, updated_at=utcnow()).where(
                (Message.id == part_id) & Message.twilio_sid.is_null() & (Message.status == "sending")
            ).execute()
    except Exception:
        log.warning("could not release the claim on part %s", part_id, exc_info=True)


def _our_status(twilio_status: str | None) -> str:
    """Twilio's status of a just-created message, in our vocabulary (the status callbacks' mapping)."""
    return (map_twilio_status(twilio_status) or MessageStatus.QUEUED).value


def record_part_failure(part_ids: list[int], error: Exception) -> None:
    """Record that these parts will never be sent, with the error that stopped them."""
    if not part_ids:
        return
    code, reason = _code_reason(error)
    with database.connection_context():
        Message.update(
            status=MessageStatus.FAILED.value, error_code=code, error_message=reason, updated_at=utcnow()
        ).where(Message.id.in_(part_ids) & Message.twilio_sid.is_null()).execute()


def _record_failure(message_ids: list[int], error: Exception) -> None:
    """Give up on these inbound messages: reply_state failed, with the error; unsent parts fail too."""
    code, reason = _code_reason(error)
    log.warning("reply to messages %s failed for good: [%s] %s", message_ids, code, reason)
    metrics.count("texts_received", len(message_ids), outcome="failed")
    try:
        with database.connection_context(), database.atomic():
            Message.update(
                reply_state=ReplyState.FAILED.value,
                error_code=code,
                error_message=reason,
                updated_at=utcnow(),
            ).where(Message.id.in_(message_ids) & (Message.reply_state == ReplyState.PENDING.value)).execute()
            Message.update(
                status=MessageStatus.FAILED.value, error_code=code, error_message=reason, updated_at=utcnow()
            ).where(
                Message.reply_to.in_(message_ids)
                & (Message.role == Role.AGENT.value)
                & Message.twilio_sid.is_null()
            ).execute()
    except Exception:  # the original error is re-raised by the caller; do not mask it
        log.exception("could not record the failure of messages %s", message_ids)


def _code_reason(error: Exception) -> tuple[str, str]:
    """The (error_code, error_message) stored for an error."""
    code = getattr(error, "code", None) or type(error).__name__
    reason = getattr(error, "reason", None) or str(error)
    return str(code)[:16], reason


def _finish_reply(message_ids: list[int]) -> bool:
    """The reply is sent: its inbound messages are `answered`, or `failed` after a fallback.

    A fallback left the model's error (error_code) on them when it was stored; True when so.
    """
    if not message_ids:
        return False
    with database.atomic():
        failed = (
            Message.update(reply_state=ReplyState.FAILED.value, updated_at=utcnow())
            .where(
                Message.id.in_(message_ids)
                & (Message.reply_state == ReplyState.PENDING.value)
                & Message.error_code.is_null(False)
            )
            .execute()
        )
        _set_reply_state(message_ids, ReplyState.ANSWERED)
    return bool(failed)


def _set_reply_state(message_ids: list[int], state: ReplyState) -> None:
    """Move pending inbound messages to `state`."""
    if message_ids:
        Message.update(reply_state=state.value, updated_at=utcnow()).where(
            Message.id.in_(message_ids) & (Message.reply_state == ReplyState.PENDING.value)
        ).execute()


def _may_send_free_form(target: SmsTarget) -> bool:
    """False for a WhatsApp chat whose person last wrote more than 24 hours ago (a late or swept reply)."""
    return target.channel != Channel.WHATSAPP.value or session_window_open(
        target.our_number, target.their_number
    )


def _opted_out(target: SmsTarget) -> bool:
    """True when the person opted out of texts from this number."""
    return has_opted_out(target.our_number, target.their_number)


def _mark_opted_out(target: SmsTarget) -> None:
    """Twilio says the person opted out (21610): remember it so we stop answering."""
    now = utcnow()
    with database.connection_context(), write_transaction():
        updated = (
            Contact.update(opted_out=True, opted_out_at=now)
            .where((Contact.our_number == target.our_number) & (Contact.phone_number == target.their_number))
            .execute()
        )
        if not updated:
            Contact.insert(
                our_number=target.our_number,
                phone_number=target.their_number,
                opted_out=True,
                opted_out_at=now,
                created_at=now,
            ).on_conflict_ignore().execute()


# --- ending silent chats --------------------------------------------------------------------

# Chats ended per agent per run, so one run stays short however many chats went quiet at once.
CLOSE_BATCH = 500


def close_silent_chats(
    settings: Settings, now: datetime | None = None, on_ended: Callable[[str], object] | None = None
) -> int:
    """End ongoing chats silent for longer than their agent's `end_chat_after_silence_ms`.

    Each chat is ended by a conditional UPDATE (still ongoing, still silent), so a message that
    arrives meanwhile keeps its chat open, and two sweeps never end (or close-message) one chat
    twice. SMS chats whose agent has an `auto_close_message` get it by SMS; `on_ended(chat_id)`
    is called for each ended chat (the job queues its post-chat analysis). Returns how many
    chats were ended.
    """
    now = now or utcnow()
    ended = 0
    with database.connection_context():
        agents = list(Agent.select(Agent.agent_id, Agent.end_chat_after_silence_ms, Agent.auto_close_message))
    for agent in agents:
        if not agent.end_chat_after_silence_ms or agent.end_chat_after_silence_ms <= 0:
            continue
        cutoff = now - timedelta(milliseconds=agent.end_chat_after_silence_ms)
        with database.connection_context():
            chats = list(
                Chat.select(Chat.chat_id, Chat.chat_type, Chat.channel, Chat.from_number, Chat.to_number)
                .where(
                    (Chat.agent == agent.agent_id)
                    & (Chat.chat_status == ChatStatus.ONGOING.value)
                    & (Chat.last_activity_at < cutoff)
                    & Chat.operator_held_at.is_null()
                )
                .order_by(Chat.last_activity_at)
                .limit(CLOSE_BATCH)
            )
        for chat in chats:
            if _end_chat(chat.chat_id, cutoff, now):
                ended += 1
                if agent.auto_close_message and chat.chat_type == ChatType.SMS.value and chat.to_number:
                    _send_auto_close(settings, chat, agent.auto_close_message)
                if on_ended is not None:
                    on_ended(chat.chat_id)
    return ended


def _end_chat(chat_id: str, cutoff: datetime, now: datetime) -> bool:
    """End one chat for inactivity if it is still ongoing and silent; True when this call ended it."""
    with database.connection_context():
        return bool(
            Chat.update(
                chat_status=ChatStatus.ENDED.value,
                end_timestamp=now,
                end_reason="inactivity",
                ongoing_pair=None,
            )
            .where(
                (Chat.chat_id == chat_id)
                & (Chat.chat_status == ChatStatus.ONGOING.value)
                & (Chat.last_activity_at < cutoff)
                & Chat.operator_held_at.is_null()  # an operator holds it: not silent, just human
            )
            .execute()
        )


def _send_auto_close(settings: Settings, chat: Chat, text: str) -> None:
    """Record and send the agent's closing text; a failure is recorded on that message, not raised.

    The chat is already ended and this runs from a periodic sweep: raising would only hide the
    other chats' closings behind one person's bad number.
    """
    target = SmsTarget(chat.chat_id, chat.from_number, chat.to_number, chat.channel)
    with database.connection_context():
        if _opted_out(target):
            return
        now = utcnow()
        with write_transaction():
            ids = []
            for index, body in enumerate(split_sms(text)):
                ids.append(
                    Message.insert(
                        chat=chat.chat_id,
                        role=Role.AGENT.value,
                        kind=MessageKind.NOTICE.value,  # the chat is over: a closing notice
                        content=body,
                        status="sending",
                        from_number=target.our_number,
                        to_number=target.their_number,
                        part_index=index,
                        created_at=now,
                        updated_at=now,
                    ).execute()
                )
    with database.connection_context():
        sender = sender_for(settings, target.our_number)
    for index, (part_id, body) in enumerate(zip(ids, split_sms(text), strict=True)):
        try:
            sid, status = send_sms(
                settings,
                from_=target.our_number,
                to=target.their_number,
                body=body,
                status_callback=status_callback_url(settings),
                messaging_service_sid=sender.messaging_service_sid,
            )
        except (PermanentError, TransientError) as exc:
            log.warning("closing message for chat %s not sent: %s", chat.chat_id, exc)
            record_part_failure(ids[index:], exc)
            if is_opted_out(exc):
                _mark_opted_out(target)
            return
        with database.connection_context():
            Message.update(twilio_sid=sid, status=_our_status(status), updated_at=utcnow()).where(
                Message.id == part_id
            ).execute()
        log_part_out(target, index, len(ids), _our_status(status))
