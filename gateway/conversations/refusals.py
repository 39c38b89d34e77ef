"""What the reply path does when the spend guard refuses a reply: record why, notify at most once.

The texts that would have been answered keep their place in the chat with `reply_state`
`rate_limited` or `budget_exhausted` and the reason in `error_message` (the API shows both). No
model call is made. When this is the person's first refusal in the window (gateway/agent/spend.py
decides, atomically, in Redis), the agent's `limit_notice_message` (None: a built-in text; "": none)
is stored as a message of kind `notice` and sent. A notice that cannot be sent is recorded as
failed and not retried: it is a courtesy, and the next window brings another.
"""

from __future__ import annotations

import logging

from gateway.agent.spend import Refusal, notice_text
from gateway.config import Settings
from gateway.conversations.sessions import has_opted_out
from gateway.errors import GatewayError
from gateway.storage.db import database, write_transaction
from gateway.storage.models import (
    Agent,
    Message,
    MessageKind,
    MessageStatus,
    ReplyState,
    Role,
    utcnow,
)
from gateway.twilio.client import send_sms
from gateway.twilio.senders import sender_for
from gateway.twilio.statuses import map_twilio_status

log = logging.getLogger(__name__)


def refuse_reply(
    settings: Settings,
    agent: Agent,
    refusal: Refusal,
    *,
    chat_id: str,
    our_number: str,
    their_number: str,
    message_ids: list[int],
    status_callback: str | None = None,
) -> bool:
    """Record the refusal on these pending texts and send the notice when one is due; True if sent."""
    now = utcnow()
    text = notice_text(agent, refusal) if refusal.notify else None
    notice_id = None
    with database.connection_context(), write_transaction():
        Message.update(
            reply_state=refusal.state.value,
            error_code=refusal.state.value,
            error_message=refusal.reason,
            updated_at=now,
        ).where(Message.id.in_(message_ids) & (Message.reply_state == ReplyState.PENDING.value)).execute()
        opted_out = has_opted_out(our_number, their_number)
        if text and not opted_out:
            notice_id = Message.insert(
                chat=chat_id,
                role=Role.AGENT.value,
                kind=MessageKind.NOTICE.value,
                content=text,
                status="sending",
                from_number=our_number,
                to_number=their_number,
                reply_to=max(message_ids),
                part_index=0,
                created_at=now,
                updated_at=now,
            ).execute()
    log.info("spend guard: no reply to messages %s in %s: %s", message_ids, chat_id, refusal.reason)
    if notice_id is None:
        return False
    with database.connection_context():
        service = sender_for(settings, our_number).messaging_service_sid
    try:
        sid, status = send_sms(
            settings,
            from_=our_number,
            to=their_number,
            body=text or "",
            status_callback=status_callback,
            messaging_service_sid=service,
        )
    except GatewayError as exc:
        log.warning("spend guard: the notice in %s was not sent: %s", chat_id, exc)
        with database.connection_context():
            Message.update(
                status=MessageStatus.FAILED.value,
                error_code=str(exc.code)[:16],
                error_message=exc.reason,
                updated_at=utcnow(),
            ).where(Message.id == notice_id).execute()
        return False
    with database.connection_context():
        Message.update(
            twilio_sid=sid,
            status=(map_twilio_status(status) or MessageStatus.QUEUED).value,
            updated_at=utcnow(),
        ).where(Message.id == notice_id).execute()
    return True
