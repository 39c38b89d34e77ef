"""Agent memory: each setting changes what the model receives the way its name says.

The reply path is the real one (gateway.replies.answer_message, or the /v1 completions route),
the memory jobs run on a real Redis through RQ, and the model is the loopback fake whose
responder plays the agent, the summarizer and the profiler (`FakeBrain`), so each test can read
in `fake_model.requests` exactly what the model was given.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry as RedisRetry
from rq import Queue, Retry
from rq.job import JobStatus

from gateway.agent import memory, spend
from gateway.agent.analysis import ANALYSIS_INSTRUCTIONS
from gateway.agent.memory import (
    PROFILE_HEADING,
    PROFILE_INSTRUCTIONS,
    SUMMARY_HEADING,
    SUMMARY_INSTRUCTIONS,
    parse_json_object,
    schedule_after_turn,
    summary_threshold,
)
from gateway.conversations import replies
from gateway.queue import JobSerializer, fetch_job, job_queue, queue_name
from gateway.storage.models import Agent, Chat, ChatStatus, ChatType, Message, Role, UserProfile, utcnow
from tests.conftest import GATEWAY_API_KEY, SimpleWorker, free_port
from workers import context, jobs, memory_jobs

OUR = "+15550001000"
THEIRS = "+15557654321"
AUTH = {"Authorization": f"Bearer {GATEWAY_API_KEY}"}


# --- the fake model's brain ------------------------------------------------------------------------


def system_text(request: dict) -> str:
    """The system message of a chat completions request ('' when none)."""
    first = request["messages"][0]
    return first["content"] if first["role"] == "system" else ""


def kind_of(request: dict) -> str:
    """Which job sent a request: summary, profile, analysis, or the agent itself."""
    system = system_text(request)
    if system.startswith(SUMMARY_INSTRUCTIONS):
        return "summary"
    if system.startswith(PROFILE_INSTRUCTIONS):
        return "profile"
    if system.startswith(ANALYSIS_INSTRUCTIONS):
        return "analysis"
    return "agent"


def person_lines(text: str) -> list[str]:
    """What the person said, from a memory request's transcript."""
    return [line[len("Person: ") :] for line in text.splitlines() if line.startswith("Person: ")]


class FakeBrain:
    """A deterministic stand-in for the model: an honest summarizer, a JSON profiler, an agent.

    - summary: the old summary plus "The person said: <text>." for each new text (facts carry);
    - profile: the old profile JSON plus `name` from "my name is X" and every text as a fact,
      wrapped in prose and a code fence (as models without response_format answer);
    - agent: asked a question, names the facts it can see anywhere in its prompt; else "Noted.".
    """

    def __init__(self, facts: tuple[str, ...] = ("Zanzibar", "Biscuit")) -> None:
        """`facts`: the words the agent mentions when they are in its prompt."""
        self.facts = facts
        self.profile_answer: str | None = None  # overrides the profiler's answer

    def __call__(self, request: dict) -> str:
        """Answer one chat completions request."""
        kind = kind_of(request)
        user = request["messages"][-1]["content"]
        if kind == "summary":
            old = user.split("Current summary:\n", 1)[1].split("\n\nNew messages", 1)[0]
            said = " ".join(f"The person said: {line}." for line in person_lines(user))
            return (said if old == "(none yet)" else f"{old} {said}").strip()
        if kind == "profile":
            if self.profile_answer is not None:
                return self.profile_answer
            profile = json.loads(
                user.split("Current profile (JSON):\n", 1)[1].split("\n\nNew messages", 1)[0]
            )
            for line in person_lines(user):
                match = re.search(r"my name is (\w+)", line, re.I)
                if match:
                    profile["name"] = match.group(1)
                profile.setdefault("facts", []).append(line)
            return f"Here is the updated profile:\n```json\n{json.dumps(profile)}\n```"
        if kind == "analysis":
            return json.dumps(
                {"chat_summary": "A chat.", "user_sentiment": "positive", "chat_successful": True}
            )
        if not user.rstrip().endswith("?"):
            return "Noted."  # never repeats a fact unasked, so only memory can carry it
        prompt = "\n".join(m["content"] for m in request["messages"])
        known = [fact for fact in self.facts if fact in prompt]
        return f"I remember: {', '.join(known)}." if known else "I do not know."


def requests_of(fake_model, kind: str) -> list[dict]:
    """The requests one job (or the agent) sent."""
    return [r for r in fake_model.requests if kind_of(r) == kind]


