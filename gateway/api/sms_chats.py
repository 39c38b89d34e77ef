"""POST /v1/sms-chats: start an SMS conversation from one of our numbers (the outbound trigger).

Everything is recorded in one transaction before anything is sent: the chat, the opening text
when the caller wrote one, and the `Idempotency-Key` with the response, so a retried request
gets the first answer back and starts nothing twice. The `send_opening` job then writes the
opening text with the agent (when no `message` was given) and sends it; the person's answers
continue the same chat through the inbound webhook.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any
from urllib.parse import urlparse

from flask import current_app, jsonify, request
from peewee import IntegrityError

from gateway.api import bp
from gateway.api.agents import agent_for_field
from gateway.api.chats import messages_of
from gateway.api.errors import ApiError, invalid_field
from gateway.api.serializers import chat_detail_json
from gateway.api.validation import Field, e164, json_body, json_object, string, string_map, validate
from gateway.conversations.agents import outbound_agent_for
from gateway.conversations.outbound import OutboundRefused, OutboundRequest, start_sms_chat
from gateway.queue import enqueue_opening, retry_policy
from gateway.storage.db import database
from gateway.storage.models import IdempotencyKey, PhoneNumber

log = logging.getLogger(__name__)

# Twilio accepts at most 10 media URLs on one message.
MAX_MEDIA = 10
FIELDS: dict[str, Field] = {
    "from_number": Field(e164(), required=True),
    "to_number": Field(e164(), required=True),
    "agent_id": Field(string(max_length=64, nullable=True)),
    "message": Field(string(min_length=1, max_length=16_000, nullable=True)),
    "media_urls": Field(lambda name, value: _media_urls(name, value)),
    "metadata": Field(json_object()),
    "dynamic_variables": Field(string_map()),
}


def _media_urls(name: str, value: Any) -> list[str]:
    """A list of at most ten public http(s) URLs Twilio can fetch."""
    if not isinstance(value, list):
        raise invalid_field(name, "must be a list of URLs")
    if len(value) > MAX_MEDIA:
        raise invalid_field(name, f"must hold at most {MAX_MEDIA} URLs (Twilio's limit per message)")
    for url in value:
        parsed = urlparse(url) if isinstance(url, str) else None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc or len(url) > 2000:
            raise invalid_field(name, f"{url!r} is not an http(s) URL")
    return list(value)


def _request_hash(body: dict) -> str:
    """A fingerprint of the request, so a key reused for a different request is refused."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@bp.post("/sms-chats")
def create_sms_chat():
    """Start an outbound SMS conversation; 202 with the new chat."""
    body = json_body()
    data = validate(body, FIELDS)
    key = request.headers.get("Idempotency-Key")
    if key is not None:
        key = key.strip()
        if not key or len(key) > 200:
            raise ApiError(422, "validation_error", "Idempotency-Key: must be 1 to 200 characters")
        stored_key = f"sms-chats:{key}"
        replay = _replay(stored_key, _request_hash(body))
        if replay is not None:
            return replay

    from_number, to_number = data["from_number"], data["to_number"]
    if PhoneNumber.get_or_none(PhoneNumber.phone_number == from_number) is None:
        raise invalid_field(
            "from_number",
            f"{from_number} is not one of the gateway's numbers; add it with POST /v1/phone-numbers "
            "or `smsgw numbers configure`",
        )
    if from_number == to_number:
        raise invalid_field("to_number", "must differ from from_number")
    agent = agent_for_field("agent_id", data.get("agent_id")) or outbound_agent_for(from_number)
    outbound = OutboundRequest(
        agent=agent,
        from_number=from_number,
        to_number=to_number,
        message=data.get("message"),
        media_urls=tuple(data.get("media_urls") or ()),
        metadata=data.get("metadata", {}),
        dynamic_variables=data.get("dynamic_variables", {}),
    )
    try:
        with database.atomic():
            chat = start_sms_chat(outbound)
            payload = chat_detail_json(chat, messages_of(chat))
            if key is not None:
                IdempotencyKey.create(
                    key=stored_key, request_hash=_request_hash(body), status_code=202, response=payload
                )
    except OutboundRefused as exc:
        raise ApiError(exc.status, exc.code, exc.message, field=exc.field) from None
    except IntegrityError:
        # The same key won a race a moment ago: answer what it answered.
        replay = _replay(stored_key, _request_hash(body)) if key is not None else None
        if replay is None:
            raise
        return replay

    queue = current_app.task_queue  # type: ignore[attr-defined]
    try:
        if queue is None:
            raise RuntimeError("REDIS_URL is not set")
        retry = retry_policy(agent.retry_attempts, agent.retry_delay)
        enqueue_opening(queue, chat_id=chat.chat_id, retry=retry)
    except Exception:
        # Recorded already: the worker's sweep sends the opening once Redis answers again.
        log.exception("could not enqueue the opening of %s; the sweep will", chat.chat_id)
    return jsonify(payload), 202


def _replay(stored_key: str, request_hash: str):
    """The first response to this Idempotency-Key, or None when the key is new."""
    row = IdempotencyKey.get_or_none(IdempotencyKey.key == stored_key)
    if row is None:
        return None
    if row.request_hash != request_hash:
        raise ApiError(
            409,
            "idempotency_key_reused",
            "This Idempotency-Key was already used for a different request; use a new key.",
        )
    response = jsonify(row.response)
    response.status_code = row.status_code
    response.headers["Idempotent-Replayed"] = "true"
    return response
