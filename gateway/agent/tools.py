"""Agent tools: the business's own functions the model may call, and the built-ins end_chat and
handoff_to_human.

An agent's `tools` (a JSON list; `Tool` below declares the shape once for the API and this module):

    {"type": "function", "name": "lookup_order", "description": "...",
     "parameters": {<JSON Schema of the arguments, an object>},
     "url": "https://erp.example.com/tools/lookup", "timeout_ms": 5000}
    {"type": "end_chat"}            # the model may end the chat with a closing text
    {"type": "handoff_to_human"}    # the model may hand the chat to a human operator

`run()` is the tool-call loop around ONE model call, the caller's (gateway/conversations/
answering.py `answer_with_tools` passes its `ask`, so a turn keeps its budget and retry rules).
It offers the tools (OpenAI's `tools`, `tool_choice: "auto"`); for each function the model calls,
it POSTs

    {"tool": "lookup_order", "arguments": {...}, "chat": {"chat_id", "agent_id", "metadata",
     "dynamic_variables"}}

to the tool's URL through gateway/safe_http.py (no private, loopback or link-local address unless
ALLOW_PRIVATE_URLS=1; DNS resolved once and the vetted address connected to; the answer read up to
TOOL_ANSWER_MAX_BYTES), signed like the event webhooks (`X-Smsgw-Signature`, gateway/events.py
`sign`) with the agent's `webhook_secret`, else EVENTS_WEBHOOK_SECRET (never unsigned: with
neither, the call is not made and counts as refused), and gives the answer back to the model as
a `tool` message. A tool that fails, times out or is refused is reported to the model as
`{"error": "..."}`, never raised. The loop ends when the model answers in text; after MAX_ROUNDS
rounds of tool calls the model is asked once more with `tool_choice: "none"`, so it must answer
with what it has.

A built-in call ends the loop at once: `end_chat` (argument `closing_text`, the reply) or
`handoff_to_human` (the model's text or the `message` argument is the reply, if any). The caller
(gateway/conversations/tool_actions.py) does what they ask after the reply is stored and sent.

Every round's tokens are summed in the returned completion (the caller's model call records each
in the spend counters); each tool call is counted in `smsgw_tool_calls_total`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter
from pydantic_core import PydanticCustomError

from gateway import metrics, safe_http
from gateway.agent import llm
from gateway.agent.text import SPACE
from gateway.config import Settings
from gateway.errors import GatewayError, TransientError, http_status_is_transient
from gateway.events import SIGNATURE_HEADER, sign, signing_secret
from gateway.storage.models import Agent, Chat

log = logging.getLogger(__name__)

END_CHAT = "end_chat"
HANDOFF = "handoff_to_human"
BUILT_INS = (END_CHAT, HANDOFF)
TOOL_TYPES = ("function", *BUILT_INS)  # the `type` of a tool
# OpenAI's rule for function names.
TOOL_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
MAX_TOOLS = 20
MAX_ROUNDS = 5  # rounds of tool calls in one turn; then the model must answer in text
MAX_CALLS_PER_ROUND = 10  # tool calls of one model answer that are run; the rest get an error
# The tool calls of one turn share this many seconds (each within its own timeout_ms), so a turn
# stays well inside the reply job's timeout and the API caller's patience.
TURN_TOOL_SECONDS = 60.0
DEFAULT_TIMEOUT_MS = 10_000
MAX_TIMEOUT_MS = 30_000
TOOL_ANSWER_MAX_BYTES = 16 * 1024  # of a tool's answer read and given to the model
PARAMETERS_MAX_CHARS = 20_000  # of one tool's JSON Schema

BUILT_IN_SPECS: dict[str, dict[str, Any]] = {
    END_CHAT: {
        "description": "End the conversation, when it is over or the person asks to stop. The closing text "
        "is sent to the person as your last message.",
        "parameters": {
            "type": "object",
            "properties": {
                "closing_text": {"type": "string", "description": "Your last message to the person."}
            },
            "required": ["closing_text"],
        },
    },
    HANDOFF: {
        "description": "Hand the conversation to a human colleague, when the person asks for one or you "
        "cannot help. You stop answering; a person takes over.",
        "parameters": {
            "type": "object",
            "properties": {
                "reason": {"type": "string", "description": "Why, for the colleague."},
                "message": {"type": "string", "description": "What to tell the person meanwhile (optional)."},
            },
        },
    },
}


# --- the shape of `tools` -------------------------------------------------------------------------


def _schema_object(value: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema of an object (what OpenAI takes as a function's parameters), not too large."""
    if value.get("type") != "object":
        raise PydanticCustomError("schema", 'parameters must be a JSON Schema with "type": "object"')
    if len(json.dumps(value)) > PARAMETERS_MAX_CHARS:
        raise PydanticCustomError(
            "schema", "parameters is longer than {n} characters", {"n": PARAMETERS_MAX_CHARS}
        )
    return value


