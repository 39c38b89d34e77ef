"""The /v1 contract: every request body, query string and response of the API as a pydantic model.

These classes are the one place the API's shapes, limits and defaults are written. Request
validation (gateway/api/contract.py) and `GET /v1/openapi.json` (gateway/api/openapi.py) are both
derived from them; a view builds its answer by filling one of the response models.

Conventions (see docs/ARCHITECTURE.md, "Adding an endpoint"):
- Request models derive from `Body` (a JSON object, strict JSON types, unknown fields refused)
  or `Query` (a query string, unknown parameters refused); response models from `Out`.
- A default that the storage layer also has is read from the peewee column (`column_default`),
  so it is written once.
"""

from __future__ import annotations

import math
import re
import zoneinfo
from typing import Annotated, Any, Literal

import phonenumbers
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from gateway.agent.analysis import AnalysisField, AnalysisFields
from gateway.agent.text import SMS_MAX_CHARS, STRIPPED
from gateway.agent.tools import HTTP_URL_PATTERN, Tool, Tools
from gateway.conversations.agents import DEFAULT_AGENT_ID
from gateway.storage import models as rows
from gateway.storage.models import (
    PUBLIC_MESSAGE_STATUSES,
    Channel,
    ChatStatus,
    ChatType,
    MessageKind,
    ReplyState,
    Role,
)

# Public ids travel in URLs: letters, digits, `_` and `-` only, matched in full (no trailing newline).
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# PostgreSQL's INTEGER column; larger numbers would not fit.
MAX_INT = 2**31 - 1
# The longest text of an agent-written message setting (help, fallback, auto-close).
MESSAGE_MAX = 10_000
# Twilio's limit for one SMS body: notices and hints are sent as one message.
SMS_BODY_MAX = SMS_MAX_CHARS
# Chats per page.
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
# Twilio accepts at most 10 media URLs on one message.
MAX_MEDIA = 10


def is_id(value: str) -> bool:
    """True when `value` is a whole public id (a trailing newline is not)."""
    return _ID.fullmatch(value) is not None


def column_default(field: Any) -> Any:
    """The default the storage layer gives a column, so the API documents and applies the same one."""
    return field.default() if callable(field.default) else field.default


# --- field types ------------------------------------------------------------------------------------


def _whole_number(value: Any) -> Any:
    """JSON Schema counts 8.0 as an integer, so the API takes it as 8 (1.5 stays refused)."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


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


def _e164(value: str) -> str:
    """A valid phone number, returned in E.164 form."""
    normalized = normalize_e164(value)
    if normalized is None:
        raise PydanticCustomError(
            "e164", "{value} is not a valid phone number in E.164 form (+14155550123)", {"value": repr(value)}
        )
    return normalized


# "Not blank" as a pattern: a character str.strip() keeps.
NOT_BLANK = f"[^{STRIPPED}]"


def _not_blank(value: str) -> str:
    """Refuse a string of spaces only."""
    if not value.strip():
        raise PydanticCustomError("blank", "must not be blank")
    return value


def _timezone(value: str) -> str:
    """An IANA timezone name this machine knows."""
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise PydanticCustomError(
            "timezone",
            "{value} is not an IANA timezone name such as America/New_York",
            {"value": repr(value)},
        ) from None
    return value


def _http_urls(value: list[str]) -> list[str]:
    """Public http(s) URLs Twilio can fetch."""
    for url in value:
        scheme, _, rest = url.partition("://")
        if scheme not in ("http", "https") or not rest or rest.startswith("/") or len(url) > 2000:
            raise PydanticCustomError("url", "{url} is not an http(s) URL", {"url": repr(url)})
    return value


def integer(ge: int, le: int = MAX_INT) -> Any:
    """A JSON integer from `ge` to `le` (8.0 counts; the bounds come first so the schema shows them)."""
    return Annotated[int, Field(ge=ge, le=le), BeforeValidator(_whole_number)]


Id = Annotated[str, Field(pattern=ID_PATTERN, examples=[DEFAULT_AGENT_ID])]
# What a number's spelling must look like (normalize_e164 checks it, then the numbering plan, which
# no pattern can hold): a `+` first, at most 32 characters.
E164_SHAPE = {"pattern": r"^\+", "maxLength": 32}
E164 = Annotated[
    str,
    AfterValidator(_e164),
    Field(
        description="A phone number in E.164 form, e.g. +14155550123 (other spellings of a valid number "
        "are accepted and stored in E.164 form).",
        examples=["+14155550123"],
        json_schema_extra=E164_SHAPE,
    ),
]


WHATSAPP_PREFIX = "^[Ww][Hh][Aa][Tt][Ss][Aa][Pp][Pp]:"  # `whatsapp:`, in any case


def _without_whatsapp_prefix(value: Any) -> Any:
    """`whatsapp:+1415...` is read as its number: the request's `channel` decides the channel."""
    if isinstance(value, str) and value[:9].lower() == "whatsapp:":
        return value[9:]
    return value


