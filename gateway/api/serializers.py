"""Rows to the API's response models (gateway/api/schemas.py); timestamps as ISO 8601 UTC with a `Z`.

The models name the fields: a column whose name matches a response field is copied as is, so
only the fields that are computed or renamed are spelled out here.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from gateway.api import schemas
from gateway.storage.models import PUBLIC_MESSAGE_STATUSES, Agent, Chat, Message, MessageStatus, PhoneNumber

# The statuses the API shows: a part a worker is handing to Twilio (`sending`, an internal
# lease) is still "queued" to a client.
PUBLIC_STATUSES = frozenset(PUBLIC_MESSAGE_STATUSES)


def iso(value: datetime | str | None) -> str | None:
    """A naive-UTC datetime as `2024-05-01T12:00:00.123Z`."""
    if value is None:
        return None
    if isinstance(value, str):  # a backend that hands back text
        value = datetime.fromisoformat(value)
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(timespec="milliseconds") + "Z"


def columns(row: Any, model: type[BaseModel], **computed: Any) -> dict[str, Any]:
    """The fields of `model` read from `row` (datetimes as ISO text), with `computed` ones on top."""
    data = {}
    for name in model.model_fields:
        if name in computed:
            continue
        value = getattr(row, name)
        data[name] = iso(value) if isinstance(value, datetime) else value
    data.update(computed)
    return data


def agent_out(agent: Agent) -> schemas.Agent:
    """An agent."""
    return schemas.Agent.model_validate(
        columns(
            agent,
            schemas.Agent,
            analysis_fields=agent.analysis_fields or [],
            webhook_secret_set=bool(agent.webhook_secret),
            default_dynamic_variables=agent.default_dynamic_variables or {},
            tools=agent.tools or [],
        )
    )


def phone_number_out(number: PhoneNumber) -> schemas.PhoneNumber:
    """One of our numbers and its agents."""
    return schemas.PhoneNumber.model_validate(
        columns(
            number,
            schemas.PhoneNumber,
            inbound_agent_id=number.inbound_agent_id,
            outbound_agent_id=number.outbound_agent_id,
        )
    )


def public_status(status: str | None) -> str | None:
    """A stored message status as the API shows it (internal marks read as "queued")."""
    if status is None or status in PUBLIC_STATUSES:
        return status
    return MessageStatus.QUEUED.value


def message_out(message: Message) -> schemas.Message:
    """A message in a chat; `status` and `error_code` are null outside SMS."""
    return schemas.Message.model_validate(
        columns(
            message,
            schemas.Message,
            media=message.media or [],
            status=public_status(message.status),
            tool_calls=message.tool_calls or None,
        )
    )


def _chat_fields(chat: Chat, model: type[BaseModel], **computed: Any) -> dict[str, Any]:
    """A chat's own fields (JSON columns never null)."""
    return columns(
        chat,
        model,
        agent_id=chat.agent_id,
        metadata=chat.metadata if chat.metadata is not None else {},
        dynamic_variables=chat.dynamic_variables if chat.dynamic_variables is not None else {},
        **computed,
    )


def chat_out(chat: Chat) -> schemas.Chat:
    """A chat as listed: everything but its messages and usage."""
    return schemas.Chat.model_validate(_chat_fields(chat, schemas.Chat))


def chat_detail_out(chat: Chat, messages: Iterable[Message]) -> schemas.ChatDetail:
    """A chat with its messages, oldest first, and the model tokens it used."""
    messages = list(messages)
    usage = schemas.Usage(
        prompt_tokens=sum(m.prompt_tokens or 0 for m in messages),
        completion_tokens=sum(m.completion_tokens or 0 for m in messages),
    )
    return schemas.ChatDetail.model_validate(
        _chat_fields(chat, schemas.ChatDetail, messages=[message_out(m) for m in messages], usage=usage)
    )