def _tool_url(value: str) -> str:
    """An http(s) URL without credentials (safe_http's shape check; addresses are checked per call)."""
    try:
        safe_http.check_url_shape(value)
    except safe_http.UnsafeURL as exc:
        raise PydanticCustomError("url", "{reason}", {"reason": exc.reason}) from None
    return value


def _not_built_in(name: str) -> str:
    """Function tools may not take a built-in's name."""
    if name in BUILT_INS:
        raise PydanticCustomError(
            "reserved", "{name} is a built-in tool: list it by its type alone", {"name": name}
        )
    return name


# An http(s) URL with a host (not empty, not a bare :port, no ? or # before it) and no credentials,
# so what check_url_shape refuses the document refuses too (but for what urllib cannot parse);
# whitespace spelled out so pydantic and the OpenAPI document agree (see gateway.agent.text.SPACE).
# Agent webhook URLs take the same.
HTTP_URL_PATTERN = f"^https?://[^{SPACE}/?#@:][^{SPACE}/?#@]*(/[^{SPACE}]*)?$"


class FunctionTool(BaseModel):
    """A function of the business's own that the model may call; the gateway POSTs to its URL."""

    model_config = ConfigDict(strict=True, extra="forbid")

    type: Literal["function"]
    name: Annotated[
        str,
        Field(
            pattern=TOOL_NAME_PATTERN,
            description="Letters, digits, _ and - (1-64), unique in the list; not a built-in's name.",
            json_schema_extra={"not": {"enum": list(BUILT_INS)}},  # what _not_built_in checks
        ),
        AfterValidator(_not_built_in),
    ]
    description: Annotated[str, Field(max_length=2000, description="What it does, for the model.")] = ""
    parameters: Annotated[
        dict[str, Any],
        Field(
            description='The JSON Schema of its arguments ("type": "object").',
            # What _schema_object checks, but for its length once serialized (no JSON Schema word for it).
            json_schema_extra={"properties": {"type": {"const": "object"}}, "required": ["type"]},
        ),
        AfterValidator(_schema_object),
    ] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    url: Annotated[
        str,
        Field(
            max_length=2000,
            pattern=HTTP_URL_PATTERN,
            description="Where the call is POSTed, signed. Private, loopback and link-local addresses are "
            "refused at call time unless ALLOW_PRIVATE_URLS=1.",
        ),
        AfterValidator(_tool_url),
    ]
    timeout_ms: Annotated[
        int,
        Field(
            ge=100,
            le=MAX_TIMEOUT_MS,
            description="How long one call may take; then the model is told it timed out.",
        ),
        BeforeValidator(lambda v: int(v) if isinstance(v, float) and v.is_integer() else v),  # 8.0 is 8
    ] = DEFAULT_TIMEOUT_MS


class EndChatTool(BaseModel):
    """The built-in `end_chat`: the model ends the chat with a closing text."""

    model_config = ConfigDict(strict=True, extra="forbid")

    type: Literal["end_chat"]


class HandoffTool(BaseModel):
    """The built-in `handoff_to_human`: the model hands the chat to a human operator."""

    model_config = ConfigDict(strict=True, extra="forbid")

    type: Literal["handoff_to_human"]


Tool = Annotated[FunctionTool | EndChatTool | HandoffTool, Field(discriminator="type")]


def tool_name(tool: FunctionTool | EndChatTool | HandoffTool) -> str:
    """The name the model calls a tool by."""
    return tool.name if isinstance(tool, FunctionTool) else tool.type


def _unique_names(tools: list[Any]) -> list[Any]:
    """No tool name (nor built-in) twice."""
    seen: set[str] = set()
    for tool in tools:
        name = tool_name(tool)
        if name in seen:
            raise PydanticCustomError("unique", "tool '{name}' is listed twice", {"name": name})
        seen.add(name)
    return tools


Tools = Annotated[
    list[Tool],
    Field(
        max_length=MAX_TOOLS,
        description="Functions the model may call (POSTed to their URL, signed like the event webhooks) and "
        'the built-ins {"type": "end_chat"} and {"type": "handoff_to_human"}. Names are unique.',
        json_schema_extra={"uniqueItems": True},  # names unique is more than this; see _unique_names
    ),
    AfterValidator(_unique_names),
]
_TOOLS_ADAPTER: TypeAdapter[list[Any]] = TypeAdapter(Tools)


def agent_tools(agent: Agent) -> list[FunctionTool | EndChatTool | HandoffTool]:
    """The usable tools of an agent (lenient: a stored entry that no longer validates is skipped)."""
    tools = []
    for item in agent.tools or []:
        try:
            tools.extend(_TOOLS_ADAPTER.validate_python([item]))
        except ValueError as exc:
            log.warning("tools: agent %s: skipping a tool: %s", agent.agent_id, exc)
    return tools


