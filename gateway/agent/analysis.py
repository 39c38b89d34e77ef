"""Post-chat analysis: when a chat ends, the model sums it up and judges it, in the background.

`schedule_analysis(queue, chat)` is called wherever a chat ends (POST /v1/chats/{id}/end, the
silence auto-close, an SMS opt-out); the job (`workers.memory_jobs.analyze_chat`) reads a bounded
view of the chat (its last ANALYSIS_MAX_MESSAGES messages, plus the rolling summary when older
messages are left out), asks the model for one JSON object and stores it in `Chat.chat_analysis`:

    {"chat_summary": str, "user_sentiment": "positive"|"neutral"|"negative"|null,
     "chat_successful": bool|null, "custom_analysis_data": {<field name>: value|null},
     "analyzed_at": ISO 8601 UTC, "messages_analyzed": int}

`chat_successful` is judged against the agent's system prompt (its goal). GET /v1/chats/{id}
returns the stored object.

Custom fields (`Agent.analysis_fields`), a JSON list of objects:

    {"name": "appointment_booked",            # required: letters, digits, _ (1-64), unique
     "type": "boolean",                       # "string" (default), "number", "boolean" or "enum"
     "description": "Did the person book?",   # optional: what the model should judge
     "choices": ["morning", "afternoon"]}     # "enum" only: the allowed values (required there)

`AnalysisField` declares that shape once (the API's models use it, `validate_analysis_fields` checks
it); the job reads fields leniently (`normalize_fields`), skipping ones it cannot use.
A value that does not fit its type is stored as null.
"""

from __future__ import annotations

import logging
from datetime import UTC
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError
from redis.exceptions import RedisError
from rq import Queue, get_current_job
from rq.job import Job

from gateway import events
from gateway.agent import spend, structured
from gateway.agent.history import recent_messages
from gateway.agent.memory import (
    clip,
    job_token,
    parse_json_object,
    queue_for,
    transcript,
)
from gateway.agent.prompt import chat_variables, fill_variables
from gateway.agent.text import SPACE
from gateway.config import Settings
from gateway.errors import TransientError
from gateway.queue import job_is_live, retry_policy
from gateway.storage.db import database
from gateway.storage.models import Agent, Chat, Message, Role, utcnow

log = logging.getLogger(__name__)

ANALYSIS_JOB = "workers.memory_jobs.analyze_chat"
ANALYSIS_JOB_TIMEOUT = 300
ANALYSIS_RETRIES = 3  # for errors of the model provider; a non-JSON answer is retried once
ANALYSIS_MAX_MESSAGES = 100  # the newest messages the analysis reads
# The analysis answer's cap (max_tokens): a short summary, the verdicts and the agent's fields fit
# well within it. Not the agent's max_tokens: that bounds an SMS reply and may cut the JSON short.
ANALYSIS_MAX_TOKENS = 1500
SYSTEM_PROMPT_MAX_CHARS = 8000  # of the agent's system prompt shown to the analyst
SENTIMENTS = ("positive", "neutral", "negative")
FIELD_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
MAX_FIELDS = 50

ANALYSIS_INSTRUCTIONS = (
    "You analyse a conversation that has ended, between an assistant (an AI agent) and a person. "
    "Answer with ONE JSON object and nothing else, with these keys:\n"
    '- "chat_summary": what the conversation was about and how it ended, in at most 3 sentences;\n'
    '- "user_sentiment": the person\'s overall sentiment, one of "positive", "neutral", "negative";\n'
    '- "chat_successful": true when the conversation reached the goal the assistant\'s '
    "instructions set (or, with no clear goal, when the person got what they came for), else false;\n"
    '- "custom_analysis_data": an object with one key per custom field listed below (null when the '
    "conversation does not tell)."
)


# --- custom fields ----------------------------------------------------------------------------------


class AnalysisField(BaseModel):
    """One custom post-chat analysis field: the shape the API accepts and the job reads."""

    # The document says what _choices_only_on_enum checks: choices with (and only with) type enum.
    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={
            "if": {"properties": {"type": {"const": "enum"}}, "required": ["type"]},
            "then": {"required": ["choices"], "properties": {"choices": {"type": "array"}}},
            "else": {"properties": {"choices": {"type": "null"}}},
        },
    )

    name: Annotated[str, Field(pattern=FIELD_NAME_PATTERN, description="Letters, digits and _, unique.")]
    type: Literal["string", "number", "boolean", "enum"] = "string"
    description: Annotated[str, Field(max_length=2000, description="What the model should judge.")] = ""
    choices: Annotated[
        list[Annotated[str, Field(min_length=1, pattern=f"[^{SPACE}]")]] | None,
        Field(min_length=1, exclude_if=lambda v: v is None, description="The allowed values; enum only."),
    ] = None

    @model_validator(mode="after")
    def _choices_only_on_enum(self) -> AnalysisField:
        """`choices` only (and always) with type enum."""
        if self.type == "enum" and not self.choices:
            raise PydanticCustomError(
                "choices", "choices must be a non-empty array of strings for an enum field"
            )
        if self.type != "enum" and self.choices is not None:
            raise PydanticCustomError("choices", "choices is only allowed on enum fields")
        return self


