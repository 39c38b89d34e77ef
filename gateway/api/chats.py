"""Chats over the API: start one, read it with its messages, list, tag with metadata, end."""

from __future__ import annotations

from flask import current_app, jsonify, request

from gateway.agent.analysis import schedule_analysis
from gateway.api import bp
from gateway.api.agents import agent_for_field
from gateway.api.errors import conflict, not_found
from gateway.api.paging import page_of_chats
from gateway.api.serializers import chat_detail_json, chat_json
from gateway.api.validation import (
    ID_PATTERN,
    Field,
    json_body,
    json_object,
    query_choice,
    query_limit,
    query_text,
    string,
    string_map,
    validate,
)
from gateway.storage.db import database
from gateway.storage.models import Chat, ChatStatus, ChatType, Message, utcnow

CREATE_FIELDS: dict[str, Field] = {
    "agent_id": Field(string(max_length=64), required=True),
    "user_id": Field(string(min_length=1, max_length=200, nullable=True)),
    "metadata": Field(json_object()),
    "dynamic_variables": Field(string_map()),
}
UPDATE_FIELDS: dict[str, Field] = {"metadata": Field(json_object())}
STATUSES = {s.value for s in ChatStatus}
TYPES = {t.value for t in ChatType}
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000


def get_chat_or_404(chat_id: str) -> Chat:
    """The chat named in the URL, or 404."""
    chat = Chat.get_or_none(Chat.chat_id == chat_id) if ID_PATTERN.match(chat_id) else None
    if chat is None:
        raise not_found("chat", chat_id)
    return chat


def messages_of(chat: Chat) -> list[Message]:
    """A chat's messages, oldest first."""
    return list(Message.select().where(Message.chat == chat.chat_id).order_by(Message.id))


def detail(chat: Chat):
    """The JSON response for one chat with its messages."""
    return jsonify(chat_detail_json(chat, messages_of(chat)))


@bp.post("/chats")
def create_chat():
    """Start an API chat with an agent; 201 with it."""
    data = validate(json_body(), CREATE_FIELDS)
    agent = agent_for_field("agent_id", data["agent_id"])
    now = utcnow()
    chat = Chat.create(
        agent=agent.agent_id,
        chat_type=ChatType.API.value,
        chat_status=ChatStatus.ONGOING.value,
        user_id=data.get("user_id"),
        metadata=data.get("metadata", {}),
        dynamic_variables=data.get("dynamic_variables", {}),
        start_timestamp=now,
        last_activity_at=now,
    )
    return jsonify(chat_detail_json(chat, [])), 201


@bp.get("/chats")
def list_chats():
    """Chats, newest first, filtered, one keyset page at a time."""
    limit = query_limit(DEFAULT_LIMIT, MAX_LIMIT)
    query = Chat.select()
    agent_id = query_text("agent_id", max_length=64)
    if agent_id is not None:
        query = query.where(Chat.agent == agent_id)
    status = query_choice("chat_status", STATUSES)
    if status is not None:
        query = query.where(Chat.chat_status == status)
    chat_type = query_choice("chat_type", TYPES)
    if chat_type is not None:
        query = query.where(Chat.chat_type == chat_type)
    user_id = query_text("user_id", max_length=200)
    if user_id is not None:
        query = query.where(Chat.user_id == user_id)
    rows, has_more, key = page_of_chats(query, limit=limit, cursor=request.args.get("pagination_key") or None)
    return jsonify(items=[chat_json(c) for c in rows], has_more=has_more, pagination_key=key)


@bp.get("/chats/<chat_id>")
def get_chat(chat_id: str):
    """One chat with its messages, oldest first."""
    return detail(get_chat_or_404(chat_id))


@bp.patch("/chats/<chat_id>")
def update_chat(chat_id: str):
    """Replace a chat's metadata (stored and returned as sent)."""
    chat = get_chat_or_404(chat_id)
    data = validate(json_body(allow_empty=True), UPDATE_FIELDS, partial=True)
    if "metadata" in data:
        Chat.update(metadata=data["metadata"]).where(Chat.chat_id == chat.chat_id).execute()
        chat = Chat.get_by_id(chat.chat_id)
    return detail(chat)


@bp.post("/chats/<chat_id>/end")
def end_chat(chat_id: str):
    """End an ongoing chat (`end_reason` "api"); 409 when it is not ongoing."""
    chat = get_chat_or_404(chat_id)
    now = utcnow()
    with database.atomic():
        ended = (
            Chat.update(
                chat_status=ChatStatus.ENDED.value,
                end_timestamp=now,
                end_reason="api",
                ongoing_pair=None,
            )
            .where((Chat.chat_id == chat.chat_id) & (Chat.chat_status == ChatStatus.ONGOING.value))
            .execute()
        )
    chat = Chat.get_by_id(chat.chat_id)
    if not ended:
        raise conflict("chat_not_ongoing", f"The chat is {chat.chat_status}, not ongoing.")
    schedule_analysis(current_app.task_queue, chat)  # type: ignore[attr-defined]  # never raises
    return detail(chat)
