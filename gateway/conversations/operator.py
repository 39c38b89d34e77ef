"""Human takeover of an SMS chat: an operator holds it, writes by hand, and hands it back.

While `Chat.operator_held_at` is set the person's texts are recorded as usual but the agent does
not answer them (gateway/conversations/replies.py marks them as needing no reply) and the silence
timer does not end the chat. The operator's text is stored as agent parts of kind `operator`
(so the model reads them as its own earlier turns), split like a reply, and sent by the
`send_operator_parts` job through the same `send_parts` as the agent's replies: status-tracked,
never sent twice, refused when the person opted out, and on WhatsApp refused outside the
24-hour window (`outside_session_window`: only templates may go then).
"""

from __future__ import annotations

import logging

from rq import Queue

from gateway.agent.analysis import schedule_analysis
from gateway.agent.text import split_sms
from gateway.config import Settings
from gateway.conversations.consent import has_opted_out
from gateway.conversations.delivery import (
    SmsTarget,
    record_part_failure,
    send_parts,
    store_parts,
    stored_parts,
)
from gateway.conversations.lifecycle import END_BY_OPERATOR, end_chat
from gateway.errors import TWILIO_OPTED_OUT, PermanentError
from gateway.queue import enqueue_operator_parts
from gateway.storage.db import database, write_transaction
from gateway.storage.models import (
    Chat,
    ChatStatus,
    ChatType,
    Message,
    MessageKind,
    MessageStatus,
    utcnow,
)
from gateway.twilio.channels import (
    OUTSIDE_SESSION_WINDOW,
    SESSION_WINDOW_HOURS,
    bare_number,
    may_send_free_form,
)

log = logging.getLogger(__name__)

# Twilio's limit on one message body; an operator's text is split into parts like a reply.
MAX_TEXT = 1600


class OperatorRefused(Exception):
    """The operator's action cannot be done; `status`, `code` and `message` say why."""

    def __init__(self, status: int, code: str, message: str) -> None:
        """Keep what the page or the API error will say."""
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _ongoing_sms(chat: Chat | None, chat_id: str) -> Chat:
    """The chat, when it is an ongoing SMS chat; else OperatorRefused saying why."""
    if chat is None:
        raise OperatorRefused(404, "not_found", f"No chat with id {chat_id!r}.")
    if chat.chat_type != ChatType.SMS.value:
        raise OperatorRefused(409, "not_sms_chat", "Only SMS chats can be taken over.")
    if chat.chat_status != ChatStatus.ONGOING.value:
        raise OperatorRefused(409, "chat_not_ongoing", f"The chat is {chat.chat_status}, not ongoing.")
    return chat


def take_over(chat_id: str) -> Chat:
    """Hold an ongoing SMS chat for a human operator (idempotent); returns the chat."""
    _ongoing_sms(Chat.get_or_none(Chat.chat_id == chat_id), chat_id)
    Chat.update(operator_held_at=utcnow()).where(
        (Chat.chat_id == chat_id) & Chat.operator_held_at.is_null()
    ).execute()
    return Chat.get_by_id(chat_id)


def hand_back(chat_id: str) -> bool:
    """Let the agent answer the chat again; True when an operator held it."""
    return (
        Chat.update(operator_held_at=None)
        .where((Chat.chat_id == chat_id) & Chat.operator_held_at.is_null(False))
        .execute()
        > 0
    )


def end_chat_by_operator(chat_id: str, queue: Queue | None) -> bool:
    """End an ongoing chat from the console and queue its post-chat analysis; True when this ended it."""
    with write_transaction():
        ended = end_chat(chat_id, END_BY_OPERATOR)
    if ended:
        schedule_analysis(queue, Chat.get_by_id(chat_id))  # logs, never raises, when Redis is down
    return ended


def send_operator_message(chat_id: str, text: str, queue: Queue | None) -> list[Message]:
    """Store the operator's text as parts of a held SMS chat and queue their sending; the parts."""
    text = (text or "").replace("\x00", "").strip()
    if not text:
        raise OperatorRefused(422, "validation_error", "Write something to send.")
    if len(text) > MAX_TEXT:
        raise OperatorRefused(422, "validation_error", f"The text is longer than {MAX_TEXT} characters.")
    chat = _ongoing_sms(Chat.get_or_none(Chat.chat_id == chat_id), chat_id)
    if chat.operator_held_at is None:
        raise OperatorRefused(
            409, "not_held", "Take the chat over first, so the agent and you do not both answer."
        )
    if has_opted_out(chat.from_number, chat.to_number):
        raise OperatorRefused(
            409,
            "opted_out",
            f"{chat.to_number} has opted out of texts from {chat.from_number} (they replied STOP); "
            "nothing was sent.",
        )
    if not may_send_free_form(chat.channel, chat.from_number, chat.to_number):
        raise OperatorRefused(
            409,
            OUTSIDE_SESSION_WINDOW,
            f"{bare_number(chat.to_number)} has not written on WhatsApp in the last "
            f"{SESSION_WINDOW_HOURS} hours, so WhatsApp allows only an approved template, not a typed "
            "text; nothing was sent. "
            "The window opens again when they write.",
        )
    now = utcnow()
    target = SmsTarget(chat.chat_id, chat.from_number, chat.to_number, chat.channel)
    with write_transaction():
        Chat.update(last_activity_at=now).where(Chat.chat_id == chat_id).execute()
        ids = store_parts(target, split_sms(text), now, kind=MessageKind.OPERATOR)
    if queue is None:
        log.error("operator text in chat %s is stored but REDIS_URL is unset: it waits", chat_id)
    else:
        try:
            enqueue_operator_parts(queue, chat_id=chat_id, first_message_id=ids[0])
        except Exception:
            log.exception("could not queue the operator's text in chat %s; it stays queued", chat_id)
    return list(Message.select().where(Message.id.in_(ids)).order_by(Message.id))


def send_operator_parts(settings: Settings, chat_id: str) -> int:
    """Send the chat's operator parts that have no Twilio SID yet, in order; return how many were sent."""
    with database.connection_context():
        chat = Chat.get_or_none(Chat.chat_id == chat_id)
        if chat is None or not (chat.from_number and chat.to_number):
            return 0
        parts = stored_parts(
            (Message.chat == chat_id)
            & (Message.kind == MessageKind.OPERATOR.value)
            & Message.twilio_sid.is_null()
            & Message.status.in_([MessageStatus.QUEUED.value, MessageStatus.SENDING.value])
        )
        opted_out = has_opted_out(chat.from_number, chat.to_number)
    if opted_out:
        record_part_failure(
            [p.id for p in parts],
            PermanentError("The person opted out (replied STOP); not sent.", str(TWILIO_OPTED_OUT)),
        )
        return 0
    return send_parts(
        settings, SmsTarget(chat.chat_id, chat.from_number, chat.to_number, chat.channel), parts
    )