# --- fixtures and builders -------------------------------------------------------------------------


@pytest.fixture
def configured(app, settings):
    """Jobs run in this process see the test settings."""
    context.configure(settings)
    yield settings
    context.configure(None)


@pytest.fixture
def brain(fake_model) -> FakeBrain:
    """The fake model answering as FakeBrain."""
    fake = FakeBrain()
    fake_model.responder = fake
    return fake


@pytest.fixture
def queue(settings, redis_conn) -> Queue:
    """The gateway's queue on the test Redis."""
    return job_queue(queue_name(settings), redis_conn)


def run_jobs(queue: Queue) -> None:
    """Run every queued job in this process until the queue is empty."""
    SimpleWorker([queue], connection=queue.connection, serializer=JobSerializer).work(
        burst=True, with_scheduler=False
    )


def new_agent(**fields) -> Agent:
    """An agent with a recognisable system prompt and no retry delays."""
    fields.setdefault("system_prompt", "You are a test agent.")
    fields.setdefault("retry_delay", 0)
    return Agent.create(**fields)


def sms_chat(agent: Agent, their_number: str = THEIRS) -> Chat:
    """An ongoing SMS chat between OUR number and theirs."""
    return Chat.create(
        agent=agent,
        chat_type=ChatType.SMS.value,
        from_number=OUR,
        to_number=their_number,
        ongoing_pair=f"{OUR}|{their_number}",
    )


def inbound(chat: Chat, body: str) -> Message:
    """An inbound SMS waiting for its answer, as the webhook records it."""
    return Message.create(
        chat=chat,
        role=Role.USER.value,
        content=body,
        status="received",
        from_number=chat.to_number,
        to_number=chat.from_number,
        reply_state="pending",
    )


def exchange(chat: Chat, text: str, answer: str) -> None:
    """One answered exchange, stored as the reply job stores it (no model call)."""
    message = inbound(chat, text)
    Message.update(reply_state="answered").where(Message.id == message.id).execute()
    Message.create(
        chat=chat,
        role=Role.AGENT.value,
        content=answer,
        status="delivered",
        twilio_sid=f"SM{message.id:032x}",
        reply_to=message,
        part_index=0,
    )


def fresh(chat: Chat) -> Chat:
    """The chat as stored now."""
    return Chat.get_by_id(chat.chat_id)


def text_and_answer(settings, fake_model, chat: Chat, body: str) -> dict:
    """The person texts `body`; the real reply path answers; returns the agent's model request."""
    message = inbound(chat, body)
    before = len(fake_model.requests)
    assert replies.answer_message(settings, message.id).outcome == "answered"
    return [r for r in fake_model.requests[before:] if kind_of(r) == "agent"][-1]


# --- pure rules ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_last_messages", "full_session_memory", "threshold"),
    [(20, True, 18), (4, True, 2), (3, True, 1), (1, True, 1), (0, True, 1), (20, False, 1)],
)
def test_summary_threshold_rule(num_last_messages, full_session_memory, threshold):
    agent = Agent(num_last_messages=num_last_messages, full_session_memory=full_session_memory)
    assert summary_threshold(agent) == threshold


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"name": "Ana"}', {"name": "Ana"}),
        (
            'Sure! Here it is:\n```json\n{"name": "Ana", "facts": ["x {y}"]}\n```',
            {"name": "Ana", "facts": ["x {y}"]},
        ),
        ('The {braces} first, then {"goals": {"a": 1}} and {"b": 2}', {"goals": {"a": 1}}),
        ('["not", "an", "object"]', None),
        ("no json at all", None),
        ('{"broken": ', None),
        ("", None),
    ],
)
def test_parse_json_object_is_robust(text, expected):
    assert parse_json_object(text) == expected


# --- num_last_messages and full_session_memory -----------------------------------------------------


def test_num_last_messages_limits_history_to_n(configured, fake_model, fake_twilio, brain):
    agent = new_agent(num_last_messages=4)
    chat = sms_chat(agent)
    for i in range(6):
        exchange(chat, f"text {i}", f"answer {i}")

    request = text_and_answer(configured, fake_model, chat, "text 6")

    assert request["messages"] == [
        {"role": "system", "content": "You are a test agent."},
        {"role": "assistant", "content": "answer 4"},
        {"role": "user", "content": "text 5"},
        {"role": "assistant", "content": "answer 5"},
        {"role": "user", "content": "text 6"},
    ]


