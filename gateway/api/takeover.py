"""Human takeover over the API: hold an SMS chat for a person, text the person by hand, hand it back.

The domain rules live in gateway/conversations/operator.py (the console uses the same functions):
while held, the person's texts are recorded but the agent does not answer them and the silence
timer does not end the chat; the operator's text is sent like an agent reply (stored first, split
into parts, status-tracked, refused when the person opted out or, on WhatsApp, outside the 24-hour
window) and marked `kind` operator.
"""

from __future__ import annotations

from typing import Annotated

from flask import current_app
from pydantic import Field

from gateway.api.chats import CHAT_ID, detail, get_chat_or_404
from gateway.api.contract import operation
from gateway.api.errors import ApiError
from gateway.api.schemas import NOT_BLANK, Body, ChatDetail
from gateway.conversations import operator

REFUSALS = "Not an SMS chat (`not_sms_chat`), or not ongoing (`chat_not_ongoing`)."


class OperatorMessageCreate(Body):
    """POST /v1/chats/{chat_id}/messages: the operator's text to the person."""

    text: Annotated[
        str,
        Field(
            min_length=1,
            max_length=operator.MAX_TEXT,
            description="Sent by SMS as the operator's words, split into parts like an agent reply; "
            "not blank.",
            json_schema_extra={"pattern": NOT_BLANK},
        ),
    ]


def _refused(exc: operator.OperatorRefused) -> ApiError:
    """The domain's refusal as the API's error."""
    return ApiError(exc.status, exc.code, exc.message)


@operation(
    "POST",
    "/chats/<chat_id>/takeover",
    operation_id="takeOverChat",
    tag="chats",
    summary="Take an SMS chat over (pause the agent)",
    description="A human operator holds the chat (`operator_held_at` is set): the person's texts are still "
    "recorded, but the agent does not answer them and the silence timer does not end the chat, until "
    "`handback`. Taking over a held chat changes nothing. The body is ignored.",
    ok=(200, ChatDetail, "The chat, held by an operator."),
    errors={409: REFUSALS},
    path_params=CHAT_ID,
)
def take_over_chat(chat_id: str) -> ChatDetail:
    """Hold the chat for a human operator."""
    try:
        operator.take_over(chat_id)
    except operator.OperatorRefused as exc:
        raise _refused(exc) from None
    return detail(get_chat_or_404(chat_id))


@operation(
    "POST",
    "/chats/<chat_id>/handback",
    operation_id="handBackChat",
    tag="chats",
    summary="Hand a chat back to the agent",
    description="The agent answers the person's next text again (`operator_held_at` is null). Texts that "
    "arrived while the chat was held stay unanswered. The body is ignored.",
    ok=(200, ChatDetail, "The chat, answered by its agent again."),
    path_params=CHAT_ID,
)
def hand_back_chat(chat_id: str) -> ChatDetail:
    """Let the agent answer again."""
    operator.hand_back(chat_id)
    return detail(get_chat_or_404(chat_id))


@operation(
    "POST",
    "/chats/<chat_id>/messages",
    operation_id="sendOperatorMessage",
    tag="chats",
    summary="Text the person as the operator",
    description="Only while the chat is held (`takeover`). The text is stored as messages with `role` agent "
    "and `kind` operator (status queued), then sent by the worker the way agent replies are; the agent "
    "reads them later as its own earlier turns.",
    body=OperatorMessageCreate,
    ok=(202, ChatDetail, "The chat with the operator's text queued."),
    errors={
        409: REFUSALS + " Not held by an operator (`not_held`); the person opted out (`opted_out`); "
        "a WhatsApp chat whose person last wrote more than 24 hours ago (`outside_session_window`: "
        "WhatsApp then allows only approved templates, so nothing is stored or sent).",
    },
    path_params=CHAT_ID,
)
def send_operator_message(chat_id: str, body: OperatorMessageCreate) -> ChatDetail:
    """Queue the operator's text to the person."""
    try:
        operator.send_operator_message(chat_id, body.text, current_app.task_queue)  # type: ignore[attr-defined]
    except operator.OperatorRefused as exc:
        raise _refused(exc) from None
    return detail(get_chat_or_404(chat_id))
