"""Post-chat analysis: queued when a chat ends (API end, auto-close, STOP), stored on the chat."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from rq import Queue

from gateway.agent import analysis, spend
from gateway.agent.analysis import (
    ANALYSIS_INSTRUCTIONS,
    ANALYSIS_MAX_MESSAGES,
    analysis_job_id,
    coerce,
    schedule_analysis,
    validate_analysis_fields,
)
from gateway.errors import TransientError
from gateway.queue import JobSerializer, job_queue, queue_name
from gateway.storage.models import Agent, Chat, ChatType, Message, Role, utcnow
from tests.conftest import GATEWAY_API_KEY, SimpleWorker, post_twilio
from tests.payloads import OUR_NUMBER, PERSON, inbound_sms
from workers import context, jobs, memory_jobs

AUTH = {"Authorization": f"Bearer {GATEWAY_API_KEY}"}
FIELDS = [
    {"name": "appointment_booked", "type": "boolean", "description": "Did the person book a visit?"},
    {"name": "party_size", "type": "number", "description": "How many people are coming."},
    {"name": "slot", "type": "enum", "choices": ["morning", "afternoon"], "description": "When."},
    {"name": "notes", "description": "Anything else worth knowing."},
]
ANSWER = {
    "chat_summary": "The person booked a table for four in the morning.",
    "user_sentiment": "Positive",
    "chat_successful": True,
    "custom_analysis_data": {"appointment_booked": "yes", "party_size": "4", "slot": "Morning", "notes": 7},
}


@pytest.fixture
def configured(app, settings):
    """Jobs run in this process see the test settings."""
    context.configure(settings)
    yield settings
    context.configure(None)


@pytest.fixture
def queue(settings, redis_conn) -> Queue:
    """The gateway's queue on the test Redis."""
    return job_queue(queue_name(settings), redis_conn)


def run_jobs(queue: Queue) -> None:
    """Run every queued job in this process until the queue is empty."""
    SimpleWorker([queue], connection=queue.connection, serializer=JobSerializer).work(
        burst=True, with_scheduler=False
    )


def analyst(answer: dict | str = ANSWER):
    """A responder answering analysis requests with `answer` and everything else with 'Sure.'."""

    def respond(request: dict) -> str:
        if request["messages"][0]["content"].startswith(ANALYSIS_INSTRUCTIONS):
            return answer if isinstance(answer, str) else "Here you go:\n" + json.dumps(answer)
        return "Sure."

    return respond


def analysis_requests(fake_model) -> list[dict]:
    """The analysis requests the model received."""
    return [r for r in fake_model.requests if r["messages"][0]["content"].startswith(ANALYSIS_INSTRUCTIONS)]


def booking_agent(**fields) -> Agent:
    """An agent whose goal is to book a table, with custom analysis fields."""
    fields.setdefault("system_prompt", "Book a table for {{restaurant}}. Goal: a confirmed booking.")
    fields.setdefault("analysis_fields", FIELDS)
    return Agent.create(**fields)


# --- the custom field shape ------------------------------------------------------------------------


def test_valid_fields_are_normalized():
    assert validate_analysis_fields(FIELDS) == [
        {"name": "appointment_booked", "type": "boolean", "description": "Did the person book a visit?"},
        {"name": "party_size", "type": "number", "description": "How many people are coming."},
        {"name": "slot", "type": "enum", "description": "When.", "choices": ["morning", "afternoon"]},
        {"name": "notes", "type": "string", "description": "Anything else worth knowing."},
    ]
    assert validate_analysis_fields([]) == []


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"name": "x"}, "analysis_fields: Input should be a valid list"),
        (["x"], "[0]: Input should be a valid dictionary"),
        ([{"type": "boolean"}], "[0].name: Field required"),
        ([{"name": "has space"}], "[0].name: String should match pattern"),
        ([{"name": "9lives"}], "[0].name"),
        ([{"name": "a"}, {"name": "a"}], "name 'a' is used twice"),
        ([{"name": "a", "type": "date"}], "[0].type: Input should be 'string', 'number'"),
        ([{"name": "a", "type": "enum"}], "choices must be a non-empty array"),
        ([{"name": "a", "type": "enum", "choices": ["x", 1]}], "[0].choices[1]: Input should be a valid"),
        ([{"name": "a", "choices": ["x"]}], "only allowed on enum"),
        ([{"name": "a", "description": 5}], "[0].description: Input should be a valid string"),
        ([{"name": f"f{i}"} for i in range(51)], "at most 50"),
    ],
)
def test_invalid_fields_say_what_is_wrong(fields, reason):
    with pytest.raises(ValueError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        validate_analysis_fields(fields)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ({"type": "boolean"}, True, True),
        ({"type": "boolean"}, "No", False),
        ({"type": "boolean"}, "maybe", None),
        ({"type": "number"}, "4", 4),
        ({"type": "number"}, 2.5, 2.5),
        ({"type": "number"}, "lots", None),
        ({"type": "number"}, True, None),
        ({"type": "enum", "choices": ["morning", "afternoon"]}, "AFTERNOON ", "afternoon"),
        ({"type": "enum", "choices": ["morning", "afternoon"]}, "night", None),
        ({"type": "string"}, 7, "7"),
        ({"type": "string"}, None, None),
    ],
)
def test_values_are_coerced_to_their_field_type(field, value, expected):
    assert coerce(value, field) == expected