def test_full_session_memory_off_sends_only_the_new_text(configured, fake_model, fake_twilio, brain):
    agent = new_agent(num_last_messages=20, full_session_memory=False)
    chat = sms_chat(agent)
    for i in range(3):
        exchange(chat, f"text {i}", f"answer {i}")

    request = text_and_answer(configured, fake_model, chat, "the new one")

    assert request["messages"] == [
        {"role": "system", "content": "You are a test agent."},
        {"role": "user", "content": "the new one"},
    ]


# --- summary_memory --------------------------------------------------------------------------------


def test_summary_carries_a_fact_from_beyond_the_window(configured, fake_model, fake_twilio, brain, queue):
    agent = new_agent(num_last_messages=4, summary_memory=True)
    chat = sms_chat(agent)
    exchange(chat, "My dog is called Biscuit", "What a lovely name!")
    for i in range(5):
        exchange(chat, f"small talk {i}", f"reply {i}")

    assert schedule_after_turn(queue, chat, agent)
    run_jobs(queue)

    [summary_request] = requests_of(fake_model, "summary")
    assert "Person: My dog is called Biscuit" in summary_request["messages"][1]["content"]
    stored = fresh(chat)
    assert "Biscuit" in stored.summary
    assert (
        stored.summary_message_id
        == Message.select().where(Message.chat == chat).order_by(Message.id.desc())[0].id
    )

    request = text_and_answer(configured, fake_model, fresh(chat), "What is my dog called?")

    system = request["messages"][0]["content"]
    assert system.startswith("You are a test agent.\n\n" + SUMMARY_HEADING + "\n")
    assert "Biscuit" in system.split(SUMMARY_HEADING, 1)[1]
    history = request["messages"][1:]
    assert len(history) == 4 and not any("Biscuit" in m["content"] for m in history)
    assert fake_model.requests[-1] is request
    assert "Biscuit" in replies_sent(chat)[-1]


def replies_sent(chat: Chat) -> list[str]:
    """The texts of the agent's parts in a chat, in order."""
    return [
        m.content
        for m in Message.select()
        .where((Message.chat == chat) & (Message.role == Role.AGENT.value))
        .order_by(Message.id)
    ]


def test_summary_memory_off_shows_no_summary_and_runs_no_job(
    configured, fake_model, fake_twilio, brain, queue
):
    agent = new_agent(num_last_messages=4, summary_memory=False)
    chat = sms_chat(agent)
    for i in range(4):
        exchange(chat, f"text {i}", f"answer {i}")
    Chat.update(summary="The person likes Biscuit.").where(Chat.chat_id == chat.chat_id).execute()

    assert schedule_after_turn(queue, chat, agent) == []
    request = text_and_answer(configured, fake_model, fresh(chat), "hello")

    assert SUMMARY_HEADING not in request["messages"][0]["content"]
    assert not requests_of(fake_model, "summary")


def test_summary_waits_until_messages_near_the_window_edge(configured, fake_model, brain):
    agent = new_agent(num_last_messages=20, summary_memory=True)
    chat = sms_chat(agent)
    for i in range(8):  # 16 messages: all still well inside a window of 20
        exchange(chat, f"text {i}", f"answer {i}")

    assert memory_jobs.update_summary(chat.chat_id).startswith("not_due")
    assert not fake_model.requests

    exchange(chat, "text 8", "answer 8")  # 18 = 20 - SUMMARY_LEAD: the next exchange would push one out
    assert memory_jobs.update_summary(chat.chat_id).startswith("updated")
    assert len(requests_of(fake_model, "summary")) == 1


def test_summary_update_reads_only_new_messages_and_at_most_the_cap(configured, fake_model, brain):
    agent = new_agent(num_last_messages=4, summary_memory=True)
    chat = sms_chat(agent)
    rows = [
        {"chat": chat.chat_id, "role": Role.USER.value, "content": f"msg-{i:03d}", "status": "received"}
        for i in range(500)
    ]
    Message.insert_many(rows).execute()
    ids = [m.id for m in Message.select(Message.id).where(Message.chat == chat).order_by(Message.id)]
    Chat.update(summary="OLD SUMMARY", summary_message_id=ids[249]).where(
        Chat.chat_id == chat.chat_id
    ).execute()

    assert memory_jobs.update_summary(chat.chat_id).startswith("updated")

    [request] = requests_of(fake_model, "summary")
    text = request["messages"][1]["content"]
    assert "Current summary:\nOLD SUMMARY" in text
    said = re.findall(r"msg-\d{3}", text)
    assert len(said) == memory.SUMMARY_MAX_MESSAGES == 200
    assert said[0] == "msg-300" and said[-1] == "msg-499"  # the newest 200 after the mark
    assert "too many to include" in text
    assert fresh(chat).summary_message_id == ids[-1]


