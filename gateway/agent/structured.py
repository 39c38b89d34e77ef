"""Structured answers: ask the model for JSON the strongest way its endpoint accepts.

The summary, profile and post-chat analysis want one JSON object. Servers differ in what they
accept: OpenAI and recent llama.cpp/vLLM take `response_format` `{"type": "json_schema", "strict":
true}` (the answer then fits the schema), many take only `{"type": "json_object"}`, and some refuse
any `response_format` with a 400. `complete_json()` tries json_schema, then json_object, then the
instructions alone, and remembers in Redis (shared by every web and worker process) which kind
worked per endpoint and model, so later calls go straight to it. The memory expires after
FORMAT_MEMORY_TTL, so an upgraded server gets asked for the stronger kind again.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from gateway.agent import llm, spend
from gateway.config import Settings
from gateway.errors import PermanentError
from gateway.queue import redis_for
from gateway.storage.models import Agent

log = logging.getLogger(__name__)

JSON_SCHEMA = "json_schema"
JSON_OBJECT = "json_object"
INSTRUCTIONS_ONLY = "instructions"
# Strongest first: a server that refuses one is asked with the next.
FORMAT_KINDS = (JSON_SCHEMA, JSON_OBJECT, INSTRUCTIONS_ONLY)
FORMAT_MEMORY_TTL = 7 * 24 * 3600
# The statuses with which servers refuse a request field they do not know (OpenAI, vLLM: 400;
# some proxies: 422). Other errors say nothing about response_format and are raised as they are.
REFUSAL_STATUSES = ("400", "422")


def format_memory_key(settings: Settings, model: str) -> str:
    """The Redis key remembering which response_format kind works for this endpoint and model."""
    endpoint = settings.openai_base_url or llm.OPENAI_DEFAULT_BASE_URL
    digest = hashlib.sha256(f"{endpoint}\n{model}".encode()).hexdigest()[:24]
    return f"{settings.queue_prefix}:response-format:{digest}"


def remembered_kind(redis: Redis | None, key: str) -> str | None:
    """The kind that worked last time for this key (None: unknown, or Redis unreachable)."""
    if redis is None:
        return None
    try:
        value = redis.get(key)
    except RedisError as exc:
        log.warning("structured: could not read the remembered response_format: %s", exc)
        return None
    kind = value.decode() if isinstance(value, bytes) else value
    return kind if kind in FORMAT_KINDS else None


def remember_kind(redis: Redis | None, key: str, kind: str) -> None:
    """Remember that `kind` worked (best effort: without Redis the next call probes again)."""
    if redis is None:
        return
    try:
        redis.set(key, kind, ex=FORMAT_MEMORY_TTL)
    except RedisError as exc:
        log.warning("structured: could not remember the response_format: %s", exc)


def response_format(kind: str, name: str, schema: dict[str, Any]) -> dict[str, Any] | None:
    """The `response_format` request field for one kind (None: instructions only)."""
    if kind == JSON_SCHEMA:
        return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": schema}}
    if kind == JSON_OBJECT:
        return {"type": "json_object"}
    return None


def refused_format(exc: PermanentError) -> bool:
    """True when an error reads like the server refusing the request's shape (not the key, not a 5xx)."""
    return exc.code in REFUSAL_STATUSES


def complete_json(
    settings: Settings,
    *,
    model: str,
    messages: list[dict[str, Any]],
    name: str,
    schema: dict[str, Any],
    redis: Redis | None = None,
    agent_id: str | None = None,
    max_tokens: int | None = None,
) -> llm.Completion:
    """Ask for one JSON object fitting `schema` the strongest way the endpoint accepts (see module doc).

    Raises what llm.complete raises; a refusal (400/422) moves on to the next kind, and the kind
    that answered is remembered. The caller still parses the text leniently: with instructions
    only, the model may wrap its JSON in prose.
    """
    key = format_memory_key(settings, model)
    start = remembered_kind(redis, key) or JSON_SCHEMA
    kinds = FORMAT_KINDS[FORMAT_KINDS.index(start) :]
    for index, kind in enumerate(kinds):
        try:
            completion = llm.complete(
                settings,
                model=model,
                messages=messages,
                response_format=response_format(kind, name, schema),
                max_tokens=max_tokens,
                agent_id=agent_id,
            )
        except PermanentError as exc:
            if kind == INSTRUCTIONS_ONLY or not refused_format(exc):
                raise
            log.info(
                "structured: %s refused response_format %s (%s); trying %s",
                model,
                kind,
                exc.reason,
                kinds[index + 1],
            )
            continue
        if kind != start or remembered_kind(redis, key) is None:
            remember_kind(redis, key, kind)
        return completion
    raise AssertionError("unreachable: the instructions-only attempt returns or raises")


@dataclass(frozen=True)
class JsonAnswer:
    """One kind of structured answer a background job asks for: its name, JSON Schema and length cap."""

    name: str
    schema: dict[str, Any]
    max_tokens: int


def model_for(agent: Agent, settings: Settings) -> str:
    """The model the agent talks with (its background jobs use the same one)."""
    return agent.model or settings.openai_model


def complete_json_counted(
    settings: Settings,
    agent: Agent,
    answer: JsonAnswer,
    messages: list[dict[str, Any]],
    *,
    model: str | None = None,
) -> llm.Completion:
    """`complete_json` for a background job of an agent (summary, profile, analysis), its answer
    capped at `answer.max_tokens`, with the agent's model unless `model` is given: the kind that
    worked is remembered in Redis, and the call counts against the agent's and the gateway's daily
    budgets.

    Its estimated size is reserved first (spend.reserve: raises spend.OverBudget, and no model
    call is made, when it does not fit); the answer's tokens replace the reservation, a failure
    releases it. The attempts a server refuses (400/422) answer nothing and share the reservation.
    """
    reservation = spend.reserve(settings, agent, spend.estimate_tokens(messages, None, answer.max_tokens))
    return reservation.spend_on(
        lambda: complete_json(
            settings,
            model=model or model_for(agent, settings),
            messages=messages,
            name=answer.name,
            schema=answer.schema,
            redis=redis_for(settings),
            agent_id=agent.agent_id,
            max_tokens=answer.max_tokens,
        )
    )


def nullable(kind: str, **extra: Any) -> dict[str, Any]:
    """A JSON Schema for a value of type `kind` or null (strict mode wants every key present)."""
    return {"type": [kind, "null"], **extra}


def strict_object(properties: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A strict-mode object schema: every property required, no others."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }
