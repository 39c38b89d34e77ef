"""Answering a chat: the one service an SMS reply, an API completion and an outbound opening share.

A turn goes: `build_prompt` (the agent's settings and memory), `check_budget` (a spent daily token
budget refuses the turn before any model call), `ask` (ONE model call with the agent's settings;
it first reserves its estimated size against the budgets, atomically, and is refused with
BudgetExhausted when that would pass one; the reservation becomes the tokens the model reports
when it answers), then the answer is stored with its usage
(`answer_rows`), inside a transaction that first takes the chat with `lock_unheld_chat`: an
operator who took the chat over while the model was thinking wins, and the answer is dropped
(`drop_for_operator` says so on the texts it would have answered).

The retry and fallback policy lives here too. A job (SMS reply, opening) is retried by RQ with the
agent's backoff, and on its last attempt a final failure brings the agent's fallback text
(`falls_back`, `fallback_text`); an API request retries in process (`with_retries`), its
sleeps capped because a caller holds the HTTP request open.

Each transport keeps only its own part: SMS splits, sends and handles opt-out and keywords
(replies.py, outbound.py); the API holds the HTTP request and the chat's completion slots.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from gateway.agent import llm, spend, tools
from gateway.agent.prompt import build_messages
from gateway.config import Settings
from gateway.errors import GatewayError, PermanentError, TransientError
from gateway.storage.models import Agent, Chat, Message, MessageKind, ReplyState, Role

log = logging.getLogger(__name__)

# What the person gets when the model cannot answer and the agent has no fallback_message.
FALLBACK_MESSAGE = "Sorry, I can't answer right now. Please try again later."
# One in-process retry sleep is at most this long, and all of a turn's sleeps together at most the
# budget: the caller is holding an HTTP request open.
MAX_RETRY_SLEEP = 10.0
RETRY_SLEEP_BUDGET = 30.0
# The error code left on texts whose answer was dropped because an operator took the chat over.
OPERATOR_TOOK_OVER = "operator_held"
OPERATOR_TOOK_OVER_REASON = (
    "An operator took the chat over while the agent was writing its answer; the answer was not sent."
)


class BudgetExhausted(PermanentError):
    """A daily token budget is spent: no model call is made until it resets (midnight UTC)."""

    def __init__(self, reason: str) -> None:
        """Keep the budget's own sentence."""
        super().__init__(reason, ReplyState.BUDGET_EXHAUSTED.value)


def build_prompt(
    settings: Settings, chat: Chat, agent: Agent, *, upto_message_id: int | None = None, images: bool = False
) -> list[dict[str, Any]]:
    """The messages the model reads for this chat: the agent's settings, memory and the chat's turns."""
    return build_messages(chat, agent, settings, upto_message_id=upto_message_id, images=images)


def check_budget(settings: Settings, agent: Agent) -> None:
    """Raise BudgetExhausted when the agent's or the gateway's daily token budget is spent: less
    is left than one call's max_tokens (calls in flight hold their reservations)."""
    reason = spend.budget_refusal(settings, agent, need=agent.max_tokens or 0)
    if reason is not None:
        raise BudgetExhausted(f"{reason} No model call until it resets at midnight UTC.")


def ask(
    settings: Settings,
    agent: Agent,
    chat: Chat | None,
    messages: list[dict[str, Any]],
    offered: list[dict[str, Any]] | None = None,
    tool_choice: str = "auto",
) -> llm.Completion:
    """One model call for `chat` with the agent's model settings; its tokens are counted.

    Every model call of a conversation turn goes through here (the tool loop, `answer_with_tools`,
    wraps this function, offering the agent's tools as `offered`), so the token budgets see every
    call. Before the call its estimated size (prompt, tools, max_tokens) is reserved against the
    agent's and the gateway's daily budgets (BudgetExhausted when it does not fit); the answer's
    reported tokens replace the reservation, a failure releases it. No database connection is
    needed or held.
    """
    try:
        reservation = spend.reserve(
            settings, agent, spend.estimate_tokens(messages, offered, agent.max_tokens)
        )
    except spend.OverBudget as exc:
        raise BudgetExhausted(f"{exc.reason} No model call until it resets at midnight UTC.") from None
    return reservation.spend_on(
        lambda: llm.complete(
            settings,
            model=agent.model or settings.openai_model,
            messages=messages,
            temperature=agent.temperature,
            max_tokens=agent.max_tokens,
            tools=offered,
            tool_choice=tool_choice,
            agent_id=agent.agent_id,
        )
    )


def retry_sleep(retry_delay: float, attempt: int) -> float:
    """Seconds to wait before retry number `attempt` (0-based): doubling, ±25% jitter, capped."""
    base = max(retry_delay, 0.0) * (2**attempt)
    return min(MAX_RETRY_SLEEP, base * random.uniform(0.75, 1.25))


def with_retries(settings: Settings, agent: Agent, call: Callable[[], llm.Completion]) -> llm.Completion:
    """`call()` (one `ask`), with TransientError retried `agent.retry_attempts` times in process.

    PermanentError is not retried. The budget is checked before each retry too: tokens spent by
    others meanwhile count.
    """
    slept = 0.0
    attempt = 0
    while True:
        try:
            return call()
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
            check_budget(settings, agent)


def answer_with_tools(
    settings: Settings,
    agent: Agent,
    chat: Chat | None,
    messages: list[dict[str, Any]],
    *,
    retries: bool = False,
) -> tools.ToolRun:
    """The turn's answer: the model offered the agent's tools (gateway/agent/tools.py runs the calls),
    each round one `ask` (`with_retries` with `retries`, for a caller holding an HTTP request).

    Without a chat (nobody to tell a tool about) or without tools, it is one model call.
    """
    chat_ref = tools.ChatRef.of(chat) if chat is not None else None

    def one_call(
        turn: list[dict[str, Any]], offered: list[dict[str, Any]] | None, choice: str
    ) -> llm.Completion:
        if retries:
            return with_retries(settings, agent, lambda: ask(settings, agent, chat, turn, offered, choice))
        return ask(settings, agent, chat, turn, offered, choice)

    return tools.run(settings, agent, chat_ref, messages, call=one_call)


def falls_back(agent: Agent, error: GatewayError, last_attempt: bool) -> bool:
    """True when this model failure is final and the agent sends its fallback text."""
    final = isinstance(error, PermanentError) or last_attempt
    return final and agent.fallback_enabled is not False


def fallback_text(agent: Agent) -> str:
    """What the person gets when the model cannot answer."""
    return (agent.fallback_message or "").strip() or FALLBACK_MESSAGE


def lock_unheld_chat(chat_id: str, now: datetime) -> bool:
    """In the answer's storing transaction: mark the chat active, lock its row; False when held.

    One conditional UPDATE, so an operator's take-over either lands before it (the answer is
    dropped) or waits for the answer's transaction (and the answer is the agent's last word).
    The row lock also serialises two attempts storing an answer to one chat.
    """
    return bool(
        Chat.update(last_activity_at=now)
        .where((Chat.chat_id == chat_id) & Chat.operator_held_at.is_null())
        .execute()
    )


def drop_for_operator(chat_id: str, upto: int, now: datetime) -> list[int]:
    """The operator holds the chat: its texts waiting for the answer need none; return their ids.

    Each keeps a readable reason (error_code `operator_held`), so the console shows why the agent
    said nothing.
    """
    waiting = (Message.chat == chat_id) & (Message.role == Role.USER.value) & (Message.id <= upto)
    waiting &= Message.reply_state == ReplyState.PENDING.value
    ids = [row.id for row in Message.select(Message.id).where(waiting)]
    if ids:
        Message.update(
            reply_state=ReplyState.NONE.value,
            error_code=OPERATOR_TOOK_OVER,
            error_message=OPERATOR_TOOK_OVER_REASON,
            updated_at=now,
        ).where(Message.id.in_(ids)).execute()
    log.info("chat %s: an operator took it over mid-answer; the answer to %s is dropped", chat_id, ids)
    return ids


def answer_rows(
    chat_id: str,
    texts: list[str],
    completion: llm.Completion | None,
    now: datetime,
    *,
    reply_to: int | None = None,
    kind: MessageKind = MessageKind.TEXT,
    status: str | None = None,
    from_number: str | None = None,
    to_number: str | None = None,
    media: list[dict] | None = None,
    details: dict | None = None,
    tool_calls: list[dict] | None = None,
) -> list[dict[str, Any]]:
    """The rows of one stored agent message, one per part (an API answer is one part).

    The first part carries the model's usage, the tool calls made on the way (and any media or
    template details), so a reply's cost is counted once however many SMS parts it became.
    """
    first = completion if completion is not None else llm.Completion("")
    return [
        {
            "chat": chat_id,
            "role": Role.AGENT.value,
            "kind": kind.value,
            "content": text,
            "media": (media or []) if index == 0 else [],
            "details": details if index == 0 else None,
            "status": status,
            "from_number": from_number,
            "to_number": to_number,
            "reply_to": reply_to,
            "part_index": index,
            "prompt_tokens": first.prompt_tokens if index == 0 else None,
            "completion_tokens": first.completion_tokens if index == 0 else None,
            "tool_calls": (tool_calls or None) if index == 0 else None,
            "created_at": now,
            "updated_at": now,
        }
        for index, text in enumerate(texts)
    ]
