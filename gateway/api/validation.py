"""Reading request bodies and query strings: JSON objects in, typed and range-checked fields out."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import phonenumbers
from flask import request

from gateway.api.errors import ApiError, invalid_field, invalid_json

# A request body larger than this is refused before it is parsed.
MAX_BODY_BYTES = 1024 * 1024
# Public ids travel in URLs: letters, digits, `_` and `-` only.
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# PostgreSQL's INTEGER column; larger numbers would not fit.
MAX_INT = 2**31 - 1


def _reject_constant(name: str) -> Any:
    """JSON has no NaN or Infinity; Python's parser would take them, we do not."""
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    """A JSON number that fits a double (1e400 would become infinity, which JSON can't carry)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def json_body(*, allow_empty: bool = False) -> dict[str, Any]:
    """The request body as a JSON object; 400 when it is not one, 413 when it is too large."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, "payload_too_large", f"The body is larger than {MAX_BODY_BYTES} bytes.")
    raw = request.get_data(cache=True)
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, "payload_too_large", f"The body is larger than {MAX_BODY_BYTES} bytes.")
    if not raw.strip():
        if allow_empty:
            return {}
        raise invalid_json("The body is empty; send a JSON object.")
    try:
        value = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:
        raise invalid_json(f"The body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise invalid_json("The body must be a JSON object.")
    return value


# --- field checkers: each takes (field name, value) and returns the clean value or raises 422 ---

Checker = Callable[[str, Any], Any]


def string(
    *, max_length: int | None = None, min_length: int = 0, nullable: bool = False, pattern=None
) -> Checker:
    """A JSON string of bounded length (optionally matching `pattern`)."""

    def check(name: str, value: Any) -> Any:
        if value is None and nullable:
            return None
        if not isinstance(value, str):
            raise invalid_field(name, "must be a string" + (" or null" if nullable else ""))
        if len(value) < min_length:
            raise invalid_field(name, f"must be at least {min_length} characters long")
        if max_length is not None and len(value) > max_length:
            raise invalid_field(name, f"must be at most {max_length} characters long")
        if pattern is not None and not pattern.match(value):
            raise invalid_field(name, f"must match {pattern.pattern}")
        return value

    return check


def integer(*, minimum: int | None = None, maximum: int = MAX_INT) -> Checker:
    """A JSON integer (not a boolean, not a float) within bounds."""

    def check(name: str, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid_field(name, "must be an integer")
        if minimum is not None and value < minimum:
            raise invalid_field(name, f"must be >= {minimum}")
        if value > maximum:
            raise invalid_field(name, f"must be <= {maximum}")
        return value

    return check


def number(*, minimum: float | None = None, maximum: float | None = None, nullable: bool = False) -> Checker:
    """A finite JSON number within bounds."""

    def check(name: str, value: Any) -> Any:
        if value is None and nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise invalid_field(name, "must be a number" + (" or null" if nullable else ""))
        if minimum is not None and value < minimum:
            raise invalid_field(name, f"must be >= {minimum}")
        if maximum is not None and value > maximum:
            raise invalid_field(name, f"must be <= {maximum}")
        return float(value)

    return check


def boolean() -> Checker:
    """A JSON boolean."""

    def check(name: str, value: Any) -> Any:
        if not isinstance(value, bool):
            raise invalid_field(name, "must be true or false")
        return value

    return check


def json_object() -> Checker:
    """Any JSON object, kept as it is."""

    def check(name: str, value: Any) -> Any:
        if not isinstance(value, dict):
            raise invalid_field(name, "must be a JSON object")
        return value

    return check


def string_map(*, max_value_length: int = 10_000) -> Checker:
    """A JSON object whose values are strings (dynamic variables filled into prompts)."""

    def check(name: str, value: Any) -> Any:
        if not isinstance(value, dict):
            raise invalid_field(name, "must be a JSON object of strings")
        for key, item in value.items():
            if not isinstance(item, str):
                raise invalid_field(f"{name}.{key}", "must be a string")
            if len(item) > max_value_length:
                raise invalid_field(f"{name}.{key}", f"must be at most {max_value_length} characters long")
        return value

    return check


def analysis_fields() -> Checker:
    """Custom post-chat analysis fields, in the shape `gateway.analysis` documents and reads."""
    from gateway.agent.analysis import validate_analysis_fields

    def check(name: str, value: Any) -> Any:
        try:
            return validate_analysis_fields(value)
        except ValueError as exc:
            raise invalid_field(name, str(exc)) from None

    return check


def e164(*, nullable: bool = False) -> Checker:
    """A phone number, valid for its country, returned in E.164 form (`+15551234567`)."""

    def check(name: str, value: Any) -> Any:
        if value is None and nullable:
            return None
        if not isinstance(value, str):
            raise invalid_field(name, "must be a string in E.164 form, such as +14155550123")
        normalized = normalize_e164(value)
        if normalized is None:
            raise invalid_field(name, f"{value!r} is not a valid phone number in E.164 form (+14155550123)")
        return normalized

    return check


def normalize_e164(value: str) -> str | None:
    """`value` in E.164 form when it is a valid international number, else None."""
    if not value.startswith("+") or len(value) > 32:
        return None
    try:
        parsed = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


@dataclass(frozen=True)
class Field:
    """One accepted body field: its checker, and whether a create request must send it."""

    check: Checker
    required: bool = False


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


def validate(
    body: Mapping[str, Any], fields: Mapping[str, Field], *, partial: bool = False
) -> dict[str, Any]:
    """Check `body` against `fields`; unknown or missing fields are 422s naming the field."""
    for name in body:
        if name not in fields:
            raise invalid_field(name if storable_text(name) else repr(name), "is not a known field")
        check_storable(name, body[name])
    clean: dict[str, Any] = {}
    for name, spec in fields.items():
        if name in body:
            clean[name] = spec.check(name, body[name])
        elif spec.required and not partial:
            raise invalid_field(name, "is required")
    return clean


def query_limit(default: int = 50, maximum: int = 1000) -> int:
    """The `limit` query parameter: an integer from 1 to `maximum`."""
    raw = request.args.get("limit")
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid_field("limit", "must be an integer") from None
    if not 1 <= value <= maximum:
        raise invalid_field("limit", f"must be between 1 and {maximum}")
    return value


def query_text(name: str, max_length: int = 200) -> str | None:
    """An optional free-text query parameter (such as `user_id`)."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > max_length or not storable_text(raw):
        raise invalid_field(name, f"must be at most {max_length} characters, without NUL characters")
    return raw


def query_choice(name: str, choices: set[str]) -> str | None:
    """An optional query parameter that must be one of `choices`."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    if raw not in choices:
        raise invalid_field(name, f"must be one of {', '.join(sorted(choices))}")
    return raw
