"""POST /v1/chats/{chat_id}/completions: the user's turn in, the agent's answer out, synchronously.

Take a completion slot of the chat (waiting, without a database connection, only when every slot
is busy), check the token budget (429 when it is spent), record the user's message and build the
prompt, give the connection back and ask the model (retrying transient failures with the agent's
backoff; it can take seconds), then record the answer on a fresh connection. The prompt, budget,
model call, retry policy and stored columns are the "answer this chat" service shared with SMS
(gateway/conversations/answering.py); this module keeps the HTTP turn and the completion slots.
"""

from __future__ import annotations

import logging

from flask import current_app
from redis import RedisError

from gateway.agent import llm, tools
from gateway.agent.memory import schedule_after_turn
from gateway.api.chats import CHAT_ID
from gateway.api.concurrency import Semaphore, SlotsBusy
from gateway.api.contract import operation
from gateway.api.errors import ApiError, conflict, not_found
from gateway.api.schemas import CompletionRequest, CompletionResponse, is_id
from gateway.api.serializers import message_out
from gateway.config import Settings
from gateway.conversations import answering, tool_actions
from gateway.errors import GatewayError
from gateway.storage.db import database
from gateway.storage.models import Agent, Chat, ChatStatus, ChatType, Message, Role, utcnow

log = logging.getLogger(__name__)

# Seconds a completion waits for a free slot when `max_concurrent_invocations` are running.
SLOT_WAIT_SECONDS = 10.0
# Added to a slot's lease beyond the longest a completion can take.
LEASE_MARGIN = 30.0


def slot_lease(settings: Settings, agent: Agent) -> float:
    """How long one completion can hold its slot: every attempt timing out, every sleep taken (in
    each round of tool calls, with the turn's time for tools, when the agent has tools)."""
    rounds, tool_time = (tools.MAX_ROUNDS + 1, tools.TURN_TOOL_SECONDS) if agent.tools else (1, 0.0)
    one_round = (agent.retry_attempts + 1) * settings.model_timeout + answering.RETRY_SLEEP_BUDGET
    return rounds * one_round + tool_time + LEASE_MARGIN


def check_can_complete(chat: Chat) -> None:
    """409 unless the chat is an ongoing API chat."""
    if chat.chat_status != ChatStatus.ONGOING.value:
        raise conflict("chat_not_ongoing", f"The chat is {chat.chat_status}; start a new chat.")
    if chat.chat_type != ChatType.API.value:
        raise conflict("not_an_api_chat", "This chat is answered over SMS; completions are for API chats.")


def load_chat(chat_id: str) -> Chat:
    """The chat named in the URL with its agent (one query); 404 or 409 unless it can answer."""
    chat = None
    if is_id(chat_id):
        chat = Chat.select(Chat, Agent).join(Agent).where(Chat.chat_id == chat_id).first()
    if chat is None:
        raise not_found("chat", chat_id)
    check_can_complete(chat)
    return chat


def record_user_turn(chat: Chat, content: str, settings: Settings) -> tuple[Message, list]:
    """Store the user's message (409 if the chat stopped being ongoing) and build the prompt."""
    now = utcnow()
    with database.atomic():
        ongoing = (
            Chat.update(last_activity_at=now)
            .where((Chat.chat_id == chat.chat_id) & (Chat.chat_status == ChatStatus.ONGOING.value))
            .execute()
        )
        if not ongoing:
            raise conflict("chat_not_ongoing", "The chat ended meanwhile; start a new chat.")
        user_message = Message.create(
            chat=chat.chat_id, role=Role.USER.value, content=content, created_at=now, updated_at=now
        )
    messages = answering.build_prompt(settings, chat, chat.agent)
    if not any(m.get("role") == "user" for m in messages):
        # An agent that keeps no history (num_last_messages 0) still answers the message it got.
        messages.append({"role": "user", "content": content})
    return user_message, messages


def record_agent_turn(
    chat_id: str, user_message: Message, completion: llm.Completion, tool_calls: list[dict] | None = None
) -> Message:
    """Store the agent's answer with what it cost and the tool calls made on the way."""
    with database.connection_context():
        now = utcnow()
        with database.atomic():
            # API chats are never held by an operator: this only marks the chat active.
            answering.lock_unheld_chat(chat_id, now)
            [row] = answering.answer_rows(
                chat_id, [completion.text], completion, now, reply_to=user_message.id, tool_calls=tool_calls
            )
            return Message.create(**row)


def budget_spent(exc: answering.BudgetExhausted, recorded: bool) -> ApiError:
    """The 429 of a completion refused because a daily token budget is spent."""
    kept = "The user's message is recorded." if recorded else "Nothing was recorded."
    return ApiError(429, "budget_exhausted", f"{exc.reason} {kept}")


