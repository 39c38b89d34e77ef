"""GET /v1/openapi.json: the OpenAPI 3.1 document of the gateway's public HTTP surface.

Written by hand next to the code it describes; tests/test_openapi.py runs schemathesis against
the app to hold the two together.
"""

from __future__ import annotations

from typing import Any

from flask import jsonify

from gateway.api import bp
from gateway.api.chats import DEFAULT_LIMIT, MAX_LIMIT
from gateway.api.completions import SLOT_WAIT_SECONDS
from gateway.api.validation import ID_PATTERN, MAX_INT
from gateway.conversations.agents import DEFAULT_AGENT_ID

JSON = "application/json"
ID = {"type": "string", "pattern": ID_PATTERN.pattern}
TIMESTAMP = {
    "type": "string",
    "format": "date-time",
    "description": "ISO 8601, UTC, e.g. 2025-01-31T12:00:00.000Z",
}
E164 = {
    "type": "string",
    "description": "A phone number in E.164 form, e.g. +14155550123 (other spellings of a valid "
    "number are accepted and stored in E.164 form).",
    "examples": ["+14155550123"],
}


def ref(name: str) -> dict[str, str]:
    """A reference to a component schema."""
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` or null (JSON Schema 2020-12 style)."""
    return {"anyOf": [schema, {"type": "null"}]}


def json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON response."""
    return {"description": description, "content": {JSON: {"schema": schema}}}


def error(description: str) -> dict[str, Any]:
    """An error response of the API's error shape."""
    return json_response(description, ref("Error"))


def json_body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    """A JSON request body."""
    return {"required": required, "content": {JSON: {"schema": schema}}}


def path_param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    """A path parameter."""
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


def query_param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    """An optional query parameter."""
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


ERRORS = {
    "400": error("The body is not a JSON object (malformed JSON, NaN, a number out of range)."),
    "401": error(
        "No key, a wrong key, or GATEWAY_API_KEY unset on the server (code `api_key_not_configured`)."
    ),
    "413": error("The body is larger than 1 MiB."),
    "422": error("A field is missing, unknown, of the wrong type or out of range; `error.field` names it."),
}
NOT_FOUND = {"404": error("No such resource.")}


def responses(ok: dict[str, Any], *extra: dict[str, Any], body: bool = True) -> dict[str, Any]:
    """The success responses plus the errors every /v1 route may give."""
    merged = dict(ok)
    merged.update({k: v for k, v in ERRORS.items() if body or k not in {"400", "413"}})
    for more in extra:
        merged.update(more)
    return merged


# --- schemas -------------------------------------------------------------------------------------

AGENT_SETTINGS: dict[str, Any] = {
    "name": {"type": "string", "maxLength": 200, "default": ""},
    "model": {
        **nullable({"type": "string", "minLength": 1, "maxLength": 200}),
        "description": "The model name; null: OPENAI_MODEL.",
    },
    "system_prompt": {
        "type": "string",
        "maxLength": 100_000,
        "description": "May hold {{variables}}, filled from the chat's dynamic_variables.",
    },
    "temperature": nullable({"type": "number", "minimum": 0, "maximum": 2}),
    "num_last_messages": {
        "type": "integer",
        "minimum": 0,
        "maximum": 10_000,
        "default": 20,
        "description": "How many recent messages the prompt carries.",
    },
    "full_session_memory": {
        "type": "boolean",
        "default": True,
        "description": "false: the prompt holds only the newest user turn(s).",
    },
    "summary_memory": {"type": "boolean", "default": False},
    "user_analysis_memory": {"type": "boolean", "default": False},
    "retry_attempts": {"type": "integer", "minimum": 0, "maximum": 10, "default": 3},
    "retry_delay": {
        "type": "number",
        "minimum": 0,
        "maximum": 3600,
        "default": 1.0,
        "description": "Seconds before the first retry, doubled per attempt, with jitter.",
    },
    "max_concurrent_invocations": {
        "type": "integer",
        "minimum": 1,
        "maximum": 1000,
        "default": 1,
        "description": "Completions that may run at once in one chat; a further one waits up to "
        f"{SLOT_WAIT_SECONDS:g} s, then gets 409.",
    },
    "end_chat_after_silence_ms": {
        "type": "integer",
        "minimum": 1000,
        "maximum": MAX_INT,
        "default": 3_600_000,
    },
    "auto_close_message": nullable({"type": "string", "maxLength": 10_000}),
    "help_message": nullable({"type": "string", "maxLength": 10_000}),
    "fallback_message": {
        **nullable({"type": "string", "maxLength": 10_000}),
        "description": "Sent by SMS when the model cannot answer; null: a built-in text.",
    },
    "fallback_enabled": {
        "type": "boolean",
        "default": True,
        "description": "false: when the model cannot answer an SMS, nothing is sent (the message is "
        "still marked failed with the reason).",
    },
    "accepts_images": {
        "type": "boolean",
        "default": False,
        "description": "true: the images of the MMS being answered (JPEG, PNG, GIF, WebP; up to 5 MB "
        "each, the newest 4) are fetched from Twilio and given to the model as image input. Other "
        "attachments, and images otherwise, reach the model as `[attachment: <content type>]`.",
    },
    "analysis_fields": {
        "type": "array",
        "default": [],
        "maxItems": 50,
        "description": "Custom post-chat analysis fields, judged by the model when a chat ends and "
        "returned in `chat_analysis.custom_analysis_data`. Names are unique; `choices` only (and always) "
        "with type `enum`.",
        "items": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]{0,63}$"},
                "type": {
                    "type": "string",
                    "enum": ["string", "number", "boolean", "enum"],
                    "default": "string",
                },
                "description": {"type": "string", "maxLength": 2000},
                "choices": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
            },
        },
    },
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "examples": ["validation_error", "not_found"]},
                    "message": {"type": "string"},
                    "field": {"type": "string", "description": "The request field at fault (422 only)."},
                },
            }
        },
    },
    "Agent": {
        "type": "object",
        "required": ["agent_id", *AGENT_SETTINGS, "is_default", "created_at", "updated_at"],
        "properties": {
            "agent_id": ID,
            **AGENT_SETTINGS,
            "is_default": {
                "type": "boolean",
                "description": f"True for `{DEFAULT_AGENT_ID}`, which answers numbers without an agent.",
            },
            "created_at": TIMESTAMP,
            "updated_at": TIMESTAMP,
        },
    },
    "AgentCreate": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "agent_id": {**ID, "description": "Optional; generated when absent."},
            **AGENT_SETTINGS,
        },
    },
    "AgentUpdate": {"type": "object", "additionalProperties": False, "properties": AGENT_SETTINGS},
    "AgentList": {
        "type": "object",
        "required": ["items"],
        "properties": {"items": {"type": "array", "items": ref("Agent")}},
    },
    "PhoneNumber": {
        "type": "object",
        "required": ["phone_number", "inbound_agent_id", "outbound_agent_id", "created_at", "updated_at"],
        "properties": {
            "phone_number": E164,
            "inbound_agent_id": {
                **nullable(ID),
                "description": "Answers texts to this number; null: the default agent.",
            },
            "outbound_agent_id": {
                **nullable(ID),
                "description": "Starts conversations from this number; null: the inbound agent, then "
                "the default.",
            },
            "created_at": TIMESTAMP,
            "updated_at": TIMESTAMP,
        },
    },
    "PhoneNumberCreate": {
        "type": "object",
        "additionalProperties": False,
        "required": ["phone_number"],
        "properties": {
            "phone_number": E164,
            "inbound_agent_id": nullable({"type": "string", "maxLength": 64}),
            "outbound_agent_id": nullable({"type": "string", "maxLength": 64}),
        },
    },
    "PhoneNumberUpdate": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "inbound_agent_id": nullable({"type": "string", "maxLength": 64}),
            "outbound_agent_id": nullable({"type": "string", "maxLength": 64}),
        },
    },
    "PhoneNumberList": {
        "type": "object",
        "required": ["items"],
        "properties": {"items": {"type": "array", "items": ref("PhoneNumber")}},
    },
    "Media": {
        "type": "object",
        "required": ["url"],
        "properties": {"url": {"type": "string"}, "content_type": nullable({"type": "string"})},
    },
    "Message": {
        "type": "object",
        "required": ["message_id", "role", "content", "media", "created_at", "status", "error_code"],
        "properties": {
            "message_id": {"type": "string", "examples": ["msg_42"]},
            "role": {"type": "string", "enum": ["user", "agent"]},
            "content": {"type": "string"},
            "media": {"type": "array", "items": ref("Media")},
            "created_at": TIMESTAMP,
            "status": {
                **nullable(
                    {
                        "type": "string",
                        "enum": ["received", "queued", "sent", "delivered", "undelivered", "failed"],
                    }
                ),
                "description": "SMS delivery state; null in API chats.",
            },
            "error_code": {**nullable({"type": "string"}), "description": "Twilio's error code, SMS only."},
        },
    },
    "Usage": {
        "type": "object",
        "required": ["prompt_tokens", "completion_tokens"],
        "description": "Model tokens the chat used so far.",
        "properties": {
            "prompt_tokens": {"type": "integer", "minimum": 0},
            "completion_tokens": {"type": "integer", "minimum": 0},
        },
    },
    "Chat": {
        "type": "object",
        "required": [
            "chat_id",
            "agent_id",
            "chat_type",
            "chat_status",
            "user_id",
            "from_number",
            "to_number",
            "metadata",
            "dynamic_variables",
            "start_timestamp",
            "end_timestamp",
            "end_reason",
            "chat_analysis",
        ],
        "properties": {
            "chat_id": ID,
            "agent_id": ID,
            "chat_type": {"type": "string", "enum": ["api_chat", "sms_chat"]},
            "chat_status": {"type": "string", "enum": ["ongoing", "ended", "error"]},
            "user_id": nullable({"type": "string"}),
            "from_number": {**nullable({"type": "string"}), "description": "SMS chats: our number."},
            "to_number": {**nullable({"type": "string"}), "description": "SMS chats: the person's number."},
            "metadata": {
                "type": "object",
                "description": "Yours: stored and returned as the same JSON value (object key order "
                "is not kept: PostgreSQL stores it as jsonb).",
            },
            "dynamic_variables": {"type": "object", "additionalProperties": {"type": "string"}},
            "start_timestamp": TIMESTAMP,
            "end_timestamp": nullable(TIMESTAMP),
            "end_reason": {
                **nullable({"type": "string"}),
                "description": "Why it ended: `api`, `silence`, `opt_out`, ...",
            },
            "chat_analysis": {
                **nullable({"type": "object"}),
                "description": "Post-chat analysis; null until it has been made.",
            },
        },
    },
    "ChatDetail": {
        "description": "A chat with its messages (oldest first) and the tokens it used.",
        "allOf": [
            ref("Chat"),
            {
                "type": "object",
                "required": ["messages", "usage"],
                "properties": {
                    "messages": {"type": "array", "items": ref("Message")},
                    "usage": ref("Usage"),
                },
            },
        ],
    },
    "ChatCreate": {
        "type": "object",
        "additionalProperties": False,
        "required": ["agent_id"],
        "properties": {
            "agent_id": {"type": "string", "maxLength": 64, "examples": [DEFAULT_AGENT_ID]},
            "user_id": nullable({"type": "string", "minLength": 1, "maxLength": 200}),
            "metadata": {"type": "object"},
            "dynamic_variables": {
                "type": "object",
                "additionalProperties": {"type": "string", "maxLength": 10_000},
            },
        },
    },
    "ChatUpdate": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"metadata": {"type": "object", "description": "Replaces the chat's metadata."}},
    },
    "ChatList": {
        "type": "object",
        "required": ["items", "has_more", "pagination_key"],
        "properties": {
            "items": {"type": "array", "items": ref("Chat")},
            "has_more": {"type": "boolean"},
            "pagination_key": {
                **nullable({"type": "string"}),
                "description": "Pass as `pagination_key` for the next page; null on the last one.",
            },
        },
    },
    "CompletionRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["content"],
        "properties": {
            "content": {
                "type": "string",
                "minLength": 1,
                "maxLength": 32_000,
                "description": "The user's message; not blank.",
            }
        },
    },
    "CompletionResponse": {
        "type": "object",
        "required": ["messages"],
        "properties": {"messages": {"type": "array", "items": ref("Message")}},
    },
    "SmsChatCreate": {
        "type": "object",
        "additionalProperties": False,
        "required": ["from_number", "to_number"],
        "properties": {
            "from_number": {**E164, "description": "Our Twilio number the conversation comes from."},
            "to_number": {**E164, "description": "The person's number."},
            "agent_id": {
                "type": "string",
                "maxLength": 64,
                "description": "Default: the number's outbound agent, then its inbound one, then "
                "the default.",
            },
            "message": {
                "type": ["string", "null"],
                "minLength": 1,
                "maxLength": 16000,
                "description": "The opening text, sent as is (split into parts of at most 1600 "
                "characters); without it the agent writes the opening text.",
            },
            "media_urls": {
                "type": "array",
                "maxItems": 10,
                "items": {"type": "string", "format": "uri", "pattern": "^https?://"},
                "description": "Media (MMS) sent with the first part; Twilio fetches each URL.",
            },
            "metadata": {"type": "object"},
            "dynamic_variables": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
    "Readiness": {
        "type": "object",
        "required": ["status", "checks"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "unavailable"]},
            "checks": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
}

# --- paths ---------------------------------------------------------------------------------------

AGENT_ID = path_param("agent_id", {"type": "string"}, "The agent's id.")
PHONE_NUMBER = path_param(
    "phone_number", {"type": "string"}, "The number in E.164 form (`+` may be sent as is or as %2B)."
)
CHAT_ID = path_param("chat_id", {"type": "string"}, "The chat's id.")
TWIML = {
    "text/xml": {"schema": {"type": "string"}, "example": '<?xml version="1.0" encoding="UTF-8"?><Response/>'}
}
TWILIO_SIGNATURE = {
    "name": "X-Twilio-Signature",
    "in": "header",
    "required": True,
    "schema": {"type": "string"},
    "description": "Twilio's HMAC-SHA1 signature of PUBLIC_BASE_URL + path and the form.",
}
TWILIO_RESPONSES = {
    "200": {"description": "Recorded (or a replay of a recorded message): empty TwiML.", "content": TWIML},
    "400": {
        "description": "Not a Twilio webhook form.",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    },
    "403": {
        "description": "X-Twilio-Signature missing or wrong.",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    },
}


def form(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """A form-encoded request body."""
    return {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {"type": "object", "required": required, "properties": properties}
            }
        },
    }


PATHS: dict[str, Any] = {
    "/v1/agents": {
        "post": {
            "operationId": "createAgent",
            "tags": ["agents"],
            "summary": "Create an agent",
            "requestBody": json_body(ref("AgentCreate")),
            "responses": responses(
                {"201": json_response("The new agent.", ref("Agent"))},
                {"409": error("`agent_id` is taken (`agent_exists`), possibly by a deleted agent.")},
            ),
        },
        "get": {
            "operationId": "listAgents",
            "tags": ["agents"],
            "summary": "List agents (the default agent first)",
            "responses": responses({"200": json_response("Every agent.", ref("AgentList"))}, body=False),
        },
    },
    "/v1/agents/{agent_id}": {
        "parameters": [AGENT_ID],
        "get": {
            "operationId": "getAgent",
            "tags": ["agents"],
            "summary": "Get an agent",
            "responses": responses({"200": json_response("The agent.", ref("Agent"))}, NOT_FOUND, body=False),
        },
        "patch": {
            "operationId": "updateAgent",
            "tags": ["agents"],
            "summary": "Change some of an agent's fields",
            "requestBody": json_body(ref("AgentUpdate")),
            "responses": responses({"200": json_response("The agent.", ref("Agent"))}, NOT_FOUND),
        },
        "delete": {
            "operationId": "deleteAgent",
            "tags": ["agents"],
            "summary": "Delete an agent",
            "description": "Refused (409) for the default agent (`agent_is_default`) and while a phone "
            "number or an ongoing chat uses the agent (`agent_in_use`). Ended chats keep the agent's id.",
            "responses": responses(
                {"204": {"description": "Deleted."}},
                NOT_FOUND,
                {"409": error("The default agent, or an agent in use.")},
                body=False,
            ),
        },
    },
    "/v1/phone-numbers": {
        "post": {
            "operationId": "createPhoneNumber",
            "tags": ["phone numbers"],
            "summary": "Register one of our Twilio numbers",
            "requestBody": json_body(ref("PhoneNumberCreate")),
            "responses": responses(
                {"201": json_response("The number.", ref("PhoneNumber"))},
                {"409": error("The number is registered already (`phone_number_exists`).")},
            ),
        },
        "get": {
            "operationId": "listPhoneNumbers",
            "tags": ["phone numbers"],
            "summary": "List our numbers",
            "responses": responses(
                {"200": json_response("Every number.", ref("PhoneNumberList"))}, body=False
            ),
        },
    },
    "/v1/phone-numbers/{phone_number}": {
        "parameters": [PHONE_NUMBER],
        "get": {
            "operationId": "getPhoneNumber",
            "tags": ["phone numbers"],
            "summary": "Get a number",
            "responses": responses(
                {"200": json_response("The number.", ref("PhoneNumber"))}, NOT_FOUND, body=False
            ),
        },
        "patch": {
            "operationId": "updatePhoneNumber",
            "tags": ["phone numbers"],
            "summary": "Change a number's agents",
            "requestBody": json_body(ref("PhoneNumberUpdate")),
            "responses": responses({"200": json_response("The number.", ref("PhoneNumber"))}, NOT_FOUND),
        },
        "delete": {
            "operationId": "deletePhoneNumber",
            "tags": ["phone numbers"],
            "summary": "Forget a number (its chats stay)",
            "responses": responses({"204": {"description": "Deleted."}}, NOT_FOUND, body=False),
        },
    },
    "/v1/chats": {
        "post": {
            "operationId": "createChat",
            "tags": ["chats"],
            "summary": "Start an API chat",
            "requestBody": json_body(ref("ChatCreate")),
            "responses": responses(
                {"201": json_response("The new chat (chat_type api_chat).", ref("ChatDetail"))}
            ),
        },
        "get": {
            "operationId": "listChats",
            "tags": ["chats"],
            "summary": "List chats, newest first, one page at a time",
            "description": "Keyset paging: pass the `pagination_key` of one page to get the next. Chats "
            "created meanwhile never shift later pages (nothing is skipped or repeated).",
            "parameters": [
                query_param("agent_id", {"type": "string", "maxLength": 64}, "Only this agent's chats."),
                query_param(
                    "chat_status", {"type": "string", "enum": ["ongoing", "ended", "error"]}, "Filter."
                ),
                query_param("chat_type", {"type": "string", "enum": ["api_chat", "sms_chat"]}, "Filter."),
                query_param("user_id", {"type": "string", "maxLength": 200}, "Only this user's chats."),
                query_param(
                    "limit",
                    {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
                    "Page size.",
                ),
                query_param("pagination_key", {"type": "string"}, "From the previous page."),
            ],
            "responses": responses({"200": json_response("One page.", ref("ChatList"))}, body=False),
        },
    },
    "/v1/chats/{chat_id}": {
        "parameters": [CHAT_ID],
        "get": {
            "operationId": "getChat",
            "tags": ["chats"],
            "summary": "Get a chat with its messages",
            "responses": responses(
                {"200": json_response("The chat.", ref("ChatDetail"))}, NOT_FOUND, body=False
            ),
        },
        "patch": {
            "operationId": "updateChat",
            "tags": ["chats"],
            "summary": "Replace a chat's metadata",
            "requestBody": json_body(ref("ChatUpdate")),
            "responses": responses({"200": json_response("The chat.", ref("ChatDetail"))}, NOT_FOUND),
        },
    },
    "/v1/chats/{chat_id}/end": {
        "parameters": [CHAT_ID],
        "post": {
            "operationId": "endChat",
            "tags": ["chats"],
            "summary": "End a chat",
            "description": "The ended chat has `chat_status` ended and `end_reason` api. The body "
            "is ignored.",
            "responses": responses(
                {"200": json_response("The ended chat.", ref("ChatDetail"))},
                NOT_FOUND,
                {"409": error("The chat is not ongoing (`chat_not_ongoing`).")},
                body=False,
            ),
        },
    },
    "/v1/chats/{chat_id}/completions": {
        "parameters": [CHAT_ID],
        "post": {
            "operationId": "createChatCompletion",
            "tags": ["chats"],
            "summary": "Send the user's message and get the agent's answer",
            "description": "Synchronous: the user's message is recorded, the model answers (transient "
            "failures retried per the agent's retry_attempts and retry_delay), the answer is recorded "
            "and returned.",
            "requestBody": json_body(ref("CompletionRequest")),
            "responses": responses(
                {"200": json_response("The agent's new message(s).", ref("CompletionResponse"))},
                NOT_FOUND,
                {
                    "409": error(
                        "The chat is not ongoing (`chat_not_ongoing`), is an SMS chat (`not_an_api_chat`), "
                        "or max_concurrent_invocations completions kept running (`too_many_invocations`)."
                    ),
                    "502": error(
                        "The model failed for good or retries ran out (`model_error`); the user's "
                        "message stays recorded."
                    ),
                    "503": error("Redis, which counts concurrent completions, did not answer."),
                },
            ),
        },
    },
    "/v1/sms-chats": {
        "post": {
            "operationId": "createSmsChat",
            "tags": ["chats"],
            "summary": "Start an outbound SMS conversation",
            "description": "Without `message` the agent writes the opening text. The text is sent by a "
            "worker; the response does not wait for Twilio.",
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "maxLength": 255},
                    "description": "A retried call with the same key and body gets the first answer "
                    "(with header `Idempotent-Replayed: true`) and starts nothing twice; the same key "
                    "with another body gets 409 `idempotency_key_reused`.",
                }
            ],
            "requestBody": json_body(ref("SmsChatCreate")),
            "responses": responses(
                {"202": json_response("The new chat (chat_type sms_chat).", ref("Chat"))},
                {
                    "409": error(
                        "The Idempotency-Key was used with another body (`idempotency_key_reused`), the "
                        "person opted out (`opted_out`), or a conversation with them is ongoing "
                        "(`chat_ongoing`)."
                    ),
                    "422": error(
                        "A field is invalid: `from_number` is not one of our numbers, `to_number` is "
                        "not a valid number, `agent_id` names no agent, ..."
                    ),
                },
            ),
        },
    },
    "/v1/openapi.json": {
        "get": {
            "operationId": "getOpenApi",
            "tags": ["meta"],
            "summary": "This document",
            "security": [],
            "responses": {"200": json_response("The OpenAPI document.", {"type": "object"})},
        },
    },
    "/twilio/sms": {
        "post": {
            "operationId": "twilioInboundSms",
            "tags": ["twilio"],
            "summary": "Twilio's inbound SMS/MMS webhook",
            "description": "Answers at once; the agent's reply is sent by a worker. A replayed MessageSid "
            "gets 200 and no second reply.",
            "security": [],
            "parameters": [TWILIO_SIGNATURE],
            "requestBody": form(
                {
                    "MessageSid": {"type": "string"},
                    "AccountSid": {"type": "string"},
                    "From": {"type": "string"},
                    "To": {"type": "string"},
                    "Body": {"type": "string"},
                    "NumMedia": {"type": "string"},
                    "MediaUrl0": {"type": "string"},
                    "MediaContentType0": {"type": "string"},
                    "OptOutType": {"type": "string"},
                },
                ["MessageSid", "From", "To"],
            ),
            "responses": TWILIO_RESPONSES,
        }
    },
    "/twilio/status": {
        "post": {
            "operationId": "twilioStatusCallback",
            "tags": ["twilio"],
            "summary": "Twilio's message status callback",
            "security": [],
            "parameters": [TWILIO_SIGNATURE],
            "requestBody": form(
                {
                    "MessageSid": {"type": "string"},
                    "MessageStatus": {"type": "string"},
                    "ErrorCode": {"type": "string"},
                    "ErrorMessage": {"type": "string"},
                    "From": {"type": "string"},
                    "To": {"type": "string"},
                },
                ["MessageSid", "MessageStatus"],
            ),
            "responses": TWILIO_RESPONSES,
        }
    },
    "/healthz": {
        "get": {
            "operationId": "healthz",
            "tags": ["operations"],
            "summary": "The process is up",
            "security": [],
            "responses": {"200": json_response("Up.", ref("Health"))},
        }
    },
    "/readyz": {
        "get": {
            "operationId": "readyz",
            "tags": ["operations"],
            "summary": "The database and Redis answer",
            "security": [],
            "responses": {
                "200": json_response("Ready.", ref("Readiness")),
                "503": json_response("Not ready; `checks` says what failed.", ref("Readiness")),
            },
        }
    },
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "smsgw: SMS/MMS gateway for LLM chat agents",
        "version": "0.1.0",
        "description": "The chat API under /v1 (JSON, `Authorization: Bearer $GATEWAY_API_KEY`; while "
        "GATEWAY_API_KEY is unset every /v1 route but this document answers 401), Twilio's webhooks and "
        'the health probes. Errors: `{"error": {"code", "message", "field"?}}`.',
    },
    "servers": [{"url": "/"}],
    "security": [{"bearerAuth": []}],
    "tags": [
        {"name": "agents"},
        {"name": "phone numbers"},
        {"name": "chats"},
        {"name": "twilio"},
        {"name": "operations"},
        {"name": "meta"},
    ],
    "paths": PATHS,
    "components": {
        "securitySchemes": {
            "bearerAuth": {"type": "http", "scheme": "bearer", "description": "The server's GATEWAY_API_KEY."}
        },
        "schemas": SCHEMAS,
    },
}


@bp.get("/openapi.json")
def openapi_document():
    """The OpenAPI document (no key needed)."""
    return jsonify(DOCUMENT)
