"""Where an inbound SMS gets its answer: prompt, model, plain text, parts, Twilio, in that order.

`answer_message` is the whole reply to one inbound message, in phases that each hold a database
connection only briefly (none while the model or Twilio is being waited on):

1. read: the message, its chat and agent; skip it when it no longer needs an answer;
2. if a previous attempt already stored the reply's parts (and died while sending), go to 4;
3. ask the model about every pending message of the chat (this one, and any that arrived
   since: a burst of texts gets one answer), then store the reply's parts in ONE transaction,
   before anything is sent;
4. send each part that has no Twilio SID yet, storing each SID as soon as Twilio answers
   (gateway/conversations/delivery.py);
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
own: covering a burst of texts, opt-out, splitting into parts and having them sent. An operator
who takes the chat over while the model thinks wins: the answer is dropped when it would be stored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gateway import metrics
from gateway.agent import llm, spend, tools
from gateway.agent.text import split_sms, to_plain_text, to_whatsapp_text
from gateway.config import Settings
from gateway.conversations import answering
from gateway.conversations.consent import has_opted_out
from gateway.conversations.delivery import (
    IN_PROGRESS,
    SmsTarget,
    send_parts,
    store_parts,
    stored_parts,
)
from gateway.conversations.refusals import refuse_reply
from gateway.errors import GatewayError, PermanentError, TransientError, code_and_reason
from gateway.storage.db import database, is_unreachable, write_transaction
from gateway.storage.models import (
    Agent,
    Channel,
    Chat,
    ChatType,
    Message,
    MessageKind,
    MessageStatus,
    ReplyState,
    Role,
    utcnow,
)
from gateway.twilio import media
from gateway.twilio.channels import OUTSIDE_WINDOW_ERROR, session_window_open
from gateway.twilio.client import show_typing
from gateway.twilio.senders import SENDER_PACED

log = logging.getLogger(__name__)

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
                if has_opted_out(target.our_number, target.their_number):
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
                refuse_reply(settings, agent, refusal, target, covered)
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
                except answering.BudgetExhausted as exc:
                    # The call's reservation did not fit (calls in flight hold the rest of the
                    # budget): refused like an admission over the budget, one notice a day, and
                    # not counted as a reply against the person's caps.
                    spend.unadmit_reply(settings, agent, target.their_number, newest)
                    refusal = spend.Refusal(
                        ReplyState.BUDGET_EXHAUSTED,
                        exc.reason,
                        spend.budget_notice_due(settings, agent, target.their_number),
                    )
                    refuse_reply(settings, agent, refusal, target, covered)
                    return ReplyOutcome(refusal.state.value, message_id, sent, tuple(covered))
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
    except Exception as exc:  # a bug or a database outage: RQ sees it; the last attempt records a bug
        if last_attempt and is_unreachable(exc):
            # Nothing can be recorded, and nothing is wrong with the texts: they stay pending, and
            # the sweep queues their reply again once the database answers.
            log.warning(
                "reply to messages %s: the database is unreachable on the last attempt (%s); "
                "the texts stay pending for the sweep",
                covered,
                str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__,
            )
        elif last_attempt:
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
            code, reason = code_and_reason(failure)
            Message.update(error_code=code, error_message=reason, updated_at=now).where(
                (Message.chat == target.chat_id)
                & (Message.role == Role.USER.value)
                & (Message.reply_state == ReplyState.PENDING.value)
                & (Message.id <= message_id)
            ).execute()
        store_parts(
            target,
            parts,
            now,
            reply_to=message_id,
            completion=completion,
            # A fallback is the gateway's words, not the agent's: the model never reads it.
            kind=MessageKind.TEXT if failure is None else MessageKind.NOTICE,
            tool_calls=tool_calls,
        )
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


def _send_unsent_parts(settings: Settings, target: SmsTarget, anchor: int) -> int:
    """Send, in order, each part of the reply to `anchor` that has no SID; return how many."""
    with database.connection_context():
        parts = stored_parts((Message.reply_to == anchor) & (Message.role == Role.AGENT.value))
    return send_parts(settings, target, parts)


def _record_failure(message_ids: list[int], error: Exception) -> None:
    """Give up on these inbound messages: reply_state failed, with the error; unsent parts fail too."""
    code, reason = code_and_reason(error)
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
    except Exception as exc:  # the original error is re-raised by the caller; do not mask it
        if is_unreachable(exc):
            log.warning(
                "could not record the failure of messages %s: the database is unreachable", message_ids
            )
        else:
            log.exception("could not record the failure of messages %s", message_ids)


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