ChannelNumber = Annotated[
    str,
    BeforeValidator(_without_whatsapp_prefix),
    AfterValidator(_e164),
    Field(
        description="A phone number in E.164 form, e.g. +14155550123 (other spellings of a valid number are "
        "accepted; a `whatsapp:` prefix is accepted too, and added by the gateway on `channel` whatsapp).",
        examples=["+14155550123"],
        json_schema_extra={"pattern": f"^({WHATSAPP_PREFIX[1:]})?\\+", "maxLength": 41},
    ),
]
Timestamp = Annotated[
    str,
    Field(
        json_schema_extra={"format": "date-time"}, description="ISO 8601, UTC, e.g. 2025-01-31T12:00:00.000Z"
    ),
]
JsonObject = dict[str, Any]
Variables = Annotated[
    dict[str, Annotated[str, Field(max_length=MESSAGE_MAX)]],
    Field(description="Values for the {{variables}} of the agent's system prompt."),
]
ChatTypeName = Literal[tuple(t.value for t in ChatType)]  # type: ignore[valid-type]
ChannelName = Annotated[
    Literal[tuple(c.value for c in Channel)],  # type: ignore[valid-type]
    Field(description="`sms`, or `whatsapp` (Twilio's `whatsapp:` addresses); API chats say `sms`."),
]
ChatStatusName = Literal[tuple(s.value for s in ChatStatus)]  # type: ignore[valid-type]
MessageStatusName = Literal[PUBLIC_MESSAGE_STATUSES]  # type: ignore[valid-type]
RoleName = Literal[tuple(r.value for r in Role)]  # type: ignore[valid-type]
MessageKindName = Literal[tuple(k.value for k in MessageKind)]  # type: ignore[valid-type]
ReplyStateName = Literal[tuple(r.value for r in ReplyState)]  # type: ignore[valid-type]


def cap(what: str) -> Any:
    """A per-agent spend cap: a positive count, or null for the gateway-wide default from settings."""
    return Annotated[integer(1, MAX_INT) | None, Field(description=f"{what}; null: the gateway's default.")]


def sms_text(description: str) -> Any:
    """A text the gateway sends as one SMS, or null for its built-in text ("" sends none)."""
    return Annotated[str | None, Field(max_length=SMS_BODY_MAX, description=description)]


class Body(BaseModel):
    """A JSON request body: JSON's own types only (no "5" for 5, no 1 for true), no unknown field."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class Query(BaseModel):
    """A query string: values are text converted to the declared type; unknown parameters refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Out(BaseModel):
    """A response body: every field is always present (null when empty)."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


# --- errors -----------------------------------------------------------------------------------------


class ErrorDetail(Out):
    """What went wrong."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=False)

    code: Annotated[str, Field(examples=["validation_error", "not_found"])]
    message: str
    field: Annotated[
        str | None, Field(exclude_if=lambda v: v is None, description="The request field at fault.")
    ] = None


