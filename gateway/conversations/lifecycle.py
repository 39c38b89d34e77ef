"""How a chat ends: `end_chat` for every caller, and the sweep that ends chats gone silent.

Every caller ends a chat through `end_chat` (the API, the console's operator, STOP, the silence
sweep, a failed opening): one conditional UPDATE, so a chat ends at most once however callers
race, and its number pair is freed for the next chat. Opting a person out and in lives in
consent.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from gateway.agent.text import split_sms
from gateway.config import Settings
from gateway.conversations.consent import has_opted_out
from gateway.conversations.delivery import SmsTarget, send_notice, store_parts
from gateway.storage.db import database, write_transaction
from gateway.storage.models import Agent, Chat, ChatStatus, ChatType, MessageKind, utcnow
from gateway.twilio.channels import may_send_free_form

log = logging.getLogger(__name__)

# Chats ended per agent per run, so one run stays short however many chats went quiet at once.
CLOSE_BATCH = 500

# Chat.end_reason, by who or what ended the chat.
END_BY_API = "api"
END_BY_OPERATOR = "operator"
END_BY_AGENT = "agent"  # the model called its end_chat tool (gateway/conversations/tool_actions.py)
END_BY_OPT_OUT = "opt_out"  # the person texted STOP
END_BY_SILENCE = "inactivity"  # the agent's end_chat_after_silence_ms passed
END_BY_FAILED_OPENING = "opening_failed"  # no opening text could be written (or sent: WhatsApp window)


def end_chat(
    chat_id: str,
    reason: str,
    now: datetime | None = None,
    *,
    status: ChatStatus = ChatStatus.ENDED,
    silent_since: datetime | None = None,
) -> bool:
    """End an ongoing chat (freeing its number pair for the next one); True when this call ended it.

    With `silent_since` only a chat with no activity since then and not held by an operator ends
    (the silence sweep): a text arriving meanwhile keeps it open.
    """
    where = (Chat.chat_id == chat_id) & (Chat.chat_status == ChatStatus.ONGOING.value)
    if silent_since is not None:
        # An operator holds it: not silent, just human.
        where &= (Chat.last_activity_at < silent_since) & Chat.operator_held_at.is_null()
    update = Chat.update(
        chat_status=status.value, end_timestamp=now or utcnow(), end_reason=reason, ongoing_pair=None
    )
    return update.where(where).execute() > 0


def close_silent_chats(
    settings: Settings, now: datetime | None = None, on_ended: Callable[[str], object] | None = None
) -> int:
    """End ongoing chats silent for longer than their agent's `end_chat_after_silence_ms`.

    Each chat is ended by a conditional UPDATE (still ongoing, still silent, not held by an
    operator), so a message that arrives meanwhile keeps its chat open, and two sweeps never end
    (or close-message) one chat twice. SMS chats whose agent has an `auto_close_message` get it by
    SMS (on WhatsApp only inside the 24-hour window; else it is skipped); `on_ended(chat_id)` is
    called for each ended chat (the job queues its post-chat analysis). Returns how many chats
    were ended.
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
            with database.connection_context():
                closed = end_chat(chat.chat_id, END_BY_SILENCE, now, silent_since=cutoff)
            if closed:
                ended += 1
                if agent.auto_close_message and chat.chat_type == ChatType.SMS.value and chat.to_number:
                    _send_auto_close(settings, chat, agent.auto_close_message)
                if on_ended is not None:
                    on_ended(chat.chat_id)
    return ended


def _send_auto_close(settings: Settings, chat: Chat, text: str) -> None:
    """Store and send the agent's closing text (a notice: its failure is recorded, not raised).

    The chat is already ended and this runs from a periodic sweep: raising would only hide the
    other chats' closings behind one person's bad number.
    """
    target = SmsTarget(chat.chat_id, chat.from_number, chat.to_number, chat.channel)
    with database.connection_context():
        if has_opted_out(target.our_number, target.their_number):
            return
        if not may_send_free_form(target.channel, target.our_number, target.their_number):
            # WhatsApp's 24-hour window closed (a WhatsApp chat gone silent that long): skipped.
            log.info("chat %s: no closing message, WhatsApp's 24-hour window is closed", chat.chat_id)
            return
        with write_transaction():
            # The chat is over: a closing notice, not the agent's words.
            ids = store_parts(target, split_sms(text), utcnow(), kind=MessageKind.NOTICE)
    send_notice(settings, target, ids, "closing message")
