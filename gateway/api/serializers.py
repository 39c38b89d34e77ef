"""Rows to the JSON the API answers with; timestamps as ISO 8601 UTC with a `Z`."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from gateway.storage.models import Agent, Chat, Message, MessageStatus, PhoneNumber

# The statuses the API shows. The worker marks a part it is handing to Twilio "sending" (an
# internal lease, gateway/replies.py): to a client that part is still "queued".
PUBLIC_STATUSES = frozenset(s.value for s in MessageStatus)

AGENT_FIELDS = (
    "agent_id",
    "name",
    "model",
    "system_prompt",
    "temperature",
    "num_last_messages",
    "full_session_memory",
    "summary_memory",
    "user_analysis_memory",
    "retry_attempts",
    "retry_delay",
    "max_concurrent_invocations",
    "end_chat_after_silence_ms",
    "auto_close_message",
    "help_message",
    "fallback_message",
    "fallback_enabled",
    "accepts_images",
    "analysis_fields",
    "is_default",
)


def iso(value: datetime | None) -> str | None:
    """A naive-UTC datetime as `2024-05-01T12:00:00.123Z`."""
    if value is None:
        return None
    if isinstance(value, str):  # a backend that hands back text
        value = datetime.fromisoformat(value)
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(timespec="milliseconds") + "Z"


def agent_json(agent: Agent) -> dict[str, Any]:
    """An agent."""
    data = {name: getattr(agent, name) for name in AGENT_FIELDS}
    data["created_at"] = iso(agent.created_at)
    data["updated_at"] = iso(agent.updated_at)
    return data


def phone_number_json(number: PhoneNumber) -> dict[str, Any]:
    """One of our numbers and its agents."""
    return {
        "phone_number": number.phone_number,
        "inbound_agent_id": number.inbound_agent_id,
        "outbound_agent_id": number.outbound_agent_id,
        "created_at": iso(number.created_at),
        "updated_at": iso(number.updated_at),
    }


def public_status(status: str | None) -> str | None:
    """A stored message status as the API shows it (internal marks read as "queued")."""
    if status is None or status in PUBLIC_STATUSES:
        return status
    return MessageStatus.QUEUED.value


def message_json(message: Message) -> dict[str, Any]:
    """A message in a chat; `status` and `error_code` are null outside SMS."""
    return {
        "message_id": message.message_id,
        "role": message.role,
        "content": message.content,
        "media": message.media or [],
        "created_at": iso(message.created_at),
        "status": public_status(message.status),
        "error_code": message.error_code,
    }


def chat_json(chat: Chat) -> dict[str, Any]:
    """A chat as listed: everything but its messages and usage."""
    return {
        "chat_id": chat.chat_id,
        "agent_id": chat.agent_id,
        "chat_type": chat.chat_type,
        "chat_status": chat.chat_status,
        "user_id": chat.user_id,
        "from_number": chat.from_number,
        "to_number": chat.to_number,
        "metadata": chat.metadata if chat.metadata is not None else {},
        "dynamic_variables": chat.dynamic_variables if chat.dynamic_variables is not None else {},
        "start_timestamp": iso(chat.start_timestamp),
        "end_timestamp": iso(chat.end_timestamp),
        "end_reason": chat.end_reason,
        "chat_analysis": chat.chat_analysis,
    }


def chat_detail_json(chat: Chat, messages: Iterable[Message]) -> dict[str, Any]:
    """A chat with its messages, oldest first, and the model tokens it used."""
    messages = list(messages)
    data = chat_json(chat)
    data["messages"] = [message_json(m) for m in messages]
    data["usage"] = {
        "prompt_tokens": sum(m.prompt_tokens or 0 for m in messages),
        "completion_tokens": sum(m.completion_tokens or 0 for m in messages),
    }
    return data
