"""Outbound SMS conversations: a chat the gateway starts, its opening text, and sending it.

`start_sms_chat` records everything in one transaction (the chat, the opening text when the
caller wrote one, the idempotency key) before anything is sent; the `send_opening` job then asks
the agent for the opening text when there is none (through the "answer this chat" service,
gateway/conversations/answering.py: a spent token budget refuses it before the model call) and
sends the parts that have no Twilio SID, exactly like a reply (`delivery.send_parts`). When the
person answers, the inbound webhook finds this chat by its number pair, so the conversation
continues in the same chat.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from peewee import IntegrityError

from gateway.agent import llm
from gateway.agent.text import split_sms
from gateway.config import Settings
from gateway.conversations import answering, delivery
from gateway.conversations.consent import is_first_text, next_send_time, opt_out_hint, with_hint
from gateway.conversations.lifecycle import END_BY_FAILED_OPENING, end_chat
from gateway.conversations.replies import ask_for_sms
from gateway.conversations.sessions import pair_key
from gateway.errors import PermanentError, TransientError, code_and_reason
from gateway.storage.db import database
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
    Role,
    utcnow,
)
from gateway.twilio.channels import (
    OUTSIDE_SESSION_WINDOW,
    SESSION_WINDOW_HOURS,
    may_send_free_form,
    outside_window_error,
    session_window_open,
)
from gateway.twilio.senders import SenderPaced

log = logging.getLogger(__name__)

# What the agent is told when it writes the first text of a conversation it starts.
OPENING_INSTRUCTION = (
    "(You are starting this text conversation: nobody has written yet. Write the first SMS to "
    "send to the person, following your instructions. Reply with the message text only.)"
)


class OutboundRefused(Exception):
    """The conversation cannot start; `status`, `code` and `field` say why to the API caller."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        """Keep what the API error will say."""
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


@dataclass(frozen=True)
class OutboundRequest:
    """A validated request to start an SMS conversation."""

    agent: Agent
    from_number: str
    to_number: str
    message: str | None
    media_urls: tuple[str, ...]
    metadata: dict
    dynamic_variables: dict
    channel: str = Channel.SMS.value  # from_number/to_number are the channel's addresses
    content_sid: str | None = None  # a Content API template as the opening message
    content_variables: dict | None = None


def start_sms_chat(req: OutboundRequest) -> Chat:
    """Open the SMS chat and store its opening text (if given); the caller enqueues `send_opening`.

    Runs inside the caller's transaction: the chat's unique number pair refuses a second ongoing
    conversation with the same person, however requests race.
    """
    contact = Contact.get_or_none(
        (Contact.our_number == req.from_number) & (Contact.phone_number == req.to_number)
    )
    if contact is not None and contact.opted_out:
        raise OutboundRefused(
            409,
            "opted_out",
            f"{req.to_number} has opted out of texts from {req.from_number} (they replied STOP); "
            "nothing was sent. They can opt back in by texting START.",
            "to_number",
        )
    if (
        req.channel == Channel.WHATSAPP.value
        and req.content_sid is None
        and not session_window_open(req.from_number, req.to_number)
    ):
        raise OutboundRefused(
            409,
            OUTSIDE_SESSION_WINDOW,
            f"{req.to_number} has not written to {req.from_number} in the last {SESSION_WINDOW_HOURS} hours, "
            "so WhatsApp allows only an approved template: send content_sid (and content_variables). "
            "Nothing was sent.",
        )
    pair = pair_key(req.from_number, req.to_number)
    ongoing = Chat.get_or_none(Chat.ongoing_pair == pair)
    if ongoing is not None:
        raise OutboundRefused(
            409,
            "chat_ongoing",
            f"A conversation between {req.from_number} and {req.to_number} is ongoing ({ongoing.chat_id}); "
            "end it first (POST /v1/chats/{chat_id}/end) or continue it.",
        )
    now = utcnow()
    try:
        with database.atomic():
            chat = Chat.create(
                agent=req.agent.agent_id,
                chat_type=ChatType.SMS.value,
                channel=req.channel,
                chat_status=ChatStatus.ONGOING.value,
                from_number=req.from_number,
                to_number=req.to_number,
                ongoing_pair=pair,
                metadata=req.metadata,
                dynamic_variables=req.dynamic_variables,
                start_timestamp=now,
                last_activity_at=now,
            )
    except IntegrityError as exc:
        raise OutboundRefused(
            409, "chat_ongoing", f"A conversation between {req.from_number} and {req.to_number} just started."
        ) from exc
    if req.content_sid is not None:
        template = {"content_sid": req.content_sid, "content_variables": req.content_variables or {}}
        store_opening(chat, [""], [], None, details=template)
    elif req.message is not None or req.media_urls:
        parts = hinted(chat, req.agent, split_sms(req.message) if req.message else [""])
        store_opening(chat, parts, list(req.media_urls), None)
    when = next_send_time(req.agent, req.from_number)
    if when is not None:
        # Outside the agent's sending hours: the opening waits, and silence counts from then.
        Chat.update(last_activity_at=when).where(Chat.chat_id == chat.chat_id).execute()
        chat.last_activity_at = when
    return chat


def scheduled_for(chat: Chat):
    """When a waiting opening text will go (naive UTC), or None when it goes now."""
    if chat.last_activity_at and chat.start_timestamp and chat.last_activity_at > chat.start_timestamp:
        return chat.last_activity_at
    return None


def hinted(chat: Chat, agent: Agent, parts: list[str]) -> list[str]:
    """The opening's parts, with the agent's opt-out hint when this is the first text to the person."""
    hint = opt_out_hint(agent)
    if hint and is_first_text(chat.from_number, chat.to_number, chat.chat_id):
        return with_hint(parts, hint)
    return parts


def store_opening(
    chat: Chat,
    parts: list[str],
    media_urls: list[str],
    completion: llm.Completion | None,
    *,
    details: dict | None = None,
) -> None:
    """Store the opening text's parts (the first carries the media, or the template `details`)."""
    delivery.store_parts(
        _target(chat),
        parts,
        utcnow(),
        completion=completion,
        media=[{"url": url, "content_type": None} for url in media_urls],
        details=details,
    )