# --- user_analysis_memory --------------------------------------------------------------------------


def test_profile_carries_across_chats_after_auto_close(configured, fake_model, fake_twilio, brain, queue):
    agent = new_agent(user_analysis_memory=True, end_chat_after_silence_ms=60_000)
    first = sms_chat(agent)
    text_and_answer(configured, fake_model, first, "Hi, my name is Zanzibar")
    schedule_after_turn(queue, first, agent)
    run_jobs(queue)
    assert not requests_of(fake_model, "profile")  # one text, chat ongoing: not due yet

    # Silence: the periodic job ends the chat, which flushes the profile (and analyses the chat).
    Chat.update(last_activity_at=utcnow() - timedelta(minutes=5)).where(
        Chat.chat_id == first.chat_id
    ).execute()
    assert jobs.close_silent_chats() == 1
    run_jobs(queue)

    assert fresh(first).chat_status == ChatStatus.ENDED.value
    assert fresh(first).chat_analysis["user_sentiment"] == "positive"
    profile = UserProfile.get_by_id(f"phone:{THEIRS}")
    assert profile.profile["name"] == "Zanzibar"
    [profile_request] = requests_of(fake_model, "profile")
    assert "Person: Hi, my name is Zanzibar" in profile_request["messages"][1]["content"]

    second = sms_chat(agent)  # the next chat with the same person
    request = text_and_answer(configured, fake_model, second, "Do you know who I am?")

    system = request["messages"][0]["content"]
    assert PROFILE_HEADING in system
    assert "- name: Zanzibar" in system.split(PROFILE_HEADING, 1)[1]
    assert request["messages"][1:] == [{"role": "user", "content": "Do you know who I am?"}]
    assert replies_sent(second)[-1] == "I remember: Zanzibar."


def test_profile_update_batches_texts_of_an_ongoing_chat(configured, fake_model, brain):
    agent = new_agent(user_analysis_memory=True)
    chat = sms_chat(agent)
    key = f"phone:{THEIRS}"
    exchange(chat, "one", "ok")
    exchange(chat, "two", "ok")
    assert memory_jobs.update_profile(key).startswith("not_due")
    exchange(chat, "three", "ok")
    assert memory_jobs.update_profile(key).startswith("updated")
    assert UserProfile.get_by_id(key).profile["facts"] == ["one", "two", "three"]
    exchange(chat, "four", "ok")
    assert memory_jobs.update_profile(key).startswith("not_due")  # read up to "three" already
    [request] = requests_of(fake_model, "profile")
    assert person_lines(request["messages"][1]["content"]) == ["one", "two", "three"]


def test_profile_answer_that_is_not_json_keeps_the_old_profile(configured, fake_model, brain):
    agent = new_agent(user_analysis_memory=True)
    chat = sms_chat(agent)
    key = f"phone:{THEIRS}"
    UserProfile.create(key=key, profile={"name": "Ana"}, last_message_id=None)
    for i in range(3):
        exchange(chat, f"text {i}", "ok")
    brain.profile_answer = "Sorry, I cannot do that."

    assert memory_jobs.update_profile(key).startswith("invalid_json")
    stored = UserProfile.get_by_id(key)
    assert stored.profile == {"name": "Ana"} and stored.last_message_id is None

    brain.profile_answer = None  # the next try succeeds and reads the same texts again
    assert memory_jobs.update_profile(key).startswith("updated")
    assert UserProfile.get_by_id(key).profile["facts"] == ["text 0", "text 1", "text 2"]


