"""Where the model is called: one cached OpenAI client per process, errors sorted once."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import openai
from openai import OpenAI

from gateway import metrics
from gateway.clients import ClientCache
from gateway.config import Settings
from gateway.errors import GatewayError, PermanentError, TransientError, http_status_is_transient

log = logging.getLogger(__name__)

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
OFFLINE_LABEL = "[offline responder — no model configured]"

_clients: ClientCache[OpenAI] = ClientCache()


@dataclass(frozen=True)
class ToolCall:
    """One function call the model asked for (OpenAI's `tool_calls` item); `arguments` is its JSON text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Completion:
    """The model's answer and what it cost; `tool_calls` when it asked for tools instead (or too)."""

    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tool_calls: tuple[ToolCall, ...] = ()


def model_client(settings: Settings) -> OpenAI:
    """The process's OpenAI client for these settings (thread-safe, built once)."""
    key = (settings.openai_base_url, settings.openai_api_key, settings.model_timeout)
    return _clients.get(
        key,
        lambda: OpenAI(
            base_url=settings.openai_base_url or OPENAI_DEFAULT_BASE_URL,
            # Local servers (Ollama, llama.cpp) take any key; the client insists on one.
            api_key=settings.openai_api_key or "not-needed",
            timeout=settings.model_timeout,
            max_retries=0,  # retries are RQ's (or the API's), with the agent's backoff
        ),
    )


def complete(
    settings: Settings,
    *,
    model: str,
    messages: list[dict[str, Any]],
    temperature: float | None = None,
    max_tokens: int | None = None,
    response_format: dict[str, Any] | None = None,
    tools: list[dict[str, Any]] | None = None,
    tool_choice: str = "auto",
    agent_id: str | None = None,
) -> Completion:
    """Ask the model for the next turn (at most `max_tokens` long); raise TransientError or PermanentError.

    `response_format` is passed as is (OpenAI's `{"type": "json_schema", ...}` or `json_object`);
    gateway/agent/structured.py decides which one an endpoint gets. With `tools` (OpenAI's function
    specs; gateway/agent/tools.py runs them) the answer may be `tool_calls` with no text.
    `agent_id` labels the metrics.
    """
    if not settings.model_configured:
        return offline_completion(messages)
    kwargs: dict[str, Any] = {"model": model, "messages": messages}
    if response_format is not None:
        kwargs["response_format"] = response_format
    if tools:
        kwargs["tools"] = tools
        kwargs["tool_choice"] = tool_choice
    labels = {"agent": agent_id or "", "model": model}
    if temperature is not None:
        kwargs["temperature"] = temperature
    if max_tokens is not None and max_tokens > 0:
        # `max_tokens`, not `max_completion_tokens`: the one every OpenAI-compatible server reads.
        kwargs["max_tokens"] = max_tokens
    started = time.perf_counter()
    try:
        response = model_client(settings).chat.completions.create(**kwargs)
    except openai.OpenAIError as exc:
        error = classify_openai_error(exc)
        error.endpoint = (
            f"{(settings.openai_base_url or OPENAI_DEFAULT_BASE_URL).rstrip('/')}/chat/completions"
        )
        metrics.count("model_calls", outcome=str(error.code or "error"), **labels)
        raise error from exc
    finally:
        metrics.observe("model_call_seconds", time.perf_counter() - started, **labels)
    usage = response.usage
    metrics.count("model_calls", outcome="ok", **labels)
    metrics.count("model_tokens", getattr(usage, "prompt_tokens", None) or 0, kind="prompt", **labels)
    metrics.count("model_tokens", getattr(usage, "completion_tokens", None) or 0, kind="completion", **labels)
    if not response.choices:
        raise TransientError("The model returned no answer.", "empty_response")
    message = response.choices[0].message
    text = (message.content or "").strip()
    calls = tuple(
        ToolCall(id=call.id, name=call.function.name, arguments=call.function.arguments or "")
        for call in (message.tool_calls or [])
        if getattr(call, "function", None) is not None
    )
    if not text and not calls:
        raise TransientError("The model returned an empty answer.", "empty_response")
    return Completion(
        text=text,
        prompt_tokens=getattr(usage, "prompt_tokens", None),
        completion_tokens=getattr(usage, "completion_tokens", None),
        tool_calls=calls,
    )


def classify_openai_error(exc: BaseException) -> GatewayError:
    """Sort an openai client exception into retry (timeouts, 408/409/429/5xx) or give up."""
    if isinstance(exc, openai.APITimeoutError):
        return TransientError("The model did not answer in time.", "timeout")
    if isinstance(exc, openai.APIConnectionError):
        return TransientError(f"Could not reach the model: {exc}", "connection_error")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        detail = _detail(exc)
        if status == 401:
            return PermanentError(f"The model provider refused the API key (401): {detail}", status)
        if status == 404:
            return PermanentError(f"The model or endpoint was not found (404): {detail}", status)
        if http_status_is_transient(status):
            return TransientError(f"The model provider answered {status}: {detail}", status)
        return PermanentError(f"The model provider refused the request ({status}): {detail}", status)
    if isinstance(exc, openai.APIResponseValidationError):
        return TransientError(f"The model's answer could not be read: {exc}", "bad_response")
    return PermanentError(f"The model call failed: {exc}", type(exc).__name__)


def _detail(exc: openai.APIStatusError) -> str:
    """The provider's own error message, short."""
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:300]
    return str(exc.message)[:300]


def offline_completion(messages: list[dict[str, Any]]) -> Completion:
    """A clearly labelled echo, so the gateway works end to end with no model account."""
    last = ""
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            last = content if isinstance(content, str) else _text_of(content)
            break
    return Completion(text=f"{OFFLINE_LABEL} You said: {last.strip() or '(nothing)'}")


def _text_of(content: Any) -> str:
    """The text parts of a multi-part message content."""
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")
