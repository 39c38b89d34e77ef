"""What an agent's built-in tools do to its chat, once the reply that called them is stored and sent.

- `end_chat`: the chat ends (`end_reason` "agent"), its post-chat analysis is queued and the
  `chat_ended` event is emitted — only by the call that ended it, so a retried job does nothing twice.
- `handoff_to_human`: an SMS or WhatsApp chat goes into operator takeover
  (gateway/conversations/operator.py `take_over`: the agent stops answering, the console and the
  API show it held) and the `chat_handoff` event is emitted, with the agent's message and the
  model's `reason`. An API chat has no takeover: only the event is emitted, so the business's
  system can take it from there.

The tool-call loop itself (which calls the model and the business's functions) is
gateway/agent/tools.py; this module only acts on what it returned.
"""

from __future__ import annotations

import logging
from typing import Any

from rq import Queue

from gateway import events
from gateway.agent.analysis import schedule_analysis
from gateway.agent.tools import END_CHAT, HANDOFF
from gateway.config import Settings
from gateway.conversations import operator
from gateway.conversations.lifecycle import END_BY_AGENT, end_chat
from gateway.storage.db import database, write_transaction
from gateway.storage.models import Chat, ChatStatus, ChatType

log = logging.getLogger(__name__)


def perform(
    settings: Settings,
    queue: Queue | None,
    chat_id: str,
    record: dict[str, Any],
    message: dict[str, Any] | None = None,
) -> bool:
    """Do what a built-in tool call asks (`record` as stored); True when it changed the chat.

    `message` is the agent's message that called it (for the event). Never raises: the reply is
    out already, and a failure here is logged for a person to read.
    """
    try:
        if record.get("name") == END_CHAT:
            return end_chat_by_agent(settings, queue, chat_id)
        if record.get("name") == HANDOFF:
            arguments = record.get("arguments") if isinstance(record.get("arguments"), dict) else {}
            reason = arguments.get("reason") if isinstance(arguments.get("reason"), str) else None
            return hand_off(settings, queue, chat_id, reason, message)
    except Exception:
        log.exception("tools: could not do %s for chat %s", record.get("name"), chat_id)
    return False


def end_chat_by_agent(settings: Settings, queue: Queue | None, chat_id: str) -> bool:
    """End the chat as its agent asked; queue its analysis and emit chat_ended (True when it ended now)."""
    with database.connection_context():
        with write_transaction():
            ended = end_chat(chat_id, END_BY_AGENT)
        if ended:
            log.info("tools: the agent ended chat %s", chat_id)
            schedule_analysis(queue, chat_id)  # logs, never raises, when Redis is down
            events.emit(queue, settings, events.CHAT_ENDED, chat_id)  # reads the agent's webhook
    return ended


def hand_off(
    settings: Settings, queue: Queue | None, chat_id: str, reason: str | None, message: dict[str, Any] | None
) -> bool:
    """Hold an SMS chat for a human operator and emit chat_handoff (True when the chat changed now)."""
    with database.connection_context():
        chat = Chat.get_or_none(Chat.chat_id == chat_id)
        if chat is None or chat.chat_status != ChatStatus.ONGOING.value:
            return False
        held = False
        if chat.chat_type == ChatType.SMS.value:
            if chat.operator_held_at is not None:
                return False  # held already (a retried job): the event went out the first time
            operator.take_over(chat_id)
            held = True
        log.info("tools: the agent handed chat %s to a human (%s)", chat_id, reason or "no reason given")
        event_message = {**(message or {"role": "agent"}), "reason": reason}
        events.emit(queue, settings, events.CHAT_HANDOFF, chat_id, message=event_message)
    return held
