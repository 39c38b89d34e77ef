"""POST /v1/sms-chats: start an SMS or WhatsApp conversation from one of our numbers (the outbound trigger).

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

from flask import Response, current_app, jsonify, request
from peewee import IntegrityError
from redis.exceptions import RedisError

from gateway import events
from gateway.api.agents import agent_for_field
from gateway.api.chats import emit_event, messages_of
from gateway.api.contract import json_response, operation
from gateway.api.errors import ApiError, invalid_field
from gateway.api.schemas import NOT_BLANK, SmsChatCreate, SmsChatStarted
from gateway.api.serializers import chat_detail_out, iso
from gateway.conversations.agents import outbound_agent_for
from gateway.conversations.outbound import OutboundRefused, OutboundRequest, scheduled_for, start_sms_chat
from gateway.queue import enqueue_opening, retry_policy
from gateway.storage.db import database
from gateway.storage.models import IdempotencyKey, PhoneNumber
from gateway.twilio.channels import address_for

log = logging.getLogger(__name__)

IDEMPOTENCY_KEY_MAX = 200
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    # Not blank: the key is read with surrounding spaces stripped, and an empty one is refused.
    "schema": {"type": "string", "minLength": 1, "maxLength": IDEMPOTENCY_KEY_MAX, "pattern": NOT_BLANK},
    "description": "A retried call with the same key and body gets the first answer (with header "
    "`Idempotent-Replayed: true`) and starts nothing twice; the same key with another body gets 409 "
    "`idempotency_key_reused`.",
}


def _request_hash(body: SmsChatCreate) -> str:
    """A fingerprint of the request, so a key reused for a different request is refused."""
    fields = body.model_dump(mode="json", exclude_unset=True)
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@operation(
    "POST",
    "/sms-chats",
    operation_id="createSmsChat",
    tag="chats",
    summary="Start an outbound SMS or WhatsApp conversation",
    description="Without `message` (or `content_sid`) the agent writes the opening text. The text is sent "
    "by a worker; the response does not wait for Twilio. With `channel` whatsapp the numbers become "
    "`whatsapp:` addresses; `content_sid`/`content_variables` send a Content API template (Twilio's "
    "`ContentSid`/`ContentVariables`), the only way to start a WhatsApp conversation more than 24 h "
    "after the person's last message.",
    body=SmsChatCreate,
    ok=(202, SmsChatStarted, "The new chat (chat_type sms_chat), and when its opening text goes."),
    errors={
        409: "The Idempotency-Key was used with another body (`idempotency_key_reused`), the person opted "
        "out (`opted_out`), a conversation with them is ongoing (`chat_ongoing`), or a free-form WhatsApp "
        "start is outside the 24-hour session window (`outside_session_window`: send a template).",
        422: "A field is invalid: `from_number` is not one of our numbers, `to_number` is not a valid "
        "number, `agent_id` names no agent, ...",
    },
    headers=(IDEMPOTENCY_KEY,),
)
def create_sms_chat(body: SmsChatCreate):
    """Start an outbound SMS conversation; 202 with the new chat."""
    key = request.headers.get("Idempotency-Key")
    if key is not None:
        key = key.strip()
        if not key or len(key) > IDEMPOTENCY_KEY_MAX:
            raise ApiError(
                422,
                "validation_error",
                f"Idempotency-Key: must be 1 to {IDEMPOTENCY_KEY_MAX} characters",
                field="Idempotency-Key",
            )
        stored_key = f"sms-chats:{key}"
        replay = _replay(stored_key, _request_hash(body))
        if replay is not None:
            return replay

    from_number, to_number = body.from_number, body.to_number
    if PhoneNumber.get_or_none(PhoneNumber.phone_number == from_number) is None:
        raise invalid_field(
            "from_number",
            f"{from_number} is not one of the gateway's numbers; add it with POST /v1/phone-numbers "
            "or `smsgw numbers configure`",
        )
    if from_number == to_number:
        raise invalid_field("to_number", "must differ from from_number")
    if body.content_variables is not None and body.content_sid is None:
        raise invalid_field("content_variables", "needs content_sid: they fill that template's placeholders")
    if body.content_sid is not None and (body.message is not None or body.media_urls):
        raise invalid_field(
            "content_sid", "a template is the whole opening message: leave out message and media_urls"
        )
    agent = agent_for_field("agent_id", body.agent_id) or outbound_agent_for(from_number)
    outbound = OutboundRequest(
        agent=agent,
        from_number=address_for(body.channel, from_number),
        to_number=address_for(body.channel, to_number),
        channel=body.channel,
        content_sid=body.content_sid,
        content_variables=body.content_variables,
        message=body.message,
        media_urls=tuple(body.media_urls),
        metadata=body.metadata,
        dynamic_variables=body.dynamic_variables,
    )
    try:
        with database.atomic():
            chat = start_sms_chat(outbound)
            # Outside the agent's sending hours the opening waits: say until when (else null).
            payload = SmsChatStarted.model_validate(
                {
                    **chat_detail_out(chat, messages_of(chat)).model_dump(mode="json"),
                    "scheduled_for": iso(scheduled_for(chat)),
                }
            )
            if key is not None:
                IdempotencyKey.create(
                    key=stored_key,
                    request_hash=_request_hash(body),
                    status_code=202,
                    response=payload.model_dump(mode="json"),
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
    # Recorded already: when Redis does not answer, the worker's sweep sends the opening later.
    if queue is None:
        log.warning("REDIS_URL is not set: the opening of %s waits for the worker's sweep", chat.chat_id)
    else:
        try:
            retry = retry_policy(agent.retry_attempts, agent.retry_delay)
            enqueue_opening(queue, chat_id=chat.chat_id, retry=retry, at=scheduled_for(chat))
        except RedisError as exc:
            log.warning("could not enqueue the opening of %s (%s); the sweep will", chat.chat_id, exc)
        except Exception:
            log.exception("could not enqueue the opening of %s; the sweep will", chat.chat_id)
    emit_event(events.CHAT_STARTED, chat.chat_id)
    return json_response(payload, 202)


def _replay(stored_key: str, request_hash: str) -> Response | None:
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