class Error(Out):
    """Every error the API answers with."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=False)

    error: ErrorDetail


# --- agents -----------------------------------------------------------------------------------------

A = rows.Agent


class SendingHours(Body):
    """The hours outbound conversations may start in, in the number's timezone (end may pass midnight)."""

    start: Annotated[str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", examples=["09:00"])]
    end: Annotated[str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", examples=["20:00"])]


# gateway/events.py's EVENTS (tests/test_events.py checks they agree).
EventName = Literal[
    "chat_started", "chat_ended", "chat_analyzed", "chat_handoff", "message_received", "message_status"
]


def _unique_events(events: list[str] | None) -> list[str] | None:
    """No event twice."""
    if events is not None and len(set(events)) != len(events):
        raise PydanticCustomError("unique", "an event is listed twice")
    return events


class AgentSettings(Body):
    """The fields of an agent a client sets; defaults are the storage layer's."""

    name: Annotated[str, Field(max_length=200)] = column_default(A.name)
    model: Annotated[
        str | None, Field(min_length=1, max_length=200, description="The model name; null: OPENAI_MODEL.")
    ] = column_default(A.model)
    system_prompt: Annotated[
        str, Field(max_length=100_000, description="May hold {{variables}}, filled from dynamic_variables.")
    ] = column_default(A.system_prompt)
    temperature: Annotated[float | None, Field(ge=0, le=2, description="null: the model's default.")] = (
        column_default(A.temperature)
    )
    num_last_messages: Annotated[
        integer(0, 10_000), Field(description="How many recent messages the prompt carries.")
    ] = column_default(A.num_last_messages)
    full_session_memory: Annotated[
        bool, Field(description="false: the prompt holds only the newest user turn(s).")
    ] = column_default(A.full_session_memory)
    summary_memory: bool = column_default(A.summary_memory)
    user_analysis_memory: bool = column_default(A.user_analysis_memory)
    retry_attempts: integer(0, 10) = column_default(A.retry_attempts)
    retry_delay: Annotated[
        float,
        Field(ge=0, le=3600, description="Seconds before the first retry, doubled per attempt, with jitter."),
    ] = column_default(A.retry_delay)
    max_concurrent_invocations: Annotated[
        integer(1, 1000),
        Field(
            description="Completions that may run at once in one chat; a further one waits a few seconds, "
            "then gets 409."
        ),
    ] = column_default(A.max_concurrent_invocations)
    end_chat_after_silence_ms: integer(1000, MAX_INT) = column_default(A.end_chat_after_silence_ms)
    auto_close_message: Annotated[str | None, Field(max_length=MESSAGE_MAX)] = column_default(
        A.auto_close_message
    )
    help_message: Annotated[str | None, Field(max_length=MESSAGE_MAX)] = column_default(A.help_message)
    fallback_message: Annotated[
        str | None,
        Field(
            max_length=MESSAGE_MAX,
            description="Sent by SMS when the model cannot answer; null: a built-in text.",
        ),
    ] = column_default(A.fallback_message)
    fallback_enabled: Annotated[
        bool,
        Field(
            description="false: when the model cannot answer an SMS, nothing is sent (the message is still "
            "marked failed with the reason)."
        ),
    ] = column_default(A.fallback_enabled)
    accepts_images: Annotated[
        bool,
        Field(
            description="true: the images of the MMS being answered (JPEG, PNG, GIF, WebP; up to 5 MB each, "
            "the newest 4) are given to the model as image input. Other attachments reach the model as "
            "`[attachment: <content type>]`."
        ),
    ] = column_default(A.accepts_images)
    analysis_fields: AnalysisFields = Field(default_factory=list)
    max_tokens: Annotated[
        integer(1, 100_000), Field(description="The most tokens the model may write in one reply.")
    ] = column_default(A.max_tokens)
    max_reply_parts: Annotated[
        integer(1, 50), Field(description="The most SMS parts one reply is sent as; a longer one is cut.")
    ] = column_default(A.max_reply_parts)
    replies_per_person_per_hour: cap("Agent replies one person may get per hour") = column_default(
        A.replies_per_person_per_hour
    )
    replies_per_person_per_day: cap("Agent replies one person may get per day") = column_default(
        A.replies_per_person_per_day
    )
    tokens_per_day: cap("Model tokens this agent may use per day") = column_default(A.tokens_per_day)
    limit_notice_message: sms_text(
        'Sent once per window when a cap stops replies; null: a built-in text; "": no notice.'
    ) = column_default(A.limit_notice_message)
    opt_out_hint: sms_text(
        "Added to the first text the gateway starts to a person from a number; null: "
        '"Reply STOP to opt out."; "": none.'
    ) = column_default(A.opt_out_hint)
    sending_hours: Annotated[
        SendingHours | None,
        Field(description="Outbound starts wait for these hours (the number's timezone); null: any time."),
    ] = column_default(A.sending_hours)
    webhook_url: Annotated[
        str | None,
        Field(
            max_length=2000,
            pattern=HTTP_URL_PATTERN,
            description="Where this agent's chat events are POSTed, signed (README: Chat event webhooks); "
            "null: EVENTS_WEBHOOK_URL. Private, loopback and link-local addresses are refused at delivery "
            "unless ALLOW_PRIVATE_URLS=1.",
        ),
    ] = column_default(A.webhook_url)
    webhook_events: Annotated[
        list[EventName] | None,
        Field(
            max_length=6,
            description="The events sent; null: chat_started, chat_ended, chat_analyzed and chat_handoff.",
            json_schema_extra={"uniqueItems": True},
        ),
        AfterValidator(_unique_events),
    ] = column_default(A.webhook_events)
    webhook_secret: Annotated[
        str | None,
        Field(
            min_length=16,
            max_length=200,
            description="Write-only: the secret signing this agent's deliveries and tool calls "
            "(X-Smsgw-Signature); null: EVENTS_WEBHOOK_SECRET. Nothing is sent unsigned: while the "
            "agent has a webhook_url or a function tool and the gateway has no EVENTS_WEBHOOK_SECRET, "
            "it is required (422 naming it). Responses show only `webhook_secret_set`.",
        ),
    ] = column_default(A.webhook_secret)
    default_dynamic_variables: Annotated[
        Variables,
        Field(
            description="{{variables}} for chats that bring none of their own (inbound SMS chats); a chat's "
            "own dynamic_variables win. A variable with no value is left out of the prompt."
        ),
    ] = Field(default_factory=dict)
    tools: Tools = Field(default_factory=list)


class AgentCreate(AgentSettings):
    """POST /v1/agents: any settings (the rest take their defaults) and an optional id."""

    agent_id: Annotated[
        str | None, Field(pattern=ID_PATTERN, description="Optional; generated when absent.")
    ] = None


class AgentUpdate(AgentSettings):
    """PATCH /v1/agents/{agent_id}: only the fields sent change."""


class Agent(AgentSettings, Out):
    """An agent."""

    model_config = ConfigDict(strict=False, extra="ignore", json_schema_serialization_defaults_required=True)

    agent_id: Id
    analysis_fields: list[AnalysisField]
    tools: list[Tool]
    webhook_secret: SkipJsonSchema[str | None] = Field(None, exclude=True)  # write-only
    webhook_secret_set: Annotated[bool, Field(description="True when the agent has its own webhook_secret.")]
    is_default: Annotated[
        bool, Field(description=f"True for `{DEFAULT_AGENT_ID}`, which answers numbers without an agent.")
    ]
    created_at: Timestamp
    updated_at: Timestamp


class WebhookAttempt(Out):
    """One attempt to deliver a chat event."""

    event: EventName
    chat_id: str
    agent_id: str
    attempt: Annotated[int, Field(description="1 for the first try; retries count up (5 at most).")]
    attempted_at: Annotated[str, Field(description="ISO 8601 UTC.")]
    status_code: Annotated[int | None, Field(description="The endpoint's HTTP status; null: no answer.")]
    outcome: Annotated[
        Literal["delivered", "failed", "refused", "gave_up"],
        Field(
            description="delivered (2xx); failed (retried later when the error may pass); refused (the URL "
            "is not allowed, or a 4xx: not retried); gave_up (the last retry failed)."
        ),
    ]
    error: Annotated[str | None, Field(description="What went wrong, in a sentence.")]
    duration_ms: int


class WebhookDeliveries(Out):
    """The newest delivery attempts to the agent's webhook endpoint (all agents sharing it), newest first."""

    url: Annotated[str | None, Field(description="Where the agent's events go; null: nowhere.")]
    attempts: list[WebhookAttempt]


class AgentList(Out):
    """Every live agent, the default agent first."""

    items: list[Agent]


# --- phone numbers ----------------------------------------------------------------------------------

AgentRef = Annotated[str | None, Field(pattern=ID_PATTERN)]
Timezone = Annotated[
    str | None,
    Field(max_length=64, description="IANA name, e.g. America/New_York; null: guessed from the number."),
]


MessagingServiceSid = Annotated[
    str | None,
    Field(
        pattern=r"^MG[0-9a-fA-F]{32}$",
        description="Send through this Messaging Service (Twilio's MessagingServiceSid instead of From); "
        "null: the gateway's TWILIO_MESSAGING_SERVICE_SID, else From the number.",
    ),
]
MaxMps = Annotated[
    float | None,
    Field(
        gt=0,
        le=10_000,
        description="Messages per second this number may send, shared by every worker (its registered "
        "throughput, e.g. 1 for a US long code); a burst is paced to it. null: not paced (Twilio queues).",
    ),
]


class PhoneNumberUpdate(Body):
    """PATCH /v1/phone-numbers/{phone_number}: only the fields sent change."""

    inbound_agent_id: Annotated[
        AgentRef, Field(description="Answers texts to this number; null: the default agent.")
    ] = None
    outbound_agent_id: Annotated[
        AgentRef,
        Field(
            description="Starts conversations from this number; null: the inbound agent, then the default."
        ),
    ] = None
    timezone: Annotated[Timezone, AfterValidator(lambda v: v if v is None else _timezone(v))] = None
    messaging_service_sid: MessagingServiceSid = None
    max_mps: MaxMps = None


class PhoneNumberCreate(PhoneNumberUpdate):
    """POST /v1/phone-numbers."""

    phone_number: E164


class PhoneNumber(Out):
    """One of our numbers and its agents."""

    phone_number: Annotated[str, Field(examples=["+14155550123"])]
    inbound_agent_id: AgentRef
    outbound_agent_id: AgentRef
    timezone: Timezone
    messaging_service_sid: MessagingServiceSid
    max_mps: MaxMps
    created_at: Timestamp
    updated_at: Timestamp


class PhoneNumberList(Out):
    """Every registered number."""

    items: list[PhoneNumber]


# --- chats and messages -----------------------------------------------------------------------------


class ChatCreate(Body):
    """POST /v1/chats: an API chat with an agent."""

    agent_id: Id
    user_id: Annotated[str | None, Field(min_length=1, max_length=200)] = None
    metadata: Annotated[JsonObject, Field(description="Yours: stored and returned as sent.")] = Field(
        default_factory=dict
    )
    dynamic_variables: Variables = Field(default_factory=dict)


class ChatUpdate(Body):
    """PATCH /v1/chats/{chat_id}."""

    metadata: Annotated[JsonObject, Field(description="Replaces the chat's metadata.")] = Field(
        default_factory=dict
    )


class ChatListQuery(Query):
    """GET /v1/chats: filters (all optional, combined with AND) and the page."""

    agent_id: Annotated[str | None, Field(pattern=ID_PATTERN, description="Only this agent's chats.")] = None
    chat_status: ChatStatusName | None = None
    chat_type: ChatTypeName | None = None
    channel: ChannelName | None = None
    user_id: Annotated[
        str | None, Field(min_length=1, max_length=200, description="Only this user's chats.")
    ] = None
    phone_number: Annotated[
        str | None,
        BeforeValidator(lambda v: "+" + v.strip() if isinstance(v, str) and v[:1] == " " else v),
        AfterValidator(lambda v: v if v is None else _e164(v)),
        Field(
            min_length=1,
            max_length=32,
            description="Only SMS and WhatsApp chats with this person (any spelling of the number; a `+` "
            "sent unencoded, which arrives as a space, is read as `+`).",
            examples=["+14155550123"],
            json_schema_extra={"pattern": r"^[+ ]"},
        ),
    ] = None
    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT, description="Page size.")] = DEFAULT_LIMIT
    pagination_key: Annotated[
        str | None,
        Field(
            min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_-]+$", description="From the previous page."
        ),
    ] = None