def run_completion(chat: Chat, content: str, settings: Settings) -> Message:
    """Check the budget, record the user's turn, ask the model, record and return the answer.

    429 when a daily token budget is spent, 502 when the model fails. Runs with the request's
    connection open; closes it for the model call, opens one after.
    """
    try:
        answering.check_budget(settings, chat.agent)
    except answering.BudgetExhausted as exc:
        raise budget_spent(exc, recorded=False) from exc
    user_message, messages = record_user_turn(chat, content, settings)
    database.close()  # the model can take seconds: hold no connection meanwhile
    try:
        # The agent's tools are offered; each round of the tool-call loop is one model call with
        # the agent's retries.
        run = answering.answer_with_tools(settings, chat.agent, chat, messages, retries=True)
    except answering.BudgetExhausted as exc:
        raise budget_spent(exc, recorded=True) from exc
    except GatewayError as exc:
        log.warning("completion for %s failed at %s: %s", chat.chat_id, exc.endpoint or "the gateway", exc)
        raise ApiError(
            502,
            "model_error",
            f"The model did not answer: {exc.reason} The user's message is recorded.",
        ) from exc
    message = record_agent_turn(chat.chat_id, user_message, run.completion, run.calls)
    action = tools.requested_action(run.calls)
    if action is not None:
        # The answer is stored; end the chat or announce the hand-off, as the model asked.
        tool_actions.perform(
            settings,
            current_app.task_queue,  # type: ignore[attr-defined]
            chat.chat_id,
            action,
            {"message_id": f"msg_{message.id}", "role": message.role, "content": message.content},
        )
    return message


def take_slot(semaphore: Semaphore, chat: Chat) -> str:
    """A completion slot of the chat; 409 when none frees up in time, 503 when Redis is down.

    The common case takes a free slot at once; only a completion that has to wait gives its
    database connection back while it waits.
    """
    try:
        token = semaphore.try_acquire()
        if token is None:
            database.close()
            token = semaphore.acquire(SLOT_WAIT_SECONDS)
    except SlotsBusy:
        raise conflict(
            "too_many_invocations",
            f"{semaphore.limit} completion(s) are already running in this chat (the agent's "
            f"max_concurrent_invocations); none finished within {SLOT_WAIT_SECONDS:g}s.",
        ) from None
    except RedisError as exc:
        raise ApiError(503, "unavailable", f"Redis did not answer: {exc}") from exc
    return token


@operation(
    "POST",
    "/chats/<chat_id>/completions",
    operation_id="createChatCompletion",
    tag="chats",
    summary="Send the user's message and get the agent's answer",
    description="Synchronous: the user's message is recorded, the model answers (transient failures "
    "retried per the agent's retry_attempts and retry_delay), the answer is recorded and returned.",
    body=CompletionRequest,
    ok=(200, CompletionResponse, "The agent's new message(s)."),
    errors={
        429: "A daily model token budget (the agent's tokens_per_day or the gateway's) is spent "
        "(`budget_exhausted`); the user's message is not recorded; budgets reset at midnight UTC.",
        409: "The chat is not ongoing (`chat_not_ongoing`), is an SMS chat (`not_an_api_chat`), or "
        "max_concurrent_invocations completions kept running (`too_many_invocations`).",
        502: "The model failed for good or retries ran out (`model_error`); the user's message stays "
        "recorded.",
        503: "Redis, which counts concurrent completions, did not answer.",
    },
    path_params=CHAT_ID,
)
def create_completion(chat_id: str, body: CompletionRequest) -> CompletionResponse:
    """Add the user's message to an API chat and answer with the agent's new message(s)."""
    content = body.content
    chat = load_chat(chat_id)
    settings: Settings = current_app.config["SETTINGS"]
    redis = current_app.redis  # type: ignore[attr-defined]
    if redis is None:  # no Redis configured: nothing to count slots with (nor queue for memory)
        return CompletionResponse(messages=[message_out(run_completion(chat, content, settings))])

    semaphore = Semaphore(
        redis,
        f"{settings.queue_prefix}:completions:{chat.chat_id}",
        limit=chat.agent.max_concurrent_invocations,
        lease=slot_lease(settings, chat.agent),
    )
    token = take_slot(semaphore, chat)
    try:
        message = run_completion(chat, content, settings)
    finally:
        try:
            semaphore.release(token)
        except RedisError:  # the lease ends on its own
            log.warning("could not release completion slot of %s", chat.chat_id)
    schedule_after_turn(current_app.task_queue, chat, chat.agent)  # type: ignore[attr-defined]  # never raises
    return CompletionResponse(messages=[message_out(message)])
