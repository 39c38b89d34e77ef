"""The JSON chat API under /v1: bearer-key auth, JSON errors, and the routes of each area.

Shapes are pydantic models in schemas.py; routes are declared with `contract.operation`, which validates
input and feeds the OpenAPI document (openapi.py). May import storage, queue, agent, conversations.
"""

from __future__ import annotations

import hmac

from flask import Blueprint, current_app, request

from gateway.api.errors import API_PREFIX, ApiError, register_error_handlers

bp = Blueprint("api", __name__, url_prefix=API_PREFIX)

# Readable without a key, so clients and tools can discover the API.
PUBLIC_PATHS = frozenset({f"{API_PREFIX}/openapi.json"})


@bp.record_once
def _install(state) -> None:
    """JSON error handlers live on the app: 404/405 from routing never reach a blueprint's own."""
    register_error_handlers(state.app)


@bp.before_app_request
def _require_api_key() -> None:
    """Every /v1 URL (known or not) but the OpenAPI document needs `Authorization: Bearer <key>`."""
    path = request.path
    if not (path == API_PREFIX or path.startswith(API_PREFIX + "/")) or path in PUBLIC_PATHS:
        return
    expected = current_app.config["SETTINGS"].gateway_api_key
    if not expected:
        raise ApiError(
            401,
            "api_key_not_configured",
            "The /v1 API is disabled because GATEWAY_API_KEY is not set on the server. Set "
            "GATEWAY_API_KEY in the environment (or .env), restart, and send "
            "`Authorization: Bearer <that key>`.",
        )
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "Send `Authorization: Bearer <GATEWAY_API_KEY>`.")
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise ApiError(401, "unauthorized", "The API key is wrong.")


# Routes register on bp when their modules are imported.
from gateway.api import (  # noqa: E402,F401
    agents,
    chats,
    completions,
    contacts,
    openapi,
    phone_numbers,
    sms_chats,
    takeover,
    usage,
    webhook_deliveries,
)