class Media(Out):
    """An attachment of an MMS."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=False)

    url: str
    content_type: str | None = None


class ToolCallRecord(Out):
    """One tool call the model made while writing an answer."""

    id: Annotated[str, Field(description="The model's id of the call.")]
    name: Annotated[
        str, Field(description="The tool called (a function's name, `end_chat`, `handoff_to_human`).")
    ]
    arguments: Annotated[
        JsonObject | str,
        Field(description="The arguments the model gave (as it wrote them when not a JSON object)."),
    ]
    round: Annotated[int, Field(ge=1, description="Which round of tool calls of the turn.")]
    outcome: Annotated[
        Literal["ok", "error", "timeout", "refused", "failed", "bad_arguments", "unknown_tool"],
        Field(
            description="ok; error (the tool answered a non-2xx status); timeout; refused (its URL is not "
            "allowed, e.g. a private address); failed (it could not be reached); bad_arguments; unknown_tool."
        ),
    ]
    result: Annotated[
        str, Field(description='What the model was told: the tool\'s answer, or {"error": "..."}.')
    ]
    status_code: Annotated[int | None, Field(description="The tool's HTTP status; null: no answer.")]
    duration_ms: Annotated[int, Field(ge=0)]


class Message(Out):
    """A message in a chat; `status` and `error_code` are null outside SMS."""

    message_id: Annotated[str, Field(examples=["msg_42"])]
    role: RoleName
    kind: Annotated[
        MessageKindName,
        Field(
            description="`text`: the person's text or the agent's reply; `operator`: written by a human "
            "operator who took the chat over; `keyword`, `opted_out`, `help_answer`, `notice`: shown but "
            "never given to the model."
        ),
    ]
    content: str
    media: list[Media]
    created_at: Timestamp
    status: Annotated[
        MessageStatusName | None,
        Field(description="SMS/WhatsApp delivery state (`read`: WhatsApp only); null in API chats."),
    ]
    error_code: Annotated[
        str | None,
        Field(
            description="SMS/WhatsApp only: Twilio's error code, the model's, or why the agent did not "
            "answer (`rate_limited`, `budget_exhausted`)."
        ),
    ]
    reply_state: Annotated[
        ReplyStateName | None,
        Field(
            description="An inbound text: `pending` (being answered), `answered`, `none` (needs no answer), "
            "`failed`, or over a spend cap, `rate_limited` / `budget_exhausted` (no model call was made). "
            "Null for other messages."
        ),
    ] = None
    tool_calls: Annotated[
        list[ToolCallRecord] | None,
        Field(
            description="The agent's answer: the tools the model called on the way to it, in order, with "
            "what each answered (on an SMS reply, on its first part). Null: no tool was called."
        ),
    ] = None


class Usage(Out):
    """Model tokens the chat used so far."""

    prompt_tokens: Annotated[int, Field(ge=0)]
    completion_tokens: Annotated[int, Field(ge=0)]


class AgentUsageQuery(Query):
    """GET /v1/agents/{agent_id}/usage: optionally, one person's counts too."""

    phone_number: E164 | None = None