def specs(tools: list[Any]) -> list[dict[str, Any]]:
    """The tools as OpenAI's `tools` parameter."""
    out = []
    for tool in tools:
        if isinstance(tool, FunctionTool):
            function = {"name": tool.name, "description": tool.description, "parameters": tool.parameters}
        else:
            function = {"name": tool.type, **BUILT_IN_SPECS[tool.type]}
        out.append({"type": "function", "function": function})
    return out


# --- the loop ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatRef:
    """What a tool is told about the chat (read once, so no database connection is held meanwhile)."""

    chat_id: str
    agent_id: str
    metadata: dict[str, Any]
    dynamic_variables: dict[str, Any]

    @classmethod
    def of(cls, chat: Chat) -> ChatRef:
        """The reference of a chat row."""
        return cls(chat.chat_id, chat.agent_id, dict(chat.metadata or {}), dict(chat.dynamic_variables or {}))


@dataclass
class ToolRun:
    """A turn's outcome: the final answer (tokens of every round summed), the calls made, and the
    built-in the model called (`end_chat`, `handoff_to_human`) or None."""

    completion: llm.Completion
    calls: list[dict[str, Any]] = field(default_factory=list)
    action: str | None = None


# call(messages, tools, tool_choice) -> the model's answer; the caller's one model call.
ModelCall = Callable[[list[dict[str, Any]], list[dict[str, Any]] | None, str], llm.Completion]


def run(
    settings: Settings,
    agent: Agent,
    chat: ChatRef | None,
    messages: list[dict[str, Any]],
    call: ModelCall,
) -> ToolRun:
    """The model's answer to `messages`, running the tools it calls on the way (see the module doc).

    `call` is the caller's one model call (gateway/conversations/answering.py `ask`, which counts
    each round's tokens). Without tools (or without a chat to tell them about) it is one call.
    Raises what the model call raises; tools never raise.
    """
    tools = agent_tools(agent) if chat is not None and settings.model_configured else []
    if not tools:
        return ToolRun(call(messages, None, "auto"))
    offered = specs(tools)
    by_name = {tool_name(t): t for t in tools}
    messages = list(messages)
    records: list[dict[str, Any]] = []
    prompt_tokens = completion_tokens = 0
    deadline = time.monotonic() + TURN_TOOL_SECONDS
    for round_number in range(1, MAX_ROUNDS + 2):
        last = round_number > MAX_ROUNDS
        completion = call(messages, offered, "none" if last else "auto")
        prompt_tokens += completion.prompt_tokens or 0
        completion_tokens += completion.completion_tokens or 0
        if not completion.tool_calls or last:
            if not completion.text:
                raise TransientError(
                    "The model answered with no text after its tool calls.", "empty_response"
                )
            return ToolRun(_summed(completion, completion.text, prompt_tokens, completion_tokens), records)
        messages.append(assistant_message(completion))
        action, reply = None, completion.text
        for index, tool_call in enumerate(completion.tool_calls):
            left = deadline - time.monotonic()
            record = _run_one(settings, agent, chat, by_name, tool_call, round_number, index, left)
            records.append(record)
            messages.append({"role": "tool", "tool_call_id": tool_call.id, "content": record["result"]})
            if record["name"] in BUILT_INS and record["outcome"] == "ok" and action is None:
                action = record["name"]
                reply = _built_in_reply(action, record["arguments"], completion.text)
        if action is not None:
            return ToolRun(_summed(completion, reply, prompt_tokens, completion_tokens), records, action)
    raise AssertionError("unreachable: the last round returns")


