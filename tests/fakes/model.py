"""A loopback fake of an OpenAI-compatible chat completions API.

Point the real client at it: ``OpenAI(base_url=fake.url + "/v1", api_key="sk-test")``.
Serves POST /v1/chat/completions (no streaming: ``stream: true`` gets a 400) and GET /v1/models.
Tool calls are scripted with ``queue_tool_calls``: the answer is shaped like OpenAI's
(``finish_reason: "tool_calls"``, ``message.tool_calls[{id, type: "function", function: {name,
arguments}}]`` with the arguments as a JSON string), and ``tool_results(request)`` reads the
``tool`` messages a follow-up request carries.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tests.fakes.http import LoopbackServer, Request, Response

# OpenAI's error JSON per status, so the client raises the same exception classes it would in life.
DEFAULT_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to use this model.", "invalid_request_error", "model_not_available"),
    404: (
        "The model does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
    ),
    429: ("Rate limit reached for requests. Please try again in 1s.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request. Sorry about that!", "server_error", None),
    502: ("Bad gateway.", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
}


def error_body(status: int, message: str | None = None) -> dict[str, Any]:
    """OpenAI's error JSON for an HTTP status: {"error": {"message", "type", "param", "code"}}."""
    default_message, kind, code = DEFAULT_ERRORS.get(status, ("Request failed.", "server_error", None))
    return {"error": {"message": message or default_message, "type": kind, "param": None, "code": code}}


def content_text(content: Any) -> str:
    """A message's content as text: a string as is, a list of parts as its text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def count_tokens(text: str) -> int:
    """The fake's deterministic token count: whitespace-separated words."""
    return len(text.split())