# --- the job ---------------------------------------------------------------------------------------


def test_analysis_is_bounded_and_judged_against_the_agent_prompt(configured, fake_model):
    fake_model.responder = analyst()
    agent = booking_agent()
    chat = Chat.create(
        agent=agent,
        chat_type=ChatType.API.value,
        dynamic_variables={"restaurant": "Chez Zed"},
        summary="EARLY FACTS",
    )
    rows = [
        {
            "chat": chat.chat_id,
            "role": (Role.USER if i % 2 == 0 else Role.AGENT).value,
            "content": f"m{i:03d}",
        }
        for i in range(150)
    ]
    Message.insert_many(rows).execute()

    result = memory_jobs.analyze_chat(chat.chat_id)

    [request] = analysis_requests(fake_model)
    system, user = request["messages"][0]["content"], request["messages"][1]["content"]
    assert "Book a table for Chez Zed. Goal: a confirmed booking." in system
    assert '"appointment_booked" (boolean): Did the person book a visit?' in system
    assert '"slot" (one of "morning", "afternoon")' in system
    assert "EARLY FACTS" in user  # older messages are left out, so the rolling summary stands in
    assert "m049" not in user and "m050" in user and "m149" in user
    assert result["messages_analyzed"] == ANALYSIS_MAX_MESSAGES
    stored = Chat.get_by_id(chat.chat_id).chat_analysis
    assert stored == result
    assert {k: stored[k] for k in ("chat_summary", "user_sentiment", "chat_successful")} == {
        "chat_summary": ANSWER["chat_summary"],
        "user_sentiment": "positive",
        "chat_successful": True,
    }
    assert stored["custom_analysis_data"] == {
        "appointment_booked": True,
        "party_size": 4,
        "slot": "morning",
        "notes": "7",
    }
    assert stored["analyzed_at"].endswith("Z")


def test_an_answer_without_json_is_retried(configured, fake_model):
    fake_model.responder = analyst("I think it went well.")
    chat = Chat.create(agent=booking_agent(), chat_type=ChatType.API.value)
    Message.create(chat=chat, role=Role.USER.value, content="hi")

    with pytest.raises(TransientError):
        analysis.analyze_chat(configured, chat.chat_id)
    assert Chat.get_by_id(chat.chat_id).chat_analysis is None

    fake_model.responder = analyst({"chat_summary": "Hi.", "user_sentiment": "meh", "chat_successful": "no"})
    result = analysis.analyze_chat(configured, chat.chat_id)
    assert (result["user_sentiment"], result["chat_successful"]) == (None, False)
    assert result["custom_analysis_data"] == dict.fromkeys(f["name"] for f in FIELDS)