class PersonUsage(Out):
    """One person's replies from the agent in the current hour and day (UTC)."""

    phone_number: E164
    replies_this_hour: Annotated[int, Field(ge=0)]
    replies_today: Annotated[int, Field(ge=0)]


class AgentUsage(Out):
    """Today's (UTC) use of an agent's spend caps; a cap of null means none applies."""

    agent_id: Id
    day: Annotated[str, Field(json_schema_extra={"format": "date"}, examples=["2025-01-31"])]
    tokens_today: Annotated[int, Field(ge=0, description="Model tokens (prompt + completion) used today.")]
    tokens_per_day: Annotated[int | None, Field(description="The agent's daily token budget.")]
    replies_today: Annotated[int, Field(ge=0, description="Replies the agent made today, to anyone.")]
    replies_per_person_per_hour: int | None
    replies_per_person_per_day: int | None
    person: Annotated[PersonUsage | None, Field(description="With `?phone_number=`: that person's counts.")]


class GatewayUsage(Out):
    """Today's (UTC) use of the whole gateway's token budget."""

    day: Annotated[str, Field(json_schema_extra={"format": "date"}, examples=["2025-01-31"])]
    tokens_today: Annotated[int, Field(ge=0)]
    tokens_per_day: Annotated[int | None, Field(description="The gateway's daily token budget; null: none.")]


