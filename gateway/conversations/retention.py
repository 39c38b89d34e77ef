"""Retention: messages older than RETENTION_DAYS are deleted by a periodic job (workers.jobs).

Deleted in batches, each its own short transaction, so a first run over years of history never
holds the write lock for long. Ended chats left with no message and idempotency keys older than
the cutoff go too (their stored answers name the person). Contacts stay: they hold opt-outs,
which must outlive any history. Profiles stay until the person is erased (gateway.conversations.contacts).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from peewee import fn

from gateway.storage.db import database, write_transaction
from gateway.storage.models import Chat, ChatStatus, IdempotencyKey, Message, utcnow

log = logging.getLogger(__name__)

# Messages deleted per transaction.
BATCH = 2000
# Batches per run at most: the next run (an hour later) goes on where this one stopped.
MAX_BATCHES = 50


def delete_expired(retention_days: int | None, now: datetime | None = None) -> dict[str, int]:
    """Delete messages (and emptied ended chats, old idempotency keys) older than `retention_days`."""
    counts = {"messages": 0, "chats": 0, "idempotency_keys": 0}
    if not retention_days or retention_days <= 0:
        return counts
    cutoff = (now or utcnow()) - timedelta(days=retention_days)
    with database.connection_context():
        for _ in range(MAX_BATCHES):
            ids = [
                row.id
                for row in Message.select(Message.id)
                .where(Message.created_at < cutoff)
                .order_by(Message.id)
                .limit(BATCH)
            ]
            if not ids:
                break
            with write_transaction():
                # Newer replies may point at an old message: unlink first (SET NULL, portably).
                Message.update(reply_to=None).where(Message.reply_to.in_(ids)).execute()
                counts["messages"] += Message.delete().where(Message.id.in_(ids)).execute()
        has_messages = Message.select(Message.id).where(Message.chat == Chat.chat_id)
        with write_transaction():
            counts["chats"] = (
                Chat.delete()
                .where(
                    (Chat.chat_status != ChatStatus.ONGOING.value)
                    & (Chat.end_timestamp < cutoff)
                    & ~fn.EXISTS(has_messages)
                )
                .execute()
            )
            counts["idempotency_keys"] = (
                IdempotencyKey.delete().where(IdempotencyKey.created_at < cutoff).execute()
            )
    if any(counts.values()):
        log.info("retention: deleted what is older than %d days: %s", retention_days, counts)
    return counts
