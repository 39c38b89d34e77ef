"""Keyset paging over chats, newest first: an opaque cursor of (start_timestamp, chat_id).

Pages are `ORDER BY start_timestamp DESC, chat_id DESC` and the next page starts strictly after
the last row seen, so chats created between two requests (newer than every row already served)
never shift the later pages: nothing is skipped or served twice, and a deep page costs what the
first one does (an index range scan, no OFFSET).
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

from peewee import Expression, Tuple

from gateway.api.errors import invalid_field
from gateway.api.schemas import is_id
from gateway.storage.db import is_postgres
from gateway.storage.models import Chat

CURSOR_FIELD = "pagination_key"


def encode_cursor(chat: Chat) -> str:
    """The opaque key of the page after `chat`: URL-safe base64 of `<timestamp>|<chat_id>`."""
    stamp = chat.start_timestamp
    if isinstance(stamp, str):
        stamp = datetime.fromisoformat(stamp)
    raw = f"{stamp.isoformat(timespec='microseconds')}|{chat.chat_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(key: str) -> tuple[datetime, str]:
    """The (start_timestamp, chat_id) a key holds; 422 naming `pagination_key` when it is not one."""
    try:
        raw = base64.urlsafe_b64decode(key + "=" * (-len(key) % 4)).decode()
        stamp, chat_id = raw.split("|", 1)
        when = datetime.fromisoformat(stamp)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid_field(CURSOR_FIELD, "is not a key this API handed out") from None
    if when.tzinfo is not None or not is_id(chat_id):
        raise invalid_field(CURSOR_FIELD, "is not a key this API handed out")
    return when, chat_id


def before_cursor(stamp: datetime, chat_id: str) -> Expression:
    """`(start_timestamp, chat_id) < (stamp, chat_id)`, in the form each backend indexes best.

    PostgreSQL turns the row comparison into one index range (`Index Cond: ROW(...) < ROW(...)`).
    SQLite gets the same rows through a range on the leading column it can seek on
    (`start_timestamp <= stamp`), the tie on equal timestamps settled by `chat_id`.
    """
    if is_postgres():
        return Tuple(Chat.start_timestamp, Chat.chat_id) < Tuple(stamp, chat_id)
    return (Chat.start_timestamp <= stamp) & ((Chat.start_timestamp < stamp) | (Chat.chat_id < chat_id))


def page_of_chats(query, *, limit: int, cursor: str | None) -> tuple[list[Chat], bool, str | None]:
    """One page of `query` (a filtered Chat select): the rows, whether more follow, the next key."""
    if cursor:
        query = query.where(before_cursor(*decode_cursor(cursor)))
    rows = list(query.order_by(Chat.start_timestamp.desc(), Chat.chat_id.desc()).limit(limit + 1))
    has_more = len(rows) > limit
    rows = rows[:limit]
    return rows, has_more, (encode_cursor(rows[-1]) if has_more and rows else None)
