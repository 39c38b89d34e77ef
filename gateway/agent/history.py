"""The chat read as turns: which stored messages are part of the conversation, and how they merge.

The prompt (gateway.agent.prompt), memory (gateway.agent.memory) and the post-chat analysis
(gateway.agent.analysis) all read a chat the same way; this module is that one reading. It may
import storage and the Twilio media helpers, nothing above them.
"""

from __future__ import annotations

from typing import Any

from peewee import fn

from gateway.storage.models import Chat, Message, MessageKind, MessageStatus, Role
from gateway.twilio.channels import describe_details
from gateway.twilio.media import MAX_IMAGES, describe, is_image, pending_image

# The kinds of message that are the conversation itself. Keyword texts (STOP/START/HELP...),
# texts received while the person was opted out, the HELP answer and gateway notices are kept
# and shown in the transcript, but the model, the summary, the profile and the analysis never
# read them: consent traffic is between the person and the gateway, not the agent.
CONVERSATION_KINDS = (MessageKind.TEXT.value, MessageKind.OPERATOR.value)


def in_conversation():
    """Messages of the conversation the agent takes part in, as the person saw or wrote them.

    Only ordinary texts and operator messages (see CONVERSATION_KINDS), and not agent parts that
    failed before Twilio took them. Spelled out without NOT(...) because status is NULL on API
    messages and NOT(NULL) drops rows.
    """
    return Message.kind.in_(CONVERSATION_KINDS) & (
        (Message.role != Role.AGENT.value)
        | Message.status.is_null()
        | (Message.status != MessageStatus.FAILED.value)
        | Message.twilio_sid.is_null(False)
    )


def transcript_lines(rows: list[Message], clip_to: int) -> str:
    """Messages as `Person: ...` / `Assistant: ...` lines, each clipped; the parts of one reply joined."""
    lines = []
    for turn in merge_turns(list(rows)):
        who = "Assistant" if turn["role"] == "assistant" else "Person"
        text = turn["content"].strip()
        if len(text) > clip_to:
            text = text[: clip_to - 1].rstrip() + "…"
        lines.append(f"{who}: {text}")
    return "\n".join(lines)


def recent_messages(chat: Chat, limit: int, *, upto_message_id: int | None = None) -> list[Message]:
    """The newest `limit` messages of the chat, oldest first, read as a bounded index range.

    Agent parts that never left (failed before Twilio took them) are not part of the
    conversation the person saw, so they are left out. A reply sits right after the text it
    answers, even when a newer text arrived while it was being written (its row is newer):
    otherwise the model, asked about that newer text, would not see that the older ones were
    answered and would answer them again. `upto_message_id` keeps the messages up to that one,
    replies to them included.
    """
    if limit < 1:
        return []
    position = fn.COALESCE(Message.reply_to, Message.id)
    query = Message.select().where((Message.chat == chat.chat_id) & in_conversation())
    if upto_message_id is not None:
        query = query.where(position <= upto_message_id)
    # Ordering by position cannot use the (chat, id) index: on a long chat the database would
    # sort every row. So read the newest rows by id (an index range) with room to spare, and
    # order those. A row left out has id, hence position (reply_to < id), below every row read:
    # when the limit-th position read is at least the lowest id read, nothing left out belongs.
    read = list(query.order_by(Message.id.desc()).limit(2 * limit + 10))
    lowest_id_read = read[-1].id if read else 0
    read.sort(key=lambda row: (row.reply_to_id or row.id, row.id), reverse=True)
    rows = read[:limit]
    if len(read) == 2 * limit + 10 and (rows[-1].reply_to_id or rows[-1].id) < lowest_id_read:
        rows = list(query.order_by(position.desc(), Message.id.desc()).limit(limit))  # rare: replies far back
    rows.reverse()
    return rows


def images_to_attach(rows: list[Message], limit: int = MAX_IMAGES) -> dict[int, list[int]]:
    """The newest `limit` image attachments of these messages: {message id: [media index]}."""
    picked: dict[int, list[int]] = {}
    count = 0
    for row in reversed(rows):
        media = row.media or []
        for index in range(len(media) - 1, -1, -1):
            if count >= limit:
                return picked
            if is_image(media[index]):
                picked.setdefault(row.id, []).insert(0, index)
                count += 1
    return picked


def trailing_user_messages(rows: list[Message]) -> list[Message]:
    """The user messages after the last agent message."""
    tail: list[Message] = []
    for row in reversed(rows):
        if row.role != Role.USER.value:
            break
        tail.append(row)
    tail.reverse()
    return tail


def merge_turns(rows: list[Message], images: dict[int, list[int]] | None = None) -> list[dict[str, Any]]:
    """Consecutive messages of one role as one turn; the SMS parts of one reply joined back.

    `images` ({message id: [media index]}, from images_to_attach) become placeholder parts,
    which turns a turn's content into a list of parts; without it every content is a string.
    """
    turns: list[dict[str, Any]] = []
    last_reply_to: object = object()
    for row in rows:
        role = "assistant" if row.role == Role.AGENT.value else "user"
        attached = (images or {}).get(row.id, [])
        content = message_text(row, skip=attached)
        pending = [pending_image(row.media[index]) for index in attached]
        if not content and not pending:
            continue
        if turns and turns[-1]["role"] == role:
            if role == "assistant":
                # Parts of one split reply read on as one text; separate replies as paragraphs.
                same_reply = row.reply_to_id is not None and row.reply_to_id == last_reply_to
                sep = " " if same_reply else "\n\n"
            else:
                sep = "\n"
            turns[-1]["content"] = _append(turns[-1]["content"], sep, content, pending)
        else:
            turns.append({"role": role, "content": _append("", "", content, pending)})
        last_reply_to = row.reply_to_id
    return turns


def _append(content: str | list, sep: str, text: str, pending: list[dict[str, Any]]) -> str | list:
    """A turn's content with one more message's text (and image placeholders) after it."""
    if not pending and isinstance(content, str):
        return content + sep + text if content and text else content or text
    parts = list(content) if isinstance(content, list) else []
    if isinstance(content, str) and content:
        parts.append({"type": "text", "text": content})
    if text:
        if parts and parts[-1]["type"] == "text":
            parts[-1] = {"type": "text", "text": parts[-1]["text"] + sep + text}
        else:
            parts.append({"type": "text", "text": text})
    return parts + pending


def message_text(row: Message, skip: list[int] | tuple[int, ...] = ()) -> str:
    """A message's text, with its attachments (but those at the `skip` indexes) described."""
    lines = [row.content.strip()] if row.content and row.content.strip() else []
    lines.extend(describe_details(row.details))  # a WhatsApp button tapped, a location shared
    for index, item in enumerate(row.media or []):
        if index not in skip and isinstance(item, dict) and item.get("url"):
            lines.append(describe(item))
    return "\n".join(lines)