def test_profile_over_the_api_is_keyed_by_user_id(client, configured, fake_model, brain, queue):
    agent_id = client.post(
        "/v1/agents", json={"system_prompt": "API agent.", "user_analysis_memory": True}, headers=AUTH
    ).json["agent_id"]
    chat_id = client.post("/v1/chats", json={"agent_id": agent_id, "user_id": "u-42"}, headers=AUTH).json[
        "chat_id"
    ]
    for text in ("my name is Zanzibar", "I like tea", "bye"):
        assert (
            client.post(f"/v1/chats/{chat_id}/completions", json={"content": text}, headers=AUTH).status_code
            == 200
        )
    run_jobs(queue)  # the completions route queued the profile update after each turn
    assert UserProfile.get_by_id("user:u-42").profile["name"] == "Zanzibar"

    other = client.post("/v1/chats", json={"agent_id": agent_id, "user_id": "u-42"}, headers=AUTH).json[
        "chat_id"
    ]
    response = client.post(f"/v1/chats/{other}/completions", json={"content": "who am I?"}, headers=AUTH)
    assert response.json["messages"][0]["content"] == "I remember: Zanzibar."
    system = requests_of(fake_model, "agent")[-1]["messages"][0]["content"]
    assert PROFILE_HEADING in system

    anonymous = client.post("/v1/chats", json={"agent_id": agent_id}, headers=AUTH).json["chat_id"]
    client.post(f"/v1/chats/{anonymous}/completions", json={"content": "who am I?"}, headers=AUTH)
    assert PROFILE_HEADING not in requests_of(fake_model, "agent")[-1]["messages"][0]["content"]


def test_summary_over_the_api(client, configured, fake_model, brain, queue):
    agent_id = client.post(
        "/v1/agents",
        json={"system_prompt": "API agent.", "summary_memory": True, "num_last_messages": 2},
        headers=AUTH,
    ).json["agent_id"]
    chat_id = client.post("/v1/chats", json={"agent_id": agent_id}, headers=AUTH).json["chat_id"]
    for text in ("My dog is called Biscuit", "the weather is nice", "so is the food"):
        client.post(f"/v1/chats/{chat_id}/completions", json={"content": text}, headers=AUTH)
        run_jobs(queue)
    assert "Biscuit" in fresh(Chat(chat_id=chat_id)).summary

    response = client.post(f"/v1/chats/{chat_id}/completions", json={"content": "my dog?"}, headers=AUTH)
    assert response.json["messages"][0]["content"] == "I remember: Biscuit."
    request = requests_of(fake_model, "agent")[-1]
    assert SUMMARY_HEADING in request["messages"][0]["content"]
    assert request["messages"][1:] == [
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "my dog?"},
    ]


# --- scheduling ------------------------------------------------------------------------------------


def test_a_burst_of_turns_queues_one_job_per_memory(app, queue):
    agent = new_agent(summary_memory=True, user_analysis_memory=True)
    chat = sms_chat(agent)
    queued = [job for _ in range(5) for job in schedule_after_turn(queue, chat, agent)]
    assert sorted(job.func_name for job in queued) == [memory.PROFILE_JOB, memory.SUMMARY_JOB]
    assert len(queue) == 2


def test_a_turn_during_a_running_update_queues_one_follow_up(app, queue):
    agent = new_agent(summary_memory=True)
    chat = sms_chat(agent)
    [first] = schedule_after_turn(queue, chat, agent)
    first.set_status(JobStatus.STARTED)  # as if a worker had picked it up

    [follow_up] = schedule_after_turn(queue, chat, agent)
    assert follow_up.id == first.id + "-again"
    # It waits for the running one: one update of a chat at a time.
    assert follow_up.get_status() == JobStatus.RATE_LIMITED
    assert schedule_after_turn(queue, chat, agent) == []  # a waiting job covers later turns


def test_settings_decide_which_updates_are_queued(app, queue):
    plain = new_agent()
    assert schedule_after_turn(queue, sms_chat(plain), plain) == []
    profile_only = new_agent(user_analysis_memory=True)
    api_chat = Chat.create(agent=profile_only, chat_type=ChatType.API.value)  # no user_id: no profile
    assert schedule_after_turn(queue, api_chat, profile_only) == []
    both = new_agent(summary_memory=True, user_analysis_memory=True)
    jobs_queued = schedule_after_turn(queue, sms_chat(both, "+15550009999"), both)
    # Arguments come back from Redis as JSON: lists, not tuples.
    assert [fetch_job(j.id, queue.connection).args for j in jobs_queued] == [
        [jobs_queued[0].args[0]],
        ["phone:+15550009999"],
    ]


def test_scheduling_survives_redis_being_down(app):
    agent = new_agent(summary_memory=True, user_analysis_memory=True)
    chat = sms_chat(agent)
    # No retries: redis-py's default (10, with backoff) would only make the refusal take 3 s.
    dead_redis = Redis(port=free_port(), socket_connect_timeout=0.2, retry=RedisRetry(NoBackoff(), 0))
    dead = Queue("x", connection=dead_redis)
    assert schedule_after_turn(dead, chat, agent) == []
    assert schedule_after_turn(None, chat, agent) == []


