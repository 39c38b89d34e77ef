"""Chats over the API: start one, read it with its messages, list, tag with metadata, end."""

from __future__ import annotations

from flask import current_app

from gateway import events
from gateway.agent.analysis import schedule_analysis
from gateway.api.agents import agent_for_field
from gateway.api.contract import PathParam, operation
from gateway.api.errors import conflict, not_found
from gateway.api.paging import page_of_chats
from gateway.api.schemas import ID_PATTERN, ChatCreate, ChatDetail, ChatList, ChatListQuery, ChatUpdate, is_id
from gateway.api.serializers import chat_detail_out, chat_out
from gateway.conversations import lifecycle
from gateway.storage.db import database
from gateway.storage.models import Channel, Chat, ChatStatus, ChatType, Message, utcnow
from gateway.twilio.channels import address_for


def get_chat_or_404(chat_id: str) -> Chat:
    """The chat named in the URL, or 404."""
    chat = Chat.get_or_none(Chat.chat_id == chat_id) if is_id(chat_id) else None
    if chat is None:
        raise not_found("chat", chat_id)
    return chat


CHAT_ID = {"chat_id": PathParam({"type": "string", "pattern": ID_PATTERN}, "The chat's id.", get_chat_or_404)}


def messages_of(chat: Chat) -> list[Message]:
    """A chat's messages, oldest first."""
    return list(Message.select().where(Message.chat == chat.chat_id).order_by(Message.id))


def detail(chat: Chat) -> ChatDetail:
    """One chat with its messages."""
    return chat_detail_out(chat, messages_of(chat))


@operation(
    "POST",
    "/chats",
    operation_id="createChat",
    tag="chats",
    summary="Start an API chat",
    body=ChatCreate,
    ok=(201, ChatDetail, "The new chat (chat_type api_chat)."),
)
def create_chat(body: ChatCreate) -> ChatDetail:
    """Start an API chat with an agent; 201 with it."""
    agent = agent_for_field("agent_id", body.agent_id)
    now = utcnow()
    chat = Chat.create(
        agent=agent.agent_id,
        chat_type=ChatType.API.value,
        chat_status=ChatStatus.ONGOING.value,
        user_id=body.user_id,
        metadata=body.metadata,
        dynamic_variables=body.dynamic_variables,
        start_timestamp=now,
        last_activity_at=now,
    )
    emit_event(events.CHAT_STARTED, chat.chat_id)
    return chat_detail_out(chat, [])


@operation(
    "GET",
    "/chats",
    operation_id="listChats",
    tag="chats",
    summary="List chats, newest first, one page at a time",
    description="Keyset paging: pass the `pagination_key` of one page to get the next. Chats created "
    "meanwhile never shift later pages (nothing is skipped or repeated). Filters combine with AND; an "
    "unknown query parameter is refused (422).",
    query=ChatListQuery,
    ok=(200, ChatList, "One page."),
)
def list_chats(query: ChatListQuery) -> ChatList:
    """Chats, newest first, filtered, one keyset page at a time."""
    rows = Chat.select()
    if query.agent_id is not None:
        rows = rows.where(Chat.agent == query.agent_id)
    if query.chat_status is not None:
        rows = rows.where(Chat.chat_status == query.chat_status)
    if query.chat_type is not None:
        rows = rows.where(Chat.chat_type == query.chat_type)
    if query.channel is not None:
        rows = rows.where(Chat.channel == query.channel)
    if query.user_id is not None:
        rows = rows.where(Chat.user_id == query.user_id)
    if query.phone_number is not None:  # SMS chats: to_number is the person, from_number ours
        rows = rows.where(
            Chat.to_number.in_([query.phone_number, address_for(Channel.WHATSAPP, query.phone_number)])
        )
    page, has_more, key = page_of_chats(rows, limit=query.limit, cursor=query.pagination_key)
    return ChatList(items=[chat_out(c) for c in page], has_more=has_more, pagination_key=key)


@operation(
    "GET",
    "/chats/<chat_id>",
    operation_id="getChat",
    tag="chats",
    summary="Get a chat with its messages",
    ok=(200, ChatDetail, "The chat."),
    path_params=CHAT_ID,
)
def get_chat(chat_id: str) -> ChatDetail:
    """One chat with its messages, oldest first."""
    return detail(get_chat_or_404(chat_id))


@operation(
    "PATCH",
    "/chats/<chat_id>",
    operation_id="updateChat",
    tag="chats",
    summary="Replace a chat's metadata",
    body=ChatUpdate,
    ok=(200, ChatDetail, "The chat."),
    path_params=CHAT_ID,
)
def update_chat(chat_id: str, body: ChatUpdate) -> ChatDetail:
    """Replace a chat's metadata (stored and returned as sent)."""
    chat = get_chat_or_404(chat_id)
    if "metadata" in body.model_fields_set:
        Chat.update(metadata=body.metadata).where(Chat.chat_id == chat.chat_id).execute()
        chat = Chat.get_by_id(chat.chat_id)  # DoesNotExist (erased meanwhile) answers 404
    return detail(chat)


@operation(
    "POST",
    "/chats/<chat_id>/end",
    operation_id="endChat",
    tag="chats",
    summary="End a chat",
    description="The ended chat has `chat_status` ended and `end_reason` api. The body is ignored.",
    ok=(200, ChatDetail, "The ended chat."),
    errors={409: "The chat is not ongoing (`chat_not_ongoing`)."},
    path_params=CHAT_ID,
)
def end_chat(chat_id: str) -> ChatDetail:
    """End an ongoing chat (`end_reason` "api"); 409 when it is not ongoing."""
    chat = get_chat_or_404(chat_id)
    with database.atomic():
        ended = lifecycle.end_chat(chat.chat_id, lifecycle.END_BY_API)
    chat = Chat.get_by_id(chat.chat_id)
    if not ended:
        raise conflict("chat_not_ongoing", f"The chat is {chat.chat_status}, not ongoing.")
    schedule_analysis(current_app.task_queue, chat)  # type: ignore[attr-defined]  # never raises
    emit_event(events.CHAT_ENDED, chat.chat_id)
    return detail(chat)


def emit_event(event: str, chat_id: str) -> None:
    """Queue a chat event for the chat's webhook (never raises; see gateway/events.py)."""
    events.emit(current_app.task_queue, current_app.config["SETTINGS"], event, chat_id)  # type: ignore[attr-defined]