def _target(chat: Chat) -> delivery.SmsTarget:
    """Who the chat's texts go to."""
    return delivery.SmsTarget(chat.chat_id, chat.from_number, chat.to_number, chat.channel)


def _opening_parts(chat_id: str) -> list[Message]:
    """The agent parts that open the chat (they answer no inbound message), in order."""
    return delivery.stored_parts(
        (Message.chat == chat_id) & (Message.role == Role.AGENT.value) & Message.reply_to.is_null()
    )


def send_opening(settings: Settings, chat_id: str, *, last_attempt: bool = True) -> int:
    """Write the opening text if there is none, then send its unsent parts; return how many were sent."""
    with database.connection_context():
        chat = Chat.get_or_none(Chat.chat_id == chat_id)
        if chat is None or chat.chat_status != ChatStatus.ONGOING.value:
            return 0
        agent = Agent.get_by_id(chat.agent_id)
        parts = _opening_parts(chat_id)
        if not parts and chat.operator_held_at is not None:
            return 0  # an operator holds the chat: the first text is theirs to write
        if not any(p.twilio_sid for p in parts):
            if _wait_for_sending_hours(chat, agent):
                return 0
            if _free_form(parts) and not may_send_free_form(chat.channel, chat.from_number, chat.to_number):
                # Its time came (sending hours, a late job) after WhatsApp's window closed.
                _record_opening_outside_window(chat, parts)
                return 0
        prompt = None if parts else answering.build_prompt(settings, chat, agent)
    target = _target(chat)
    try:
        if prompt is not None:
            answering.check_budget(settings, agent)
            prompt.append({"role": "user", "content": OPENING_INSTRUCTION})
            run, texts = ask_for_sms(settings, agent, chat, prompt)  # no tools: nobody asked anything yet
            completion = run.completion
            with database.connection_context(), database.atomic():
                if not answering.lock_unheld_chat(chat_id, utcnow()):
                    log.info("chat %s: an operator took it over; the agent's opening is dropped", chat_id)
                    return 0
                # Another attempt may have stored one meanwhile: keep the first.
                if not _opening_parts(chat_id):
                    store_opening(chat, hinted(chat, agent, texts), [], completion)
            with database.connection_context():
                parts = _opening_parts(chat_id)
        return delivery.send_parts(settings, target, parts)
    except (PermanentError, TransientError) as exc:
        # A paced send (the number is at its rate) comes back later; it is no failure.
        if isinstance(exc, PermanentError) or (last_attempt and not isinstance(exc, SenderPaced)):
            if parts:
                delivery.record_part_failure([p.id for p in parts if not p.twilio_sid], exc)
            else:
                _record_opening_failure(chat, exc)
        raise


def _wait_for_sending_hours(chat: Chat, agent: Agent) -> bool:
    """True when the agent's sending hours are closed: the chat waits (the sweep sends it later)."""
    when = next_send_time(agent, chat.from_number)
    if when is None:
        return False
    Chat.update(last_activity_at=when).where(
        (Chat.chat_id == chat.chat_id) & (Chat.chat_status == ChatStatus.ONGOING.value)
    ).execute()
    log.info("opening of chat %s waits for the agent's sending hours (until %sZ)", chat.chat_id, when)
    return True


def _free_form(parts: list[Message]) -> bool:
    """True unless the opening is an approved template (no parts yet: the agent writes free-form)."""
    return not any(isinstance(p.details, dict) and p.details.get("content_sid") for p in parts)


def _record_opening_outside_window(chat: Chat, parts: list[Message]) -> None:
    """A free-form WhatsApp opening whose time came after the window closed: not sent, and why.

    Its parts (or, when the agent was to write it, a failed notice) record Twilio's 63016 with the
    reason, and the chat ends in `error` (`opening_failed`), freeing the pair for a template start.
    """
    exc = outside_window_error("The opening text")
    log.info("chat %s: the WhatsApp window closed before its opening's time; not sent", chat.chat_id)
    if parts:
        delivery.record_part_failure([p.id for p in parts], exc)
        with database.connection_context(), database.atomic():
            end_chat(chat.chat_id, END_BY_FAILED_OPENING, utcnow(), status=ChatStatus.ERROR)
    else:
        _record_opening_failure(chat, exc, written=False)


def _record_opening_failure(chat: Chat, exc: Exception, *, written: bool = True) -> None:
    """No opening text could be written: a failed agent message says why; the chat ends in `error`.

    `written=False`: the text was not to be written at all; the message carries only `exc`'s reason.
    """
    code, reason = code_and_reason(exc)
    now = utcnow()
    with database.connection_context(), database.atomic():
        ids = delivery.store_parts(_target(chat), [""], now, kind=MessageKind.NOTICE)
        Message.update(
            status=MessageStatus.FAILED.value,
            error_code=code,
            error_message=f"The opening text could not be written: {reason}" if written else reason,
        ).where(Message.id.in_(ids)).execute()
        end_chat(chat.chat_id, END_BY_FAILED_OPENING, now, status=ChatStatus.ERROR)