def _unique_names(fields: list[AnalysisField]) -> list[AnalysisField]:
    """No name twice."""
    seen: set[str] = set()
    for field in fields:
        if field.name in seen:
            raise PydanticCustomError("unique", "name '{name}' is used twice", {"name": field.name})
        seen.add(field.name)
    return fields


AnalysisFields = Annotated[
    list[AnalysisField],
    Field(
        max_length=MAX_FIELDS,
        description="Custom post-chat analysis fields, judged by the model when a chat ends and returned "
        "in `chat_analysis.custom_analysis_data`. Names are unique; `choices` only (and always) with type "
        "`enum`.",
    ),
    AfterValidator(_unique_names),
]
_FIELDS_ADAPTER: TypeAdapter[list[AnalysisField]] = TypeAdapter(AnalysisFields)


def validate_analysis_fields(value: Any) -> list[dict[str, Any]]:
    """Check `analysis_fields` (shape in the module docstring); raise ValueError saying what is wrong."""
    try:
        fields = _FIELDS_ADAPTER.validate_python(value)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = "analysis_fields" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
        raise ValueError(f"{where}: {error['msg']}") from None
    return [field.model_dump() for field in fields]


def normalize_fields(value: Any) -> list[dict[str, Any]]:
    """The usable fields of a stored `analysis_fields` (lenient: bad entries are skipped, logged)."""
    if not isinstance(value, list):
        return []
    fields = []
    for item in value:
        try:
            fields.extend(validate_analysis_fields([item]))
        except ValueError as exc:
            log.warning("analysis: skipping a custom field: %s", exc)
    return fields


def coerce(value: Any, field: dict[str, Any]) -> Any:
    """A model's value for a custom field in the field's type, or None when it does not fit."""
    if value is None:
        return None
    kind = field["type"]
    if kind == "boolean":
        return as_bool(value)
    if kind == "number":
        if isinstance(value, bool):
            return None
        if isinstance(value, int | float):
            return value
        try:
            number = float(str(value).strip())
        except ValueError:
            return None
        return int(number) if number.is_integer() else number
    if kind == "enum":
        text = str(value).strip().lower()
        return next((choice for choice in field["choices"] if choice.strip().lower() == text), None)
    return value if isinstance(value, str) else str(value)


def as_bool(value: Any) -> bool | None:
    """True/False from a JSON boolean or a yes/no word, else None."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"true", "yes", "1"}:
        return True
    if text in {"false", "no", "0"}:
        return False
    return None


# --- the request and its answer ---------------------------------------------------------------------


def describe_fields(fields: list[dict[str, Any]]) -> str:
    """The custom fields as lines the model reads."""
    if not fields:
        return "Custom fields: none (answer {} for custom_analysis_data)."
    lines = ["Custom fields:"]
    for field in fields:
        kind = field["type"]
        if kind == "enum":
            kind = "one of " + ", ".join(f'"{c}"' for c in field["choices"])
        description = f": {field['description']}" if field.get("description") else ""
        lines.append(f'- "{field["name"]}" ({kind}){description}')
    return "\n".join(lines)


def analysis_request(
    chat: Chat, agent: Agent, rows: list[Message], older_left_out: bool, fields: list[dict[str, Any]]
) -> list[dict[str, str]]:
    """The model request for one chat's analysis: instructions, the agent's goal, the conversation."""
    goal = clip(fill_variables(agent.system_prompt, chat_variables(chat, agent)), SYSTEM_PROMPT_MAX_CHARS)
    system = (
        f"{ANALYSIS_INSTRUCTIONS}\n\n{describe_fields(fields)}\n\n"
        f"The assistant's instructions (its system prompt):\n<<<\n{goal or '(none)'}\n>>>"
    )
    parts = []
    if older_left_out and chat.summary:
        parts.append(f"Summary of the earlier part of the conversation:\n{chat.summary.strip()}")
    label = f"The last {len(rows)} messages" if older_left_out else "The conversation"
    parts.append(f"{label}, oldest first:\n{transcript(rows) or '(no messages)'}")
    parts.append("Answer with the JSON object.")
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n\n".join(parts)}]


def field_schema(field: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema of one custom field's value (null when the chat does not tell)."""
    extra = {"description": field["description"]} if field.get("description") else {}
    if field["type"] == "enum":
        return structured.nullable("string", enum=[*field["choices"], None], **extra)
    return structured.nullable(field["type"], **extra)


def analysis_schema(fields: list[dict[str, Any]]) -> dict[str, Any]:
    """The strict JSON Schema of the analysis answer, custom fields included (response_format)."""
    return structured.strict_object(
        {
            "chat_summary": {"type": "string"},
            "user_sentiment": structured.nullable("string", enum=[*SENTIMENTS, None]),
            "chat_successful": structured.nullable("boolean"),
            "custom_analysis_data": structured.strict_object({f["name"]: field_schema(f) for f in fields}),
        }
    )


