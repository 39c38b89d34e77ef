"""The route registry: one decorator declares a /v1 operation, validates its input, shapes its output.

    @operation("POST", "/agents", body=AgentCreate, ok=(201, Agent, "The new agent."),
               errors={409: "`agent_id` is taken (`agent_exists`)."}, tag="agents", summary="Create an agent")
    def create_agent(body: AgentCreate) -> Agent: ...

The decorator registers the Flask route on the /v1 blueprint, and records the operation in
OPERATIONS, from which gateway/api/openapi.py writes the document. Before the view runs, the
query string is validated against `query` (always: unknown parameters are refused even when an
operation takes none) and the body against `body`; the view receives them as `query=` and `body=`
keyword arguments next to the URL's own. It returns a response model (sent with the `ok` status),
None (204), or a Flask response it built itself.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flask import Response, jsonify, request
from pydantic import BaseModel, ValidationError

from gateway.agent.tools import TOOL_TYPES
from gateway.api.errors import ApiError, invalid_field, invalid_json
from gateway.api.schemas import Query
from gateway.limits import API_LIMIT

# A request body larger than this is refused before it is parsed (by gateway/limits.py's middleware
# before Flask sees it; checked here again for an app run without that middleware).
MAX_BODY_BYTES = API_LIMIT.max_bytes

M = TypeVar("M", bound=BaseModel)


class NoQuery(Query):
    """An operation that takes no query parameters (any sent is refused)."""


@dataclass(frozen=True)
class PathParam:
    """A part of the URL: its schema and description, and a check that 404s when it names nothing."""

    schema: dict[str, Any]
    description: str
    # Called with the URL's value before the body is read, so a missing row is a 404 whatever the body.
    must_exist: Callable[[str], Any] | None = None


@dataclass(frozen=True)
class Operation:
    """One documented /v1 operation."""

    method: str
    rule: str  # Flask's form, relative to /v1: "/agents/<agent_id>"
    operation_id: str
    summary: str
    tag: str
    ok_status: int
    ok_model: type[BaseModel] | None
    ok_description: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] = NoQuery
    errors: dict[int, str] = field(default_factory=dict)
    description: str | None = None
    path_params: dict[str, PathParam] = field(default_factory=dict)
    headers: tuple[dict[str, Any], ...] = ()


# Every operation, in the order the modules declared them (the document's order).
OPERATIONS: list[Operation] = []


def operation(
    method: str,
    rule: str,
    *,
    operation_id: str,
    summary: str,
    tag: str,
    ok: tuple[int, type[BaseModel] | None, str],
    body: type[BaseModel] | None = None,
    query: type[BaseModel] = NoQuery,
    errors: dict[int, str] | None = None,
    description: str | None = None,
    path_params: dict[str, PathParam] | None = None,
    headers: tuple[dict[str, Any], ...] = (),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a /v1 operation: its route, input models, success response and the errors it adds."""
    from gateway.api import bp  # the blueprint is created before the route modules import this one

    status, model, ok_description = ok
    spec = Operation(
        method=method.upper(),
        rule=rule,
        operation_id=operation_id,
        summary=summary,
        tag=tag,
        ok_status=status,
        ok_model=model,
        ok_description=ok_description,
        body=body,
        query=query,
        errors=dict(errors or {}),
        description=description,
        path_params=dict(path_params or {}),
        headers=headers,
    )

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def handle(**url_values: Any) -> Any:
            for name, param in spec.path_params.items():
                if param.must_exist is not None:
                    param.must_exist(url_values[name])
            parsed = read_query(spec.query)
            if spec.query is not NoQuery:
                url_values["query"] = parsed
            if spec.body is not None:
                url_values["body"] = read_body(spec.body)
            return respond(view(**url_values), spec.ok_status)

        bp.add_url_rule(rule, endpoint=view.__name__, view_func=handle, methods=[spec.method])
        OPERATIONS.append(spec)
        return handle

    return decorate


def respond(result: Any, status: int) -> Any:
    """A view's result as the HTTP response: a model as JSON, None as 204, a response as it is."""
    if result is None:
        return "", 204
    if isinstance(result, BaseModel):
        return json_response(result, status)
    return result


# --- input ------------------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    """JSON has no NaN or Infinity; Python's parser would take them, we do not."""
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    """A JSON number that fits a double (1e400 would become infinity, which JSON can't carry)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def json_object() -> dict[str, Any]:
    """The request body as a JSON object; 400 when it is not one (or empty), 413 when too large."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, "payload_too_large", f"The body is larger than {MAX_BODY_BYTES} bytes.")
    raw = request.get_data(cache=True)
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, "payload_too_large", f"The body is larger than {MAX_BODY_BYTES} bytes.")
    if not raw.strip():
        raise invalid_json("The body is empty; send a JSON object (`{}` when every field is optional).")
    try:
        value = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:
        raise invalid_json(f"The body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise invalid_json("The body must be a JSON object.")
    return value


def read_body(model: type[M]) -> M:
    """The body checked against `model`; 422 naming the first field at fault."""
    data = json_object()
    for name, value in data.items():
        check_storable(name if storable_text(name) else repr(name), value)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, unknown="is not a known field") from None


def read_query(model: type[M]) -> M:
    """The query string checked against `model`; unknown, repeated or invalid parameters are 422s."""
    data: dict[str, str] = {}
    for name in request.args:
        values = request.args.getlist(name)
        shown = name if storable_text(name) else repr(name)
        if not storable_text(name) or not all(storable_text(v) for v in values):
            raise invalid_field(shown, "must not contain NUL characters or unpaired surrogates")
        if len(values) > 1:
            raise invalid_field(shown, "must be given once")
        data[name] = values[0]
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, unknown="is not a known query parameter") from None


# Lists of a union told apart by the items' `type` ({list field: the tags}): pydantic puts the tag in
# an error's location (`tools.0.function.url`), which names no field of the request.
TAGGED_LISTS = {"tools": TOOL_TYPES}


def field_path(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as the API names fields: `analysis_fields[0].name`, `tools[0].url`."""
    path = ""
    for index, part in enumerate(loc):
        if (
            index >= 2
            and isinstance(loc[index - 1], int)
            and part in TAGGED_LISTS.get(str(loc[index - 2]), ())
        ):
            continue  # the union's tag, not a field
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def validation_error(exc: ValidationError, *, unknown: str) -> ApiError:
    """The first problem pydantic found, as a 422 naming its field."""
    error = exc.errors(include_url=False)[0]
    name = field_path(error["loc"]) or "body"
    if error["type"] == "missing":
        message = "is required"
    elif error["type"] == "extra_forbidden":
        message = unknown
    else:
        message = error["msg"].removeprefix("Value error, ")
    return invalid_field(name, message)


def storable_text(value: str) -> bool:
    """True when every database can store the string: no NUL, no lone surrogate."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_storable(name: str, value: Any, depth: int = 0) -> None:
    """422 when a string anywhere in `value` cannot be stored (NUL bytes, lone surrogates)."""
    if depth > 64:
        raise invalid_field(name, "is nested too deeply")
    if isinstance(value, str):
        if not storable_text(value):
            raise invalid_field(name, "must not contain NUL characters or unpaired surrogates")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not storable_text(key):
                raise invalid_field(name, "keys must not contain NUL characters or unpaired surrogates")
            check_storable(f"{name}.{key}", item, depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_storable(f"{name}[{index}]", item, depth + 1)


def json_response(model: BaseModel, status: int = 200) -> Response:
    """A response model as a JSON response (for views that add headers of their own)."""
    response = jsonify(model.model_dump(mode="json"))
    response.status_code = status
    return response
