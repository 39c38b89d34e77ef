"""The API's errors: one exception type, turned into `{"error": {"code", "message", "field"}}` JSON."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from peewee import DoesNotExist, InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

API_PREFIX = "/v1"

# Machine codes for werkzeug's HTTP errors when they escape a /v1 route.
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    502: "bad_gateway",
    503: "unavailable",
}


class ApiError(Exception):
    """An error the API answers with: HTTP status, machine code, message, and the field at fault."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None) -> None:
        """Keep what the JSON error body will say."""
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def to_dict(self) -> dict:
        """The JSON body."""
        error: dict = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error}


def invalid_json(message: str) -> ApiError:
    """400: the body is not a JSON object."""
    return ApiError(400, "invalid_json", message)


def invalid_field(field: str, message: str) -> ApiError:
    """422: a field is missing, unknown, of the wrong type or out of range."""
    return ApiError(422, "validation_error", f"{field}: {message}", field=field)


def not_found(what: str, ident: str) -> ApiError:
    """404: no such resource."""
    return ApiError(404, "not_found", f"No {what} with id {ident!r}.")


def conflict(code: str, message: str) -> ApiError:
    """409: the resource's state forbids the request."""
    return ApiError(409, code, message)


def error_response(status: int, code: str, message: str, field: str | None = None) -> Response:
    """A JSON error response."""
    response = jsonify(ApiError(status, code, message, field=field).to_dict())
    response.status_code = status
    return response


def _is_api_request() -> bool:
    """True when the request is for a /v1 URL (handlers elsewhere keep Flask's defaults)."""
    path = request.path
    return path == API_PREFIX or path.startswith(API_PREFIX + "/")


def handle_api_error(exc: ApiError) -> Response:
    """Answer an ApiError raised by a view."""
    response = jsonify(exc.to_dict())
    response.status_code = exc.status
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


def handle_http_exception(exc: HTTPException):
    """Answer werkzeug's HTTP errors (404, 405, 500 ...) as JSON under /v1 only."""
    if not _is_api_request():
        return exc
    status = exc.code or 500
    if status >= 500:  # Flask has logged the original exception already
        message = "Internal error; the server log has the details."
    else:
        message = exc.description or exc.name
    response = error_response(status, HTTP_CODES.get(status, exc.name.lower().replace(" ", "_")), message)
    valid_methods = getattr(exc, "valid_methods", None)
    if status == 405 and valid_methods:
        response.headers["Allow"] = ", ".join(valid_methods)
    return response


def handle_vanished_row(exc: DoesNotExist):
    """A row deleted by another request while this one ran: 404, as if it had never been there."""
    if not _is_api_request():
        raise exc
    return error_response(404, "not_found", "It was deleted while this request ran.")


def handle_database_unreachable(exc: Exception):
    """The database went away (a restart, a dropped connection): 503, one log line, no traceback.

    Twilio's webhooks get a plain 503 (nothing was recorded; Twilio's retry policy applies), /v1 its
    JSON error body. A Retry-After tells a client when to try again.
    """
    detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    log.warning("%s %s: the database is unreachable (%s); answered 503", request.method, request.path, detail)
    if _is_api_request():
        response = error_response(503, "unavailable", "The database is unreachable; try again shortly.")
    else:
        response = Response("The database is unreachable; try again shortly.\n", 503, mimetype="text/plain")
    response.headers["Retry-After"] = "5"
    return response


def register_error_handlers(app: Flask) -> None:
    """Install the handlers on the app: routing errors (404/405) never reach a blueprint's own."""
    app.register_error_handler(ApiError, handle_api_error)
    app.register_error_handler(DoesNotExist, handle_vanished_row)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(OperationalError, handle_database_unreachable)
    app.register_error_handler(InterfaceError, handle_database_unreachable)