def requested_action(calls: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """The built-in call (its record) among a turn's stored tool calls, if any: what the caller does."""
    for record in calls or []:
        if isinstance(record, dict) and record.get("name") in BUILT_INS and record.get("outcome") == "ok":
            return record
    return None


def assistant_message(completion: llm.Completion) -> dict[str, Any]:
    """The model's tool-calling answer as the assistant message a follow-up request carries."""
    return {
        "role": "assistant",
        "content": completion.text or None,
        "tool_calls": [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in completion.tool_calls
        ],
    }


def _summed(
    completion: llm.Completion, text: str, prompt_tokens: int, completion_tokens: int
) -> llm.Completion:
    """The final answer with every round's tokens."""
    return llm.Completion(
        text=text,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        tool_calls=completion.tool_calls,
    )


def _built_in_reply(action: str, arguments: Any, text: str) -> str:
    """What the person gets when the model calls a built-in: its closing text, or its words if any."""
    arguments = arguments if isinstance(arguments, dict) else {}
    if action == END_CHAT:
        closing = arguments.get("closing_text")
        return (closing.strip() if isinstance(closing, str) and closing.strip() else "") or text
    message = arguments.get("message")
    return text or (message.strip() if isinstance(message, str) else "")


def _run_one(
    settings: Settings,
    agent: Agent,
    chat: ChatRef,
    by_name: dict[str, Any],
    tool_call: llm.ToolCall,
    round_number: int,
    index: int,
    seconds_left: float,
) -> dict[str, Any]:
    """Run one tool call within `seconds_left`; its record (`result` is what the model is told).

    Never raises."""
    record: dict[str, Any] = {
        "id": tool_call.id,
        "name": tool_call.name,
        "arguments": tool_call.arguments,
        "round": round_number,
        "status_code": None,
        "duration_ms": 0,
    }
    started = time.perf_counter()
    tool = by_name.get(tool_call.name)
    try:
        arguments = json.loads(tool_call.arguments or "{}")
    except ValueError:
        arguments = None
    if tool is None:
        outcome, result = "unknown_tool", _error(f"There is no tool named {tool_call.name!r}.")
    elif index >= MAX_CALLS_PER_ROUND:
        outcome, result = "refused", _error(f"At most {MAX_CALLS_PER_ROUND} tool calls are run at once.")
    elif not isinstance(arguments, dict):
        outcome, result = "bad_arguments", _error("The arguments are not a JSON object.")
    elif isinstance(tool, FunctionTool) and seconds_left < 0.1:
        record["arguments"] = arguments
        outcome = "timeout"
        result = _error(
            f"This turn's time for tools ({TURN_TOOL_SECONDS:g} s) is used up; answer without it."
        )
    elif isinstance(tool, FunctionTool):
        record["arguments"] = arguments
        timeout = min(tool.timeout_ms / 1000, seconds_left)
        outcome, result, record["status_code"] = _call_function(
            settings, agent, chat, tool, arguments, timeout
        )
    else:
        record["arguments"] = arguments
        outcome = "ok"
        done = "The chat is ending." if tool.type == END_CHAT else "A human colleague takes over now."
        result = json.dumps({"ok": True, "done": done})
    record["outcome"], record["result"] = outcome, result
    record["duration_ms"] = round((time.perf_counter() - started) * 1000)
    # A name the model made up is not a label value: it would grow the metric without bound.
    label = tool_call.name if tool is not None else "(unknown)"
    metrics.count("tool_calls", agent=agent.agent_id, tool=label, outcome=outcome)
    log.info(
        "tools: chat %s called %s: %s (%d ms)",
        chat.chat_id,
        tool_call.name[:64],
        outcome,
        record["duration_ms"],
    )
    return record


def _error(reason: str) -> str:
    """A failure as the model reads it."""
    return json.dumps({"error": reason})


def _call_function(
    settings: Settings,
    agent: Agent,
    chat: ChatRef,
    tool: FunctionTool,
    arguments: dict[str, Any],
    timeout: float,
) -> tuple[str, str, int | None]:
    """POST one call to the tool's URL, the whole call (lookup, connect, answer read) within `timeout`
    s; (outcome, what the model is told, HTTP status)."""
    body = json.dumps(
        {
            "tool": tool.name,
            "arguments": arguments,
            "chat": {
                "chat_id": chat.chat_id,
                "agent_id": chat.agent_id,
                "metadata": chat.metadata,
                "dynamic_variables": chat.dynamic_variables,
            },
        },
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()
    secret = signing_secret(agent, settings)
    if not secret:  # every call is signed; an agent stored before that rule has none to sign with
        return (
            "refused",
            _error("The tool was not called: the gateway has no secret to sign the call with."),
            None,
        )
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "smsgw-tools/1",
        SIGNATURE_HEADER: sign(secret, body),
    }
    try:
        answer = safe_http.post(
            tool.url,
            body,
            headers=headers,
            timeout=timeout,
            allow_private=settings.allow_private_urls,
            max_bytes=TOOL_ANSWER_MAX_BYTES,
        )
    except safe_http.UnsafeURL as exc:
        return "refused", _error(f"The tool's URL is not allowed: {exc.reason}"), None
    except GatewayError as exc:
        outcome = "timeout" if exc.code == "timeout" else "failed"
        return outcome, _error(f"The tool could not be reached: {exc.reason}"), None
    text = answer.body.decode("utf-8", errors="replace").strip()
    if answer.truncated:
        text += f" [answer cut at {TOOL_ANSWER_MAX_BYTES} bytes]"
    if not 200 <= answer.status < 300:
        kind = "may pass" if http_status_is_transient(answer.status) else "refused the call"
        return (
            "error",
            _error(f"The tool answered HTTP {answer.status} ({kind}): {text[:500]}"),
            answer.status,
        )
    return "ok", text or json.dumps({"ok": True}), answer.status
