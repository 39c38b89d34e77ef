"""GET /v1/openapi.json: the OpenAPI 3.1 document, written from the declared operations and models.

The /v1 part is derived, never written by hand: every operation registered with
`gateway.api.contract.operation` becomes a path item, its request and response models (gateway/api/
schemas.py) become component schemas through pydantic's JSON Schema. Only the routes outside /v1
(Twilio's webhooks, the health probes), which are not JSON APIs, are described by hand below.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from flask import jsonify
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, models_json_schema

from gateway.api import bp
from gateway.api.contract import MAX_BODY_BYTES, OPERATIONS, NoQuery, Operation
from gateway.api.errors import API_PREFIX
from gateway.api.schemas import Error

JSON = "application/json"
REF = "#/components/schemas/{model}"


class _Schema(GenerateJsonSchema):
    """pydantic's JSON Schema without a `title` on every field (the field's name says it)."""

    def field_title_should_be_set(self, schema) -> bool:  # noqa: ANN001  (pydantic's core schema)
        """Never."""
        return False


def ref(name: str) -> dict[str, str]:
    """A reference to a component schema."""
    return {"$ref": REF.format(model=name)}


def json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON response."""
    return {"description": description, "content": {JSON: {"schema": schema}}}


def error(description: str) -> dict[str, Any]:
    """An error response of the API's error shape."""
    return json_response(description, ref("Error"))


# The errors any /v1 operation may answer, and the ones that come with a body or a URL id.
COMMON_ERRORS = {
    400: "The request is malformed (a Content-Length that is not a number, a broken chunked body).",
    401: "No key, a wrong key, or GATEWAY_API_KEY unset on the server (code `api_key_not_configured`).",
    413: f"The request is larger than {MAX_BODY_BYTES // 1024 // 1024} MiB (`payload_too_large`).",
    422: "A query parameter or field is missing, unknown, of the wrong type or out of range; `error.field` "
    "names it.",
    503: "The database is unreachable (a restart, a dropped connection): `unavailable`, with Retry-After.",
}
BODY_ERRORS = {
    400: "The body is not a JSON object (empty, malformed JSON, NaN, a number out of range), or the "
    "request is malformed (Content-Length, chunked encoding)."
}
PATH_ERRORS = {404: "No such resource (or it was deleted while the request ran)."}
URI_TOO_LONG = {
    "description": "The request line is longer than the HTTP server accepts (gunicorn's limit_request_line); "
    "answered by the server itself, before the gateway sees the request.",
    "content": {"text/html": {"schema": {"type": "string"}}},
}


def openapi_path(op: Operation) -> str:
    """Flask's `/agents/<agent_id>` as OpenAPI's `/v1/agents/{agent_id}`."""
    return API_PREFIX + re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", op.rule)


def query_parameters(model: type[BaseModel], defs: dict[str, Any]) -> list[dict[str, Any]]:
    """A query model's fields as OpenAPI query parameters."""
    if model is NoQuery:
        return []
    schema = model.model_json_schema(ref_template=REF, schema_generator=_Schema)
    defs.update(schema.pop("$defs", {}))
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        description = prop.pop("description", "")
        prop.pop("default", None) if prop.get("default") is None else None
        # A query parameter is absent or text: the "or null" of an optional filter does not apply.
        options = [p for p in prop.pop("anyOf", []) if p.get("type") != "null"]
        if options:
            prop.update(options[0] if len(options) == 1 else {"anyOf": options})
        param = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if description:
            param["description"] = description
        params.append(param)
    return params


def operation_object(op: Operation, defs: dict[str, Any]) -> dict[str, Any]:
    """One operation of the document."""
    responses: dict[str, Any] = {}
    if op.ok_model is None:
        responses[str(op.ok_status)] = {"description": op.ok_description}
    else:
        ref = {"$ref": REF.format(model=op.ok_model.__name__)}
        responses[str(op.ok_status)] = {"description": op.ok_description, "content": {JSON: {"schema": ref}}}
    errors = dict(COMMON_ERRORS)
    if op.body is not None:
        errors.update(BODY_ERRORS)
    if op.path_params:
        errors.update(PATH_ERRORS)
    errors.update(op.errors)
    for status in sorted(errors):
        responses[str(status)] = error(errors[status])
    responses["414"] = URI_TOO_LONG
    parameters = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": param.schema,
            "description": param.description,
        }
        for name, param in op.path_params.items()
    ]
    parameters += list(op.headers) + query_parameters(op.query, defs)
    document: dict[str, Any] = {"operationId": op.operation_id, "tags": [op.tag], "summary": op.summary}
    if op.description:
        document["description"] = op.description
    if parameters:
        document["parameters"] = parameters
    if op.body is not None:
        document["requestBody"] = {
            "required": True,
            "content": {JSON: {"schema": {"$ref": REF.format(model=op.body.__name__)}}},
        }
    document["responses"] = responses
    return document