def last_user_text(request_json: dict[str, Any]) -> str:
    """Text of the newest user message in a chat completions request ('' when there is none)."""
    for message in reversed(request_json.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def echo(request_json: dict[str, Any]) -> str:
    """The default reply: 'Echo: <last user message>'."""
    return f"Echo: {last_user_text(request_json)}"


def tool_results(request_json: dict[str, Any]) -> dict[str, str]:
    """The `tool` messages of a request: {tool_call_id: content}."""
    return {
        m.get("tool_call_id"): content_text(m.get("content"))
        for m in request_json.get("messages") or []
        if isinstance(m, dict) and m.get("role") == "tool"
    }


@dataclass
class ToolCallsReply:
    """A scripted answer asking for tools: [(name, arguments dict or raw JSON text)], optional text."""

    calls: list[tuple[str, Any]]
    content: str | None = None


@dataclass
class _Failure:
    """A scripted error answer."""

    status: int
    body: bytes
    content_type: str
    times: int


class FakeModel(LoopbackServer):
    """Loopback fake of OpenAI's chat completions: records requests, scripted replies, errors, latency."""

    def __init__(self, api_key: str | None = None, model: str = "fake-model") -> None:
        """When `api_key` is given, requests must carry it as a Bearer token (401 otherwise)."""
        super().__init__()
        self.api_key = api_key
        self.model = model
        self.requests: list[dict[str, Any]] = []  # every parsed request body, failed ones included
        self.latency: float = 0.0  # seconds slept before answering each request
        self.responder: Callable[[dict[str, Any]], str] | None = None
        self.in_flight = 0  # requests being answered right now
        self.max_in_flight = 0  # the most that were ever answered at once (shows concurrency)
        # The response_format kinds accepted ("json_schema", "json_object"); None accepts every kind.
        # Others get the 400 a server without them answers (llama.cpp, older vLLM, some proxies).
        self.accepted_formats: set[str] | None = None
        self._fixed_reply: str | None = None
        self._queued: deque[str | ToolCallsReply] = deque()
        self._failures: deque[_Failure] = deque()
        self._cond = threading.Condition()
        # Random faults (fault tests): this share of requests fails with a 5xx, or hangs for
        # `fault_hang` seconds (past the client's timeout) before a 504.
        self.fault_rate = 0.0
        self.fault_hang = 2.0
        self.faults_injected = 0
        self._rng = random.Random(8)

    # --- scripting -------------------------------------------------------------------------------

    def reply_with(self, text: str | None) -> None:
        """Answer every request with `text` (None: back to the responder / echo)."""
        with self._cond:
            self._fixed_reply = text

    def queue_replies(self, replies: Iterable[str]) -> None:
        """Answer the next requests with these texts, in order, then fall back to the usual reply."""
        with self._cond:
            self._queued.extend(replies)

    def queue_tool_calls(self, *calls: tuple[str, Any], content: str | None = None) -> None:
        """Answer the next request that offers tools by calling these tools (name, arguments) at once."""
        with self._cond:
            self._queued.append(ToolCallsReply(list(calls), content))

    def fail_next(
        self, status: int = 500, times: int = 1, body: dict[str, Any] | str | bytes | None = None
    ) -> None:
        """Answer the next `times` requests with HTTP `status` and OpenAI's error JSON (or `body`)."""
        if body is None or isinstance(body, dict):
            raw, content_type = Response.json(status, body or error_body(status)).body, "application/json"
        else:
            # A raw body imitates a proxy's HTML or text error page.
            raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
            content_type = "text/plain; charset=utf-8"
        with self._cond:
            self._failures.append(_Failure(status, raw, content_type, times))

    def reset(self) -> None:
        """Forget requests and every script: replies, responder, failures, latency."""
        with self._cond:
            self.requests.clear()
            self.responder = None
            self.latency = 0.0
            self.accepted_formats = None
            self._fixed_reply = None
            self._queued.clear()
            self._failures.clear()
            self.max_in_flight = self.in_flight
            self.fault_rate = 0.0

    # --- inspection ------------------------------------------------------------------------------

    def wait_for_requests(self, n: int, timeout: float = 10) -> list[dict[str, Any]]:
        """Block until at least `n` requests arrived; returns them (AssertionError on timeout)."""
        with self._cond:
            self.wait_until(self._cond, lambda: len(self.requests) >= n, timeout, f"{n} model requests")
            return list(self.requests)

    # --- HTTP ------------------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        """Route one request the way an OpenAI-compatible server would."""
        path = request.path.rstrip("/")
        if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return Response.json(401, error_body(401))
        if path == "/v1/models" and request.method == "GET":
            return Response.json(
                200,
                {
                    "object": "list",
                    "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "fake"}],
                },
            )
        if path != "/v1/chat/completions":
            return Response.json(404, error_body(404, f"Unknown path {request.path}"))
        if request.method != "POST":
            return Response.json(405, error_body(405, "Method not allowed"))
        return self._chat_completion(request)

    def _chat_completion(self, request: Request) -> Response:
        try:
            body = request.json()
        except ValueError:
            return Response.json(400, error_body(400, "We could not parse the JSON body of your request."))
        if not isinstance(body, dict):
            return Response.json(400, error_body(400, "The body must be a JSON object."))
        with self._cond:
            self.requests.append(body)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self._cond.notify_all()
        try:
            self.sleep(self.latency)
            return self._answer(body)
        finally:
            with self._cond:
                self.in_flight -= 1

    def inject_faults(self, rate: float, hang: float = 2.0, seed: int = 8) -> None:
        """Fail this share of requests at random: 500/502/503, or a hang of `hang` s (a timeout)."""
        with self._cond:
            self.fault_rate, self.fault_hang, self._rng = rate, hang, random.Random(seed)

    def _random_fault(self) -> Response | None:
        with self._cond:
            if self.fault_rate <= 0 or self._rng.random() >= self.fault_rate:
                return None
            self.faults_injected += 1
            kind = self._rng.choice((500, 502, 503, "hang"))
        if kind == "hang":
            self.sleep(self.fault_hang)
            kind = 504
        return Response.json(kind, error_body(kind))

    def _answer(self, body: dict[str, Any]) -> Response:
        failure = self._take_failure()
        if failure is not None:
            return Response(failure.status, failure.body, failure.content_type)
        fault = self._random_fault()
        if fault is not None:
            return fault
        if body.get("stream"):
            return Response.json(400, error_body(400, "This fake does not support stream=true."))
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return Response.json(400, error_body(400, "'messages' must be a non-empty array."))
        refusal = self._refuse_format(body.get("response_format"))
        if refusal is not None:
            return refusal
        reply = self._reply_for(body)
        prompt_tokens = sum(
            count_tokens(content_text(m.get("content"))) for m in body["messages"] if isinstance(m, dict)
        )
        message: dict[str, Any] = {"role": "assistant", "content": reply, "refusal": None, "annotations": []}
        if isinstance(reply, ToolCallsReply):
            message["content"] = reply.content
            message["tool_calls"] = [
                {
                    "id": "call_" + uuid.uuid4().hex[:24],
                    "type": "function",
                    "function": {
                        "name": name,
                        "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
                    },
                }
                for name, arguments in reply.calls
            ]
        completion_tokens = count_tokens(message["content"] or "") + sum(
            count_tokens(c["function"]["name"] + " " + c["function"]["arguments"])
            for c in message.get("tool_calls", [])
        )
        return Response.json(
            200,
            {
                "id": "chatcmpl-" + uuid.uuid4().hex[:24],
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model") or self.model,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": "tool_calls" if "tool_calls" in message else "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
                "service_tier": "default",
                "system_fingerprint": "fp_fake",
            },
        )

    def _refuse_format(self, response_format: Any) -> Response | None:
        """A 400 for a response_format this fake is set not to accept (None: accepted)."""
        if response_format is None or self.accepted_formats is None:
            return None
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind in self.accepted_formats or kind == "text":
            return None
        return Response.json(
            400,
            {
                "error": {
                    "message": f"Invalid parameter: 'response_format' of type '{kind}' is not supported.",
                    "type": "invalid_request_error",
                    "param": "response_format",
                    "code": None,
                }
            },
        )

    def _take_failure(self) -> _Failure | None:
        with self._cond:
            if not self._failures:
                return None
            failure = self._failures[0]
            failure.times -= 1
            if failure.times <= 0:
                self._failures.popleft()
            return failure

    def _reply_for(self, body: dict[str, Any]) -> str | ToolCallsReply:
        """Queued reply first, then the fixed reply, then the responder, then the echo.

        A queued tool-call script answers only a request that offers tools (and does not say
        `tool_choice: "none"`), as a real server would; others get the next text.
        """
        offers_tools = bool(body.get("tools")) and body.get("tool_choice") != "none"
        with self._cond:
            for index, queued in enumerate(self._queued):
                if isinstance(queued, str) or offers_tools:
                    del self._queued[index]
                    return queued
            fixed, responder = self._fixed_reply, self.responder
        if fixed is not None:
            return fixed
        return (responder or echo)(body)
