"""POST /v1/chats/{chat_id}/completions: the user's turn in, the agent's answer out, synchronously.

Take a completion slot of the chat (waiting, without a database connection, only when every slot
is busy), record the user's message and build the prompt, give the connection back and ask the
model (retrying transient failures with the agent's backoff; it can take seconds), then record the
answer on a fresh connection.
"""

from __future__ import annotations

import logging
import random
import time

from flask import current_app
from redis import RedisError

from gateway.agent import llm, prompt
from gateway.agent.memory import schedule_after_turn
from gateway.api.chats import CHAT_ID
from gateway.api.concurrency import Semaphore, SlotsBusy
from gateway.api.contract import operation
from gateway.api.errors import ApiError, conflict, not_found
from gateway.api.schemas import CompletionRequest, CompletionResponse, is_id
from gateway.api.serializers import message_out
from gateway.config import Settings
from gateway.errors import GatewayError, TransientError
from gateway.storage.db import database
from gateway.storage.models import Agent, Chat, ChatStatus, ChatType, Message, Role, utcnow

log = logging.getLogger(__name__)

# Seconds a completion waits for a free slot when `max_concurrent_invocations` are running.
SLOT_WAIT_SECONDS = 10.0
# One retry sleep is at most this long, and all of a request's sleeps together at most the
# budget: the caller is holding an HTTP request open.
MAX_RETRY_SLEEP = 10.0
RETRY_SLEEP_BUDGET = 30.0
# Added to a slot's lease beyond the longest a completion can take.
LEASE_MARGIN = 30.0


def retry_sleep(retry_delay: float, attempt: int) -> float:
    """Seconds to wait before retry number `attempt` (0-based): doubling, ±25% jitter, capped."""
    base = max(retry_delay, 0.0) * (2**attempt)
    return min(MAX_RETRY_SLEEP, base * random.uniform(0.75, 1.25))


def complete_with_retries(settings: Settings, agent: Agent, messages: list[dict]) -> llm.Completion:
    """The model's answer; TransientError retried `agent.retry_attempts` times, PermanentError not."""
    slept = 0.0
    attempt = 0
    while True:
        try:
            return llm.complete(
                settings,
                model=agent.model or settings.openai_model,
                messages=messages,
                temperature=agent.temperature,
                max_tokens=agent.max_tokens,
            )
        except TransientError as exc:
            if attempt >= agent.retry_attempts:
                raise
            delay = retry_sleep(agent.retry_delay, attempt)
            if slept + delay > RETRY_SLEEP_BUDGET:
                raise
            log.warning(
                "model attempt failed at %s: %s; retry %d in %.2fs", exc.endpoint, exc, attempt + 1, delay
            )
            time.sleep(delay)
            slept += delay
            attempt += 1


def slot_lease(settings: Settings, agent: Agent) -> float:
    """How long one completion can hold its slot: every attempt timing out, every sleep taken."""
    return (agent.retry_attempts + 1) * settings.model_timeout + RETRY_SLEEP_BUDGET + LEASE_MARGIN


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
    messages = prompt.build_messages(chat, chat.agent, settings)
    if not any(m.get("role") == "user" for m in messages):
        # An agent that keeps no history (num_last_messages 0) still answers the message it got.
        messages.append({"role": "user", "content": content})
    return user_message, messages


def record_agent_turn(chat_id: str, user_message: Message, completion: llm.Completion) -> Message:
    """Store the agent's answer with what it cost."""
    with database.connection_context():
        now = utcnow()
        with database.atomic():
            message = Message.create(
                chat=chat_id,
                role=Role.AGENT.value,
                content=completion.text,
                reply_to=user_message.id,
                prompt_tokens=completion.prompt_tokens,
                completion_tokens=completion.completion_tokens,
                created_at=now,
                updated_at=now,
            )
            Chat.update(last_activity_at=now).where(Chat.chat_id == chat_id).execute()
        return message


def run_completion(chat: Chat, content: str, settings: Settings) -> Message:
    """Record the user's turn, ask the model, record and return the answer (502 when it fails).

    Runs with the request's connection open; closes it for the model call, opens one after.
    """
    user_message, messages = record_user_turn(chat, content, settings)
    database.close()  # the model can take seconds: hold no connection meanwhile
    try:
        completion = complete_with_retries(settings, chat.agent, messages)
    except GatewayError as exc:
        log.warning("completion for %s failed at %s: %s", chat.chat_id, exc.endpoint or "the gateway", exc)
        raise ApiError(
            502,
            "model_error",
            f"The model did not answer: {exc.reason} The user's message is recorded.",
        ) from exc
    return record_agent_turn(chat.chat_id, user_message, completion)


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