def test_the_analysis_is_capped_and_counted_against_the_budget(configured, fake_model):
    """The analysis call sends its own max_tokens (not the agent's reply cap), its tokens count,
    and with too little budget left for its reservation no call is made."""
    fake_model.responder = analyst()
    agent = booking_agent(max_tokens=30, tokens_per_day=4000)
    chat = Chat.create(agent=agent, chat_type=ChatType.API.value)
    Message.create(chat=chat, role=Role.USER.value, content="hi")
    assert analysis.analyze_chat(configured, chat.chat_id) is not None
    [request] = analysis_requests(fake_model)
    assert request["max_tokens"] == analysis.ANALYSIS_MAX_TOKENS
    used = spend.agent_usage(configured, agent)["tokens_today"]
    assert used > 0

    spend.record_tokens(configured, agent.agent_id, 4000 - used - analysis.ANALYSIS_MAX_TOKENS, 0)
    assert analysis.analyze_chat(configured, chat.chat_id) is None  # the prompt does not fit too
    assert len(fake_model.requests) == 1


def test_a_chat_without_texts_from_the_person_costs_no_model_call(configured, fake_model):
    chat = Chat.create(agent=booking_agent(analysis_fields=[]), chat_type=ChatType.API.value)
    result = analysis.analyze_chat(configured, chat.chat_id)
    assert result["chat_successful"] is False and result["messages_analyzed"] == 0
    assert not fake_model.requests


def test_scheduling_is_once_per_pending_analysis(app, queue):
    chat = Chat.create(agent=booking_agent(), chat_type=ChatType.API.value)
    job = schedule_analysis(queue, chat)
    assert job.id == analysis_job_id(chat.chat_id) and job.func_name == analysis.ANALYSIS_JOB
    assert schedule_analysis(queue, chat) is None
    assert len(queue) == 1
    assert schedule_analysis(None, chat) is None


# --- where chats end -------------------------------------------------------------------------------


def test_ending_an_api_chat_analyses_it(client, configured, fake_model, queue):
    fake_model.responder = analyst()
    agent_id = client.post(
        "/v1/agents", json={"system_prompt": "Book a table.", "analysis_fields": FIELDS}, headers=AUTH
    ).json["agent_id"]
    chat_id = client.post("/v1/chats", json={"agent_id": agent_id}, headers=AUTH).json["chat_id"]
    client.post(
        f"/v1/chats/{chat_id}/completions", json={"content": "A table for 4 tomorrow morning"}, headers=AUTH
    )

    ended = client.post(f"/v1/chats/{chat_id}/end", headers=AUTH)
    assert ended.status_code == 200 and ended.json["chat_analysis"] is None  # analysed in the background
    run_jobs(queue)

    shown = client.get(f"/v1/chats/{chat_id}", headers=AUTH).json["chat_analysis"]
    assert shown["chat_successful"] is True and shown["user_sentiment"] == "positive"
    assert shown["custom_analysis_data"]["party_size"] == 4
    [request] = analysis_requests(fake_model)
    assert "Person: A table for 4 tomorrow morning\nAssistant: Sure." in request["messages"][1]["content"]


def test_auto_close_analyses_the_silent_chat(configured, fake_model, fake_twilio, queue):
    fake_model.responder = analyst()
    agent = booking_agent(end_chat_after_silence_ms=1000)
    chat = Chat.create(
        agent=agent,
        chat_type=ChatType.SMS.value,
        from_number=OUR_NUMBER,
        to_number=PERSON,
        ongoing_pair=f"{OUR_NUMBER}|{PERSON}",
        last_activity_at=utcnow() - timedelta(minutes=1),
    )
    Message.create(chat=chat, role=Role.USER.value, content="table for 4?", status="received")

    assert jobs.close_silent_chats() == 1
    run_jobs(queue)

    assert Chat.get_by_id(chat.chat_id).chat_analysis["custom_analysis_data"]["party_size"] == 4


def test_stop_analyses_the_chat(client, configured, fake_model, queue):
    fake_model.responder = analyst()
    Agent.create(
        agent_id="agent_default", system_prompt="Book a table.", is_default=True, analysis_fields=FIELDS
    )
    post_twilio(client, "/twilio/sms", inbound_sms("I need a table for 4"))
    chat = Chat.get(Chat.to_number == PERSON)
    run_jobs(queue)  # the reply

    assert post_twilio(client, "/twilio/sms", inbound_sms("STOP")).status_code == 200
    run_jobs(queue)

    stored = Chat.get_by_id(chat.chat_id).chat_analysis
    assert stored is not None and stored["custom_analysis_data"]["party_size"] == 4
    assert len(analysis_requests(fake_model)) == 1
