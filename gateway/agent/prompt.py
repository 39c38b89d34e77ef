"""Where the prompt is built: the agent's system prompt, then the chat's recent turns.

The prompt is a list of sections. `SYSTEM_SECTIONS` each add a paragraph to the system message
(the agent's own prompt now; a rolling summary or a user profile can be appended later), and
`history_turns` adds the recent conversation. Every section reads a bounded amount of data, so
the cost of one reply never grows with the length of the chat.

Attachments read as `[attachment: type]`. For an agent that `accepts_images`, the SMS reply asks
for `images=True`: the newest MAX_IMAGES images of the texts being answered become placeholder
parts that gateway/media.py fetches (outside any database connection) into image input.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from gateway.agent.memory import profile_section, summary_section
from gateway.config import Settings
from gateway.storage.models import Agent, Chat, Message, MessageStatus, Role
from gateway.twilio.media import MAX_IMAGES, describe, is_image, pending_image

VARIABLE = re.compile(r"\{\{\s*([A-Za-z0-9_.\-]+)\s*\}\}")

# One system paragraph from (chat, agent, settings), or None to add nothing.
SystemSection = Callable[[Chat, Agent, Settings], "str | None"]


def fill_variables(template: str, variables: dict[str, Any] | None) -> str:
    """Replace `{{name}}` with the chat's dynamic variable; unknown names stay as written."""
    values = variables or {}

    def replace(match: re.Match) -> str:
        name = match.group(1)
        return str(values[name]) if name in values and values[name] is not None else match.group(0)

    return VARIABLE.sub(replace, template or "")


def system_prompt_section(chat: Chat, agent: Agent, settings: Settings) -> str | None:
    """The agent's system prompt with the chat's dynamic variables filled in."""
    text = fill_variables(agent.system_prompt, chat.dynamic_variables).strip()
    return text or None


# The agent's prompt, then what memory adds (gateway/memory.py): the person's profile
# (user_analysis_memory) and the chat's rolling summary (summary_memory), each headed.
SYSTEM_SECTIONS: list[SystemSection] = [system_prompt_section, profile_section, summary_section]


def build_messages(
    chat: Chat,
    agent: Agent,
    settings: Settings,
    *,
    upto_message_id: int | None = None,
    images: bool = False,
) -> list[dict[str, Any]]:
    """The OpenAI chat messages for the agent's next turn in `chat`.

    `upto_message_id` leaves out messages newer than the one being answered (they get their
    own reply). `images` (and an agent that `accepts_images`): the images of the texts being
    answered are placeholder parts for gateway.media.resolve_images, which must run before the
    prompt goes to the model.
    """
    messages: list[dict[str, Any]] = []
    system = [text for section in SYSTEM_SECTIONS if (text := section(chat, agent, settings))]
    if system:
        messages.append({"role": "system", "content": "\n\n".join(system)})
    messages.extend(
        history_turns(
            chat, agent, upto_message_id=upto_message_id, images=images and bool(agent.accepts_images)
        )
    )
    return messages


def recent_messages(chat: Chat, limit: int, *, upto_message_id: int | None = None) -> list[Message]:
    """The newest `limit` messages of the chat, oldest first, in ONE bounded query.

    Agent parts that never left (failed before Twilio took them) are not part of the
    conversation the person saw, so they are left out.
    """
    if limit < 1:
        return []
    # Spelled out without NOT(...): status is NULL on API messages, and NOT(NULL) drops rows.
    in_conversation = (
        (Message.role != Role.AGENT.value)
        | Message.status.is_null()
        | (Message.status != MessageStatus.FAILED.value)
        | Message.twilio_sid.is_null(False)
    )
    query = Message.select().where((Message.chat == chat.chat_id) & in_conversation)
    if upto_message_id is not None:
        query = query.where(Message.id <= upto_message_id)
    rows = list(query.order_by(Message.id.desc()).limit(limit))
    rows.reverse()
    return rows


# The texts being answered (the user's messages after the agent's last turn) always reach the
# model, however small the window: up to this many of them.
MAX_NEW_MESSAGES = 20


def history_turns(
    chat: Chat, agent: Agent, *, upto_message_id: int | None = None, images: bool = False
) -> list[dict[str, Any]]:
    """The recent conversation as alternating user/assistant turns.

    The window holds the last `num_last_messages` messages; the user's newest messages (those
    after the agent's last turn, the ones being answered) are always included, even with a
    window of 0. With `full_session_memory` off, only those newest messages are kept. With
    `images`, the newest messages' images are placeholders to fetch; older turns describe theirs.
    """
    window_size = max(agent.num_last_messages, 0)
    rows = recent_messages(chat, max(window_size, MAX_NEW_MESSAGES), upto_message_id=upto_message_id)
    newest = trailing_user_messages(rows)
    attached = images_to_attach(newest) if images else {}
    if not agent.full_session_memory:
        return merge_turns(newest, attached)
    window = rows[len(rows) - window_size :] if window_size else []
    newest_ids = {row.id for row in newest}
    return merge_turns([row for row in window if row.id not in newest_ids] + newest, attached)


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
    for index, item in enumerate(row.media or []):
        if index not in skip and isinstance(item, dict) and item.get("url"):
            lines.append(describe(item))
    return "\n".join(lines)