def test_memory_jobs_do_nothing_without_a_model(app, settings_with, fake_model):
    context.configure(settings_with(openai_api_key=None, openai_base_url=None))
    try:
        agent = new_agent(num_last_messages=2, summary_memory=True, user_analysis_memory=True)
        chat = sms_chat(agent)
        for i in range(4):
            exchange(chat, f"text {i}", "ok")
        assert memory_jobs.update_summary(chat.chat_id).startswith("skipped")
        assert memory_jobs.update_profile(f"phone:{THEIRS}").startswith("skipped")
        assert not fake_model.requests
    finally:
        context.configure(None)


# --- the token budget, the answer's cap, prose answers ----------------------------------------------


def due_summary_and_profile(**fields) -> Chat:
    """A chat whose summary and profile updates are both due."""
    agent = new_agent(num_last_messages=2, summary_memory=True, user_analysis_memory=True, **fields)
    chat = sms_chat(agent)
    for i in range(4):
        exchange(chat, f"text {i}", "ok")
    return chat


def test_memory_calls_are_capped_with_their_own_max_tokens(configured, fake_model, brain):
    """The summary and profile calls send max_tokens sized to their JSON, not the agent's reply cap."""
    chat = due_summary_and_profile(max_tokens=40)
    assert memory_jobs.update_summary(chat.chat_id).startswith("updated")
    assert memory_jobs.update_profile(f"phone:{THEIRS}").startswith("updated")
    [summary] = requests_of(fake_model, "summary")
    [profile] = requests_of(fake_model, "profile")
    assert summary["max_tokens"] == memory.SUMMARY_MAX_TOKENS
    assert profile["max_tokens"] == memory.PROFILE_MAX_TOKENS


@pytest.mark.parametrize("used", [5000, 4000])
def test_memory_jobs_make_no_model_call_over_the_token_budget(configured, fake_model, brain, used):
    """A spent budget (5000 of 5000), or one with less left than a call's reservation (prompt +
    max_tokens: 1000 left < 1500 + the prompt), skips both jobs without a model call and keeps the
    old summary and profile."""
    chat = due_summary_and_profile(tokens_per_day=5000)
    Chat.update(summary="OLD SUMMARY").where(Chat.chat_id == chat.chat_id).execute()
    UserProfile.create(key=f"phone:{THEIRS}", profile={"name": "Ana"}, last_message_id=None)
    spend.record_tokens(configured, chat.agent_id, used, 0)

    summary = memory_jobs.update_summary(chat.chat_id)
    profile = memory_jobs.update_profile(f"phone:{THEIRS}")

    assert summary.startswith("skipped") and "budget" in summary
    assert profile.startswith("skipped") and "budget" in profile
    assert fake_model.requests == []
    assert fresh(chat).summary == "OLD SUMMARY"
    assert UserProfile.get_by_id(f"phone:{THEIRS}").profile == {"name": "Ana"}
    assert spend.agent_usage(configured, Agent.get_by_id(chat.agent_id))["tokens_today"] == used


def test_memory_jobs_answered_in_prose_make_one_call_each(configured, fake_model, queue):
    """A model that answers prose: each job (queued with retries, as in production) calls it once and
    finishes. The profile keeps the old one; the summary takes the prose as the summary (a server
    without response_format may answer it so) and counts its tokens."""
    chat = due_summary_and_profile()
    UserProfile.create(key=f"phone:{THEIRS}", profile={"name": "Ana"}, last_message_id=None)
    fake_model.reply_with("I am not able to help with that.")
    jobs_ = [
        queue.enqueue(memory_jobs.update_summary, chat.chat_id, retry=Retry(max=3)),
        queue.enqueue(memory_jobs.update_profile, f"phone:{THEIRS}", retry=Retry(max=3)),
    ]
    run_jobs(queue)

    assert len(requests_of(fake_model, "summary")) == 1
    assert len(requests_of(fake_model, "profile")) == 1
    assert len(fake_model.requests) == 2
    assert [job.get_status() for job in jobs_] == [JobStatus.FINISHED, JobStatus.FINISHED]
    assert jobs_[1].return_value().startswith("invalid_json")
    stored = UserProfile.get_by_id(f"phone:{THEIRS}")
    assert stored.profile == {"name": "Ana"} and stored.last_message_id is None
    assert fresh(chat).summary == "I am not able to help with that."
    assert spend.agent_usage(configured, Agent.get_by_id(chat.agent_id))["tokens_today"] > 0