def component_schemas() -> dict[str, Any]:
    """Every request and response model the operations name, and what they refer to."""
    inputs = {op.body for op in OPERATIONS if op.body is not None}
    outputs = {op.ok_model for op in OPERATIONS if op.ok_model is not None} | {Error}
    pairs = [(m, "validation") for m in sorted(inputs, key=lambda m: m.__name__)]
    pairs += [(m, "serialization") for m in sorted(outputs, key=lambda m: m.__name__)]
    _, schema = models_json_schema(pairs, ref_template=REF, schema_generator=_Schema)
    return schema.get("$defs", {})


@functools.cache
def document() -> dict[str, Any]:
    """The whole document (built once: the operations are fixed at import)."""
    schemas = component_schemas()
    paths: dict[str, Any] = {}
    for op in OPERATIONS:
        paths.setdefault(openapi_path(op), {})[op.method.lower()] = operation_object(op, schemas)
    paths.update(OUTSIDE_V1)
    schemas.update(OUTSIDE_V1_SCHEMAS)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "smsgw: SMS/MMS gateway for LLM chat agents",
            "version": "0.1.0",
            "description": "The chat API under /v1 (JSON, `Authorization: Bearer $GATEWAY_API_KEY`; while "
            "GATEWAY_API_KEY is unset every /v1 route but this document answers 401), Twilio's webhooks and "
            'the health probes. Errors: `{"error": {"code", "message", "field"?}}`. Unknown body fields and '
            "unknown query parameters are refused (422), and so is a string anywhere in a request (keys of "
            "free-form objects too) holding a NUL character or an unpaired surrogate, which no database "
            "can store.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "tags": [{"name": tag} for tag in dict.fromkeys([op.tag for op in OPERATIONS] + OUTSIDE_V1_TAGS)],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The server's GATEWAY_API_KEY.",
                },
                "metricsToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The server's METRICS_TOKEN (GET /metrics only).",
                },
            },
            "schemas": schemas,
        },
    }


@bp.get("/openapi.json")
def openapi_document():
    """The OpenAPI document (no key needed)."""
    return jsonify(document())


# --- outside /v1: Twilio's webhooks and the health probes (form posts and probes, not the JSON API) ----

OUTSIDE_V1_TAGS = ["twilio", "operations", "meta"]
OUTSIDE_V1_SCHEMAS: dict[str, Any] = {
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
    "Readiness": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "unavailable"]},
            "checks": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "What each dependency answered; only for a caller with the API key.",
            },
        },
    },
}
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
    "503": {
        "description": "The database is unreachable: nothing was recorded; Retry-After says when to retry.",
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


OUTSIDE_V1: dict[str, Any] = {
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
            "summary": "Twilio's inbound SMS/MMS/WhatsApp webhook",
            "description": "Answers at once; the agent's reply is sent by a worker. A replayed MessageSid "
            "gets 200 and no second reply. WhatsApp arrives here too, with `whatsapp:+…` addresses: it "
            "becomes a chat with `channel` whatsapp, and its extra fields (ProfileName, WaId, MessageType, "
            "ButtonText, ButtonPayload, Latitude, Longitude, Address, Label) are kept on the message.",
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
                    "ProfileName": {"type": "string", "description": "WhatsApp: the person's profile name."},
                    "WaId": {"type": "string", "description": "WhatsApp: the person's WhatsApp id."},
                    "MessageType": {
                        "type": "string",
                        "description": "WhatsApp: text, image, button, location...",
                    },
                    "ButtonText": {"type": "string", "description": "WhatsApp: the text of a tapped button."},
                    "ButtonPayload": {
                        "type": "string",
                        "description": "WhatsApp: the tapped button's payload.",
                    },
                    "Latitude": {"type": "string", "description": "WhatsApp: a shared location."},
                    "Longitude": {"type": "string", "description": "WhatsApp: a shared location."},
                    "Address": {"type": "string", "description": "WhatsApp: a shared location's address."},
                    "Label": {"type": "string", "description": "WhatsApp: a shared location's name."},
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
                    "MessageStatus": {
                        "type": "string",
                        "description": "queued, sent, delivered, read (WhatsApp; recorded after delivered), "
                        "undelivered, failed, ...",
                    },
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
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "tags": ["operations"],
            "summary": "Prometheus metrics of every gateway process",
            "description": "Prometheus text format: texts received by outcome, reply parts sent and failed "
            "by error code, model calls, tokens and latency by model, time from text to reply, queue depth "
            "and oldest job age, tool calls and webhook deliveries by outcome.",
            "security": [{"metricsToken": []}],
            "responses": {
                "200": {
                    "description": "The metrics.",
                    "content": {"text/plain; version=0.0.4; charset=utf-8": {"schema": {"type": "string"}}},
                },
                "401": json_response("No or a wrong METRICS_TOKEN.", ref("Error")),
                "403": json_response(
                    "METRICS_TOKEN is not set on the server: /metrics is off.", ref("Error")
                ),
            },
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
