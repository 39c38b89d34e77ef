"""What the reply path does when the spend guard refuses a reply: record why, notify at most once.

The texts that would have been answered keep their place in the chat with `reply_state`
`rate_limited` or `budget_exhausted` and the reason in `error_message` (the API shows both). No
model call is made. When this is the person's first refusal in the window (gateway/agent/spend.py
decides, atomically, in Redis), the agent's `limit_notice_message` (None: a built-in text; "":
none) is stored as a message of kind `notice` and sent (on WhatsApp only inside the 24-hour
window). A notice that cannot be sent is recorded as failed and not retried: it is a courtesy, and
the next window brings another.
"""

from __future__ import annotations

import logging

from gateway.agent.spend import Refusal, notice_text
from gateway.config import Settings
from gateway.conversations.consent import has_opted_out
from gateway.conversations.delivery import SmsTarget, send_notice, store_parts
from gateway.storage.db import database, write_transaction
from gateway.storage.models import Agent, Message, MessageKind, ReplyState, utcnow
from gateway.twilio.channels import may_send_free_form

log = logging.getLogger(__name__)


def refuse_reply(
    settings: Settings, agent: Agent, refusal: Refusal, target: SmsTarget, message_ids: list[int]
) -> bool:
    """Record the refusal on these pending texts and send the notice when one is due; True if sent."""
    now = utcnow()
    text = notice_text(agent, refusal) if refusal.notify else None
    notice_ids: list[int] = []
    with database.connection_context(), write_transaction():
        Message.update(
            reply_state=refusal.state.value,
            error_code=refusal.state.value,
            error_message=refusal.reason,
            updated_at=now,
        ).where(Message.id.in_(message_ids) & (Message.reply_state == ReplyState.PENDING.value)).execute()
        if (
            text
            and not has_opted_out(target.our_number, target.their_number)
            and may_send_free_form(target.channel, target.our_number, target.their_number)
        ):
            notice_ids = store_parts(target, [text], now, kind=MessageKind.NOTICE, reply_to=max(message_ids))
    log.info("spend guard: no reply to messages %s in %s: %s", message_ids, target.chat_id, refusal.reason)
    return bool(notice_ids) and send_notice(settings, target, notice_ids, "spend-guard notice") > 0