def parse_analysis(text: str, fields: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The stored analysis from the model's answer, or None when it holds no JSON object."""
    answer = parse_json_object(text)
    if answer is None:
        return None
    sentiment = str(answer.get("user_sentiment") or "").strip().lower()
    custom = answer.get("custom_analysis_data")
    custom = custom if isinstance(custom, dict) else {}
    summary = answer.get("chat_summary")
    return {
        "chat_summary": clip(summary if isinstance(summary, str) else "", 2000),
        "user_sentiment": sentiment if sentiment in SENTIMENTS else None,
        "chat_successful": as_bool(answer.get("chat_successful")),
        "custom_analysis_data": {f["name"]: coerce(custom.get(f["name"]), f) for f in fields},
    }


def timestamp() -> str:
    """Now as ISO 8601 UTC with a Z."""
    return utcnow().replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def analyze_chat(settings: Settings, chat_id: str) -> dict[str, Any] | None:
    """The analysis job: analyse one chat and store the result; returns it (None: nothing to do).

    A chat in which the person never wrote is stored as such without a model call. An answer
    with no JSON object raises TransientError, so RQ retries it once; a second such answer ends
    the job without an analysis. A spent token budget (gateway/agent/spend.py) ends it too.
    """
    with database.connection_context():
        chat = Chat.get_or_none(Chat.chat_id == chat_id)
        if chat is None:
            return None
        agent = Agent.get_by_id(chat.agent_id)
        fields = normalize_fields(agent.analysis_fields)
        rows = recent_messages(chat, ANALYSIS_MAX_MESSAGES + 1)
        older_left_out = len(rows) > ANALYSIS_MAX_MESSAGES
        rows = rows[-ANALYSIS_MAX_MESSAGES:]
    if not any(row.role == Role.USER.value for row in rows):
        result: dict[str, Any] = {
            "chat_summary": "The chat ended before the person wrote anything.",
            "user_sentiment": None,
            "chat_successful": False,
            "custom_analysis_data": {f["name"]: None for f in fields},
        }
    else:
        if not settings.model_configured:
            return None  # the offline responder cannot analyse
        request = analysis_request(chat, agent, rows, older_left_out, fields)
        try:
            answer = structured.JsonAnswer("chat_analysis", analysis_schema(fields), ANALYSIS_MAX_TOKENS)
            completion = structured.complete_json_counted(settings, agent, answer, request)
        except spend.OverBudget as exc:
            log.warning("analysis: chat %s not analysed: %s", chat_id, exc.reason)
            return None
        parsed = parse_analysis(completion.text, fields)
        if parsed is None:
            job = get_current_job()
            if job is None or job.retries_left is None or job.retries_left >= ANALYSIS_RETRIES:
                raise TransientError("The model's analysis was not a JSON object.", "invalid_json")
            # Asked twice, answered prose twice: a third call would cost as much and say the same.
            log.warning("analysis: chat %s not analysed: the model answered without JSON again", chat_id)
            return None
        result = parsed
    result["analyzed_at"] = timestamp()
    result["messages_analyzed"] = len(rows)
    with database.connection_context():
        Chat.update(chat_analysis=result).where(Chat.chat_id == chat_id).execute()
        events.emit(queue_for(settings), settings, events.CHAT_ANALYZED, chat_id)
    log.info("analysis: chat %s analysed (%s)", chat_id, result.get("user_sentiment"))
    return result


# --- scheduling -------------------------------------------------------------------------------------


def analysis_job_id(chat_id: str) -> str:
    """The job id of a chat's analysis: one per chat end."""
    return f"analysis-{job_token(chat_id)}"


def schedule_analysis(queue: Queue | None, chat: Chat | str) -> Job | None:
    """Queue the post-chat analysis of a chat (or chat id) that has just ended (once while one is pending).

    Never raises (callers are ending a chat, which must not fail over this): a failure to
    queue is logged, and the chat simply stays without analysis.
    """
    if queue is None:
        return None
    chat_id = chat if isinstance(chat, str) else chat.chat_id
    job_id = analysis_job_id(chat_id)
    try:
        if job_is_live(queue.connection, job_id):
            return None
        return queue.enqueue(
            ANALYSIS_JOB,
            chat_id,
            job_id=job_id,
            retry=retry_policy(ANALYSIS_RETRIES, 5.0),
            job_timeout=ANALYSIS_JOB_TIMEOUT,
            result_ttl=600,
            failure_ttl=7 * 24 * 3600,
            description=f"analyse the ended chat {chat_id}",
        )
    except RedisError as exc:
        log.warning("analysis: could not queue the analysis of %s: %s", chat_id, exc)
    except Exception:
        log.exception("analysis: could not queue the analysis of %s", chat_id)
    return None