class Chat(Out):
    """A chat as listed: everything but its messages and usage."""

    chat_id: Id
    agent_id: Id
    chat_type: ChatTypeName
    channel: ChannelName
    chat_status: ChatStatusName
    user_id: str | None
    from_number: Annotated[
        str | None, Field(description="SMS chats: our number (WhatsApp: `whatsapp:+<number>`).")
    ]
    to_number: Annotated[
        str | None, Field(description="SMS chats: the person's number (WhatsApp: `whatsapp:+<number>`).")
    ]
    metadata: Annotated[
        JsonObject,
        Field(description="Yours, as sent (object key order is not kept: PostgreSQL stores it as jsonb)."),
    ]
    dynamic_variables: dict[str, str]
    start_timestamp: Timestamp
    end_timestamp: Timestamp | None
    end_reason: Annotated[str | None, Field(description="Why it ended: `api`, `silence`, `opt_out`, ...")]
    operator_held_at: Annotated[
        Timestamp | None,
        Field(description="Set while a human operator holds the chat (`takeover`): the agent is silent."),
    ]
    chat_analysis: Annotated[
        JsonObject | None, Field(description="Post-chat analysis; null until it is made.")
    ]


class ChatDetail(Chat):
    """A chat with its messages (oldest first) and the tokens it used."""

    messages: list[Message]
    usage: Usage


