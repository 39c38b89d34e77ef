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

from gateway.agent.history import images_to_attach, merge_turns, recent_messages, trailing_user_messages
from gateway.agent.memory import profile_section, summary_section
from gateway.config import Settings
from gateway.storage.models import Agent, Channel, Chat, Message, Role

VARIABLE = re.compile(r"\{\{\s*([A-Za-z0-9_.\-]+)\s*\}\}")

# One system paragraph from (chat, agent, settings), or None to add nothing.
SystemSection = Callable[[Chat, Agent, Settings], "str | None"]


def fill_variables(template: str, variables: dict[str, Any] | None) -> str:
    """Replace `{{name}}` with its value; a name with no value is left out (never sent as braces)."""
    values = variables or {}

    def replace(match: re.Match) -> str:
        value = values.get(match.group(1))
        return "" if value is None else str(value)

    return VARIABLE.sub(replace, template or "")


def chat_variables(chat: Chat, agent: Agent) -> dict[str, Any]:
    """The variables a chat's prompt is filled with: the agent's defaults, overridden by the chat's own.

    Inbound SMS chats have none of their own, so the agent's `default_dynamic_variables` fill them.
    """
    return {**(agent.default_dynamic_variables or {}), **(chat.dynamic_variables or {})}


def system_prompt_section(chat: Chat, agent: Agent, settings: Settings) -> str | None:
    """The agent's system prompt with the chat's dynamic variables filled in."""
    text = fill_variables(agent.system_prompt, chat_variables(chat, agent)).strip()
    return text or None


WHATSAPP_NOTE = (
    "This conversation is on WhatsApp: you may format with *bold*, _italic_, ~strikethrough~, "
    "```monospace``` and short lists."
)


def channel_section(chat: Chat, agent: Agent, settings: Settings) -> str | None:
    """On WhatsApp: that it is WhatsApp, and the person's profile name from their newest message."""
    if chat.channel != Channel.WHATSAPP.value:
        return None
    details = (
        Message.select(Message.details)
        .where(
            (Message.chat == chat.chat_id)
            & (Message.role == Role.USER.value)
            & Message.details.is_null(False)
        )
        .order_by(Message.id.desc())
        .scalar()
    )
    name = details.get("profile_name") if isinstance(details, dict) else None
    return WHATSAPP_NOTE + (f" The person's WhatsApp profile name is {name}." if name else "")


# The agent's prompt, what the channel adds, then what memory adds (gateway/memory.py): the
# person's profile (user_analysis_memory) and the chat's rolling summary (summary_memory), each headed.
SYSTEM_SECTIONS: list[SystemSection] = [
    system_prompt_section,
    channel_section,
    profile_section,
    summary_section,
]


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
