"""Structured answers: json_schema where the endpoint takes it, else json_object, else instructions,
with what worked remembered per endpoint and model in Redis."""

from __future__ import annotations

import json

import pytest

from gateway.agent import analysis, memory, structured
from gateway.errors import PermanentError
from gateway.storage.models import Agent, Chat, ChatType, Message, Role
from workers import context

FIELDS = [
    {"name": "booked", "type": "boolean", "description": "Did the person book?"},
    {"name": "slot", "type": "enum", "choices": ["morning", "afternoon"]},
]
ANSWER = {
    "chat_summary": "A booking for the morning.",
    "user_sentiment": "positive",
    "chat_successful": True,
    "custom_analysis_data": {"booked": True, "slot": "morning"},
}


@pytest.fixture
def configured(app, settings):
    """Jobs run in this process see the test settings."""
    context.configure(settings)
    yield settings
    context.configure(None)


def ended_chat() -> Chat:
    """An API chat with one exchange, of an agent with custom analysis fields."""
    agent = Agent.create(system_prompt="Book a table.", analysis_fields=FIELDS, model="small-model")
    chat = Chat.create(agent=agent, chat_type=ChatType.API.value)
    Message.create(chat=chat, role=Role.USER.value, content="a table tomorrow morning please")
    Message.create(chat=chat, role=Role.AGENT.value, content="Booked for 9am.")
    return chat


def kinds_asked(fake_model) -> list[str | None]:
    """The response_format kind of every request the model received, in order."""
    return [(r.get("response_format") or {}).get("type") for r in fake_model.requests]


def remembered(settings, redis_conn) -> str | None:
    """What the gateway remembers for the fake endpoint and the agents' model."""
    value = redis_conn.get(structured.format_memory_key(settings, "small-model"))
    return value.decode() if value else None


def test_an_endpoint_taking_json_schema_gets_the_strict_schema_of_the_agents_fields(
    configured, fake_model, redis_conn
):
    fake_model.reply_with(json.dumps(ANSWER))
    chat = ended_chat()

    result = analysis.analyze_chat(configured, chat.chat_id)

    [request] = fake_model.requests
    response_format = request["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["strict"] is True
    schema = response_format["json_schema"]["schema"]
    custom = schema["properties"]["custom_analysis_data"]
    assert custom["required"] == ["booked", "slot"] and custom["additionalProperties"] is False
    assert custom["properties"]["slot"]["enum"] == ["morning", "afternoon", None]
    assert custom["properties"]["booked"]["type"] == ["boolean", "null"]
    assert result["custom_analysis_data"] == {"booked": True, "slot": "morning"}
    assert remembered(configured, redis_conn) == "json_schema"


def test_an_endpoint_taking_only_json_object_is_asked_with_it_from_then_on(
    configured, fake_model, redis_conn
):
    fake_model.accepted_formats = {"json_object"}
    fake_model.reply_with(json.dumps(ANSWER))

    first = analysis.analyze_chat(configured, ended_chat().chat_id)
    assert kinds_asked(fake_model) == ["json_schema", "json_object"]
    assert first["chat_successful"] is True
    assert remembered(configured, redis_conn) == "json_object"

    # The next structured call for the same endpoint and model (here a summary) skips the refusal.
    fake_model.requests.clear()
    fake_model.reply_with(json.dumps({"summary": "The person booked a morning table."}))
    chat = ended_chat()
    Agent.update(summary_memory=True, full_session_memory=False).where(
        Agent.agent_id == chat.agent_id
    ).execute()
    outcome = memory.update_summary(configured, chat.chat_id)
    assert outcome.outcome == "updated"
    assert kinds_asked(fake_model) == ["json_object"]
    assert Chat.get_by_id(chat.chat_id).summary == "The person booked a morning table."


def test_an_endpoint_refusing_every_response_format_gets_instructions_only(
    configured, fake_model, redis_conn
):
    fake_model.accepted_formats = set()
    fake_model.reply_with("Sure! Here it is:\n" + json.dumps(ANSWER) + "\nHope that helps.")

    result = analysis.analyze_chat(configured, ended_chat().chat_id)
    assert kinds_asked(fake_model) == ["json_schema", "json_object", None]
    assert result["chat_summary"] == ANSWER["chat_summary"]
    assert remembered(configured, redis_conn) == "instructions"

    fake_model.requests.clear()
    analysis.analyze_chat(configured, ended_chat().chat_id)
    assert kinds_asked(fake_model) == [None]


def test_an_error_that_is_not_a_refusal_changes_nothing(configured, fake_model, redis_conn):
    fake_model.fail_next(401)
    with pytest.raises(PermanentError):
        analysis.analyze_chat(configured, ended_chat().chat_id)
    assert kinds_asked(fake_model) == ["json_schema"]
    assert remembered(configured, redis_conn) is None


def test_a_profile_is_asked_with_a_strict_schema_and_stored_without_empty_keys(configured, fake_model):
    fake_model.reply_with(
        json.dumps(
            {"name": "Ada", "preferences": [], "goals": [], "communication_style": None, "facts": ["cat"]}
        )
    )
    chat = ended_chat()
    chat.user_id = "user-1"
    chat.chat_status = "ended"
    chat.save()

    outcome = memory.update_profile(configured, "user:user-1", model="small-model")

    assert outcome.outcome == "updated", outcome
    [request] = fake_model.requests
    assert request["response_format"]["json_schema"]["name"] == "profile"
    assert memory.UserProfile.get(memory.UserProfile.key == "user:user-1").profile == {
        "name": "Ada",
        "facts": ["cat"],
    }
