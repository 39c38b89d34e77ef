"""The "answer this chat" service shared by SMS replies, API completions and outbound openings:
the token budget is checked before every model call and counts every call's tokens, and an
operator who takes a chat over while the model is thinking wins over the model's answer."""

from __future__ import annotations

import pytest

from gateway.agent import spend
from gateway.conversations import answering, operator, outbound, replies, sessions
from gateway.storage.db import database
from gateway.storage.models import Agent, Chat, ChatStatus, Message, MessageKind, ReplyState, Role
from tests.conftest import GATEWAY_API_KEY

AUTH = {"Authorization": f"Bearer {GATEWAY_API_KEY}"}
OUR = "+15550001000"
THEIRS = "+15557654321"


def api_chat(client, **agent_fields) -> tuple[str, str]:
    """A new agent (with these fields) and an API chat with it: (agent_id, chat_id)."""
    agent_id = client.post("/v1/agents", json=agent_fields, headers=AUTH).get_json()["agent_id"]
    chat = client.post("/v1/chats", json={"agent_id": agent_id}, headers=AUTH)
    assert chat.status_code == 201, chat.get_json()
    return agent_id, chat.get_json()["chat_id"]


def sms_chat(**agent_fields) -> Chat:
    """The ongoing SMS chat of our number and the person's, opened as a first text opens it."""
    session = sessions.sms_session(OUR, THEIRS)
    Agent.update(retry_delay=0, **agent_fields).where(Agent.agent_id == session.agent_id).execute()
    return Chat.get_by_id(session.chat_id)


def test_api_completion_over_the_token_budget_is_refused_before_the_model(client, settings, fake_model):
    """An agent at its daily token cap gets 429 budget_exhausted; no model call, nothing recorded."""
    agent_id, chat_id = api_chat(client, tokens_per_day=100)
    spend.record_tokens(settings, agent_id, 80, 20)

    response = client.post(f"/v1/chats/{chat_id}/completions", json={"content": "hi"}, headers=AUTH)

    assert response.status_code == 429, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "budget_exhausted"
    assert "100 model tokens" in error["message"] and "Nothing was recorded" in error["message"]
    assert fake_model.requests == []
    assert Message.select().where(Message.chat == chat_id).count() == 0


def test_api_completion_whose_reservation_does_not_fit_is_refused(client, settings, fake_model):
    """Tokens are left (100 > max_tokens 90), but not for the call's reservation (prompt estimate +
    90): 429 budget_exhausted, no model call, nothing counted, nothing left reserved."""
    agent_id, chat_id = api_chat(client, tokens_per_day=100, max_tokens=90)

    response = client.post(
        f"/v1/chats/{chat_id}/completions", json={"content": "tell me about your menu"}, headers=AUTH
    )

    assert response.status_code == 429, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "budget_exhausted" and "calls in flight" in error["message"]
    assert fake_model.requests == []
    agent = Agent.get_by_id(agent_id)
    assert spend.agent_usage(settings, agent)["tokens_today"] == 0
    assert spend.budget_refusal(settings, agent, need=90) is None  # nothing stays reserved


def test_api_completion_tokens_count_in_the_agents_usage(client, settings, fake_model):
    """The tokens of a completion show in /v1/agents/{id}/usage and on the stored answer."""
    agent_id, chat_id = api_chat(client, tokens_per_day=100_000)
    fake_model.reply_with("Hello there, friend.")

    response = client.post(f"/v1/chats/{chat_id}/completions", json={"content": "hi"}, headers=AUTH)

    assert response.status_code == 200, response.get_json()
    answer = Message.get((Message.chat == chat_id) & (Message.role == Role.AGENT.value))
    spent = answer.prompt_tokens + answer.completion_tokens
    assert spent > 0
    usage = client.get(f"/v1/agents/{agent_id}/usage", headers=AUTH).get_json()
    assert usage["tokens_today"] == spent


def test_takeover_while_the_model_thinks_drops_the_answer(configured, fake_model, fake_twilio):
    """The operator takes the chat over mid-call: the person gets no agent reply, the text says why."""
    chat = sms_chat()
    text = Message.create(
        chat=chat, role=Role.USER.value, content="hello?", status="received", reply_state="pending"
    )

    def take_over_then_answer(body: dict) -> str:
        # The model call is in flight: an operator takes the chat over before it answers.
        with database.connection_context():
            operator.take_over(chat.chat_id)
        return "The agent's late answer."

    fake_model.responder = take_over_then_answer

    outcome = replies.answer_message(configured, text.id)

    assert len(fake_model.requests) == 1
    assert outcome.outcome == "held"
    assert fake_twilio.messages == []
    assert not Message.select().where((Message.chat == chat) & (Message.role == Role.AGENT.value)).exists()
    handled = Message.get_by_id(text.id)
    assert handled.reply_state == ReplyState.NONE.value
    assert handled.error_code == answering.OPERATOR_TOOK_OVER
    assert "operator took the chat over" in handled.error_message
    assert Chat.get_by_id(chat.chat_id).operator_held_at is not None


def test_agent_written_opening_over_the_budget_is_not_asked(configured, fake_model, fake_twilio):
    """An opening the agent would write is refused before the model call when the budget is spent."""
    chat = sms_chat(tokens_per_day=50)
    spend.record_tokens(configured, chat.agent_id, 50, 0)

    with pytest.raises(answering.BudgetExhausted):
        outbound.send_opening(configured, chat.chat_id)

    assert fake_model.requests == [] and fake_twilio.messages == []
    ended = Chat.get_by_id(chat.chat_id)
    assert (ended.chat_status, ended.end_reason) == (ChatStatus.ERROR.value, "opening_failed")
    notice = Message.get((Message.chat == chat) & (Message.kind == MessageKind.NOTICE.value))
    assert notice.error_code == ReplyState.BUDGET_EXHAUSTED.value
    assert "50 model tokens" in notice.error_message


def test_agent_written_opening_counts_its_tokens(configured, fake_model, fake_twilio):
    """Under the budget the opening is written, sent, and its tokens counted."""
    chat = sms_chat(tokens_per_day=100_000)
    fake_model.reply_with("Hi! Your order is ready.")

    assert outbound.send_opening(configured, chat.chat_id) == 1

    assert [m["Body"].splitlines()[0] for m in fake_twilio.messages] == ["Hi! Your order is ready."]
    opening = Message.get((Message.chat == chat) & (Message.role == Role.AGENT.value))
    agent = Agent.get_by_id(chat.agent_id)
    spent = opening.prompt_tokens + opening.completion_tokens
    assert spent > 0 and spend.agent_usage(configured, agent)["tokens_today"] == spent


def test_takeover_while_the_agent_writes_an_opening_drops_it(configured, fake_model, fake_twilio):
    """An operator who takes an outbound chat over while the agent writes its opening wins."""
    chat = sms_chat()

    def take_over_then_answer(body: dict) -> str:
        with database.connection_context():
            operator.take_over(chat.chat_id)
        return "Hello from the agent."

    fake_model.responder = take_over_then_answer

    assert outbound.send_opening(configured, chat.chat_id) == 0

    assert len(fake_model.requests) == 1 and fake_twilio.messages == []
    assert not Message.select().where(Message.chat == chat).exists()
    assert outbound.send_opening(configured, chat.chat_id) == 0  # held: the model is not asked again
    assert len(fake_model.requests) == 1