class SmsChatStarted(ChatDetail):
    """A new SMS chat, and when its opening text goes."""

    scheduled_for: Annotated[
        Timestamp | None,
        Field(description="Outside the agent's `sending_hours`: when the opening text will go; null: now."),
    ]


class ChatList(Out):
    """One page of chats, newest first."""

    items: list[Chat]
    has_more: bool
    pagination_key: Annotated[
        str | None, Field(description="Pass as `pagination_key` for the next page; null on the last one.")
    ]


class CompletionRequest(Body):
    """POST /v1/chats/{chat_id}/completions: the user's turn."""

    content: Annotated[
        str,
        Field(
            min_length=1,
            max_length=32_000,
            description="The user's message; not blank.",
            json_schema_extra={"pattern": NOT_BLANK},
        ),
        AfterValidator(_not_blank),
    ]


class CompletionResponse(Out):
    """The agent's new message(s)."""

    messages: list[Message]


class SmsChatCreate(Body):
    """POST /v1/sms-chats: start an outbound SMS or WhatsApp conversation."""

    # The document states the rules between fields that _prefix_matches_channel and create_sms_chat
    # check: a whatsapp: number needs channel whatsapp; content_variables need a content_sid; a
    # template (content_sid) comes without message and media_urls.
    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                *(
                    {
                        "if": {"properties": {name: {"pattern": WHATSAPP_PREFIX}}, "required": [name]},
                        "then": {"properties": {"channel": {"const": "whatsapp"}}, "required": ["channel"]},
                    }
                    for name in ("from_number", "to_number")
                ),
                {
                    "if": {
                        "properties": {"content_variables": {"type": "object"}},
                        "required": ["content_variables"],
                    },
                    "then": {"properties": {"content_sid": {"type": "string"}}, "required": ["content_sid"]},
                },
                {
                    "if": {"properties": {"content_sid": {"type": "string"}}, "required": ["content_sid"]},
                    "then": {"properties": {"message": {"type": "null"}, "media_urls": {"maxItems": 0}}},
                },
            ]
        }
    )

    from_number: Annotated[ChannelNumber, Field(description="Our Twilio number the conversation comes from.")]
    to_number: Annotated[ChannelNumber, Field(description="The person's number.")]
    channel: Annotated[
        Literal[tuple(c.value for c in Channel)],  # type: ignore[valid-type]
        Field(
            description="`sms`, or `whatsapp`: sent from our number's WhatsApp sender. A free-form WhatsApp "
            "message may start a conversation only within 24 h of the person's last message to us "
            "(else 409 `outside_session_window`); outside it, send an approved template (`content_sid`)."
        ),
    ] = Channel.SMS.value
    content_sid: Annotated[
        str | None,
        Field(
            pattern=r"^HX[0-9a-fA-F]{32}$",
            description="A Content API template (HX...) sent as the opening message instead of `message`.",
        ),
    ] = None
    content_variables: Annotated[
        dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=1600)]] | None,
        Field(max_length=100, description='Values for the template\'s placeholders, e.g. {"1": "Ada"}.'),
    ] = None
    agent_id: Annotated[
        str | None,
        Field(
            pattern=ID_PATTERN,
            description="Default: the number's outbound agent, then its inbound one, then the default.",
        ),
    ] = None
    message: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=16_000,
            description="The opening text, sent as is (split into parts of at most 1600 characters); without "
            "it the agent writes the opening text.",
        ),
    ] = None
    media_urls: Annotated[
        list[
            Annotated[str, WithJsonSchema({"type": "string", "maxLength": 2000, "pattern": "^https?://[^/]"})]
        ],
        Field(
            max_length=MAX_MEDIA, description="Media (MMS) sent with the first part; Twilio fetches each URL."
        ),
        AfterValidator(_http_urls),
    ] = Field(default_factory=list)
    metadata: JsonObject = Field(default_factory=dict)
    dynamic_variables: Variables = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _prefix_matches_channel(cls, data: Any) -> Any:
        """A `whatsapp:` number says WhatsApp: on `channel` sms it is refused rather than texted."""
        if isinstance(data, dict) and data.get("channel", Channel.SMS.value) != Channel.WHATSAPP.value:
            for name in ("from_number", "to_number"):
                value = data.get(name)
                if isinstance(value, str) and value[:9].lower() == "whatsapp:":
                    raise PydanticCustomError(
                        "channel", 'a whatsapp: number needs "channel": "whatsapp" ({name})', {"name": name}
                    )
        return data


# --- contacts ---------------------------------------------------------------------------------------


class ContactNumber(Out):
    """The person's state on one of our numbers."""

    our_number: str
    opted_out: bool
    opted_out_at: Timestamp | None
    first_contact_at: Timestamp | None


class Contact(Out):
    """A person, by their phone number."""

    phone_number: Annotated[str, Field(examples=["+14155550123"])]
    numbers: Annotated[list[ContactNumber], Field(description="Opt-out state per our number.")]
    chats: Annotated[list[Chat], Field(description="Their chats, oldest first (without messages).")]
    profile: Annotated[JsonObject | None, Field(description="What user profile memory learned; null: none.")]


class ContactOptOut(Body):
    """PUT /v1/contacts/{phone_number}/opt-out: the do-not-text list of one of our numbers."""

    our_number: Annotated[E164, Field(description="One of our numbers.")]
    opted_out: bool


class ContactErased(Out):
    """What an erasure deleted."""

    erased: dict[str, int]


class ContactExport(Out):
    """Everything stored about a person (rows as stored, timestamps ISO 8601)."""

    phone_number: str
    exported_at: str
    contacts: list[JsonObject]
    chats: Annotated[
        list[JsonObject], Field(description="Each with its `messages` (media references included).")
    ]
    other_messages: list[JsonObject]
    profiles: list[JsonObject]
    idempotency_keys: list[JsonObject]
