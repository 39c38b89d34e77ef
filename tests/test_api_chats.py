"""The /v1 chats API: start, read, list, tag, end, and completions against the loopback model."""

from __future__ import annotations

import threading

import pytest

from gateway.storage.models import Chat, ChatType, Message, Role
from tests.conftest import GATEWAY_API_KEY

AUTH = {"Authorization": f"Bearer {GATEWAY_API_KEY}"}
CHAT_KEYS = {
    "chat_id",
    "agent_id",
    "chat_type",
    "channel",
    "chat_status",
    "user_id",
    "from_number",
    "to_number",
    "metadata",
    "dynamic_variables",
    "start_timestamp",
    "end_timestamp",
    "end_reason",
    "operator_held_at",
    "chat_analysis",
}


def new_agent(client, **fields) -> str:
    """Create an agent; its id."""
    response = client.post("/v1/agents", json=fields, headers=AUTH)
    assert response.status_code == 201, response.json
    return response.json["agent_id"]


def new_chat(client, **fields) -> dict:
    """Start an API chat (with the default agent unless told); the chat."""
    fields.setdefault("agent_id", "agent_default")
    response = client.post("/v1/chats", json=fields, headers=AUTH)
    assert response.status_code == 201, response.json
    return response.json


# --- create, read ----------------------------------------------------------------------------------


def test_create_and_read_a_chat(client):
    metadata = {"crm": {"id": 42, "tags": ["a", "b"]}, "note": "ünïcode ✓", "n": None, "f": 1.5}
    chat = new_chat(client, user_id="user-1", metadata=metadata, dynamic_variables={"name": "Ada"})
    assert set(chat) == CHAT_KEYS | {"messages", "usage"}
    assert chat["chat_id"].startswith("chat_")
    assert chat["agent_id"] == "agent_default"
    assert chat["chat_type"] == "api_chat"
    assert chat["chat_status"] == "ongoing"
    assert chat["user_id"] == "user-1"
    assert chat["metadata"] == metadata
    assert chat["dynamic_variables"] == {"name": "Ada"}
    assert chat["start_timestamp"].endswith("Z") and "T" in chat["start_timestamp"]
    assert chat["end_timestamp"] is None and chat["end_reason"] is None
    assert chat["from_number"] is None and chat["to_number"] is None
    assert chat["messages"] == []
    assert chat["usage"] == {"prompt_tokens": 0, "completion_tokens": 0}
    assert chat["chat_analysis"] is None

    fetched = client.get(f"/v1/chats/{chat['chat_id']}", headers=AUTH).json
    assert fetched == chat


def test_messages_come_back_in_order_with_sms_fields(client):
    chat_id = new_chat(client)["chat_id"]
    Message.create(chat=chat_id, role=Role.USER.value, content="first", status="received")
    Message.create(
        chat=chat_id,
        role=Role.AGENT.value,
        content="second",
        status="undelivered",
        error_code="30003",
        media=[{"url": "https://example.test/a.jpg", "content_type": "image/jpeg"}],
        prompt_tokens=10,
        completion_tokens=3,
    )
    chat = client.get(f"/v1/chats/{chat_id}", headers=AUTH).json
    first, second = chat["messages"]
    assert first["content"] == "first" and second["content"] == "second"
    assert first["message_id"].startswith("msg_")
    assert set(first) == {
        "message_id",
        "role",
        "kind",
        "content",
        "media",
        "created_at",
        "status",
        "error_code",
        "reply_state",
        "tool_calls",
    }
    assert second == {
        "message_id": second["message_id"],
        "role": "agent",
        "kind": "text",
        "content": "second",
        "media": [{"url": "https://example.test/a.jpg", "content_type": "image/jpeg"}],
        "created_at": second["created_at"],
        "status": "undelivered",
        "error_code": "30003",
        "reply_state": None,
        "tool_calls": None,
    }
    assert chat["usage"] == {"prompt_tokens": 10, "completion_tokens": 3}


def test_internal_sending_mark_reads_as_queued(client):
    chat_id = new_chat(client)["chat_id"]
    Message.create(chat=chat_id, role=Role.AGENT.value, content="part", status="sending")
    (message,) = client.get(f"/v1/chats/{chat_id}", headers=AUTH).json["messages"]
    assert message["status"] == "queued"


def test_chat_analysis_is_returned_once_filled(client):
    chat_id = new_chat(client)["chat_id"]
    Chat.update(chat_analysis={"sentiment": "positive"}).where(Chat.chat_id == chat_id).execute()
    assert client.get(f"/v1/chats/{chat_id}", headers=AUTH).json["chat_analysis"] == {"sentiment": "positive"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "agent_id"),
        ({"agent_id": "agent_missing"}, "agent_id"),
        ({"agent_id": 5}, "agent_id"),
        ({"agent_id": "agent_default", "user_id": 5}, "user_id"),
        ({"agent_id": "agent_default", "metadata": []}, "metadata"),
        ({"agent_id": "agent_default", "metadata": "x"}, "metadata"),
        ({"agent_id": "agent_default", "dynamic_variables": {"a": 1}}, "dynamic_variables.a"),
        ({"agent_id": "agent_default", "dynamic_variables": []}, "dynamic_variables"),
        ({"agent_id": "agent_default", "metadata": {"k": "nul\x00"}}, "metadata.k"),
        ({"agent_id": "agent_default", "chat_type": "sms_chat"}, "chat_type"),
    ],
)
def test_create_validation_names_the_field(client, body, field):
    response = client.post("/v1/chats", json=body, headers=AUTH)
    assert response.status_code == 422, response.json
    assert response.json["error"]["field"] == field


def test_unknown_chats_are_404(client):
    for method, path in [
        ("get", "/v1/chats/chat_nope"),
        ("patch", "/v1/chats/chat_nope"),
        ("post", "/v1/chats/chat_nope/end"),
        ("post", "/v1/chats/chat_nope/completions"),
        ("get", "/v1/chats/bad%00id"),
    ]:
        response = getattr(client, method)(path, headers=AUTH, json={"content": "hi"})
        assert response.status_code == 404, (method, path)
        assert response.json["error"]["code"] == "not_found"


# --- patch, end ---------------------------------------------------------------------------------------


def test_patch_replaces_metadata_untouched(client):
    chat = new_chat(client, metadata={"a": 1})
    metadata = {"nested": {"deep": [1, 2, {"x": None}]}, "big": 12345678901234567890, "emoji": "🙂"}
    response = client.patch(f"/v1/chats/{chat['chat_id']}", json={"metadata": metadata}, headers=AUTH)
    assert response.status_code == 200
    assert response.json["metadata"] == metadata
    assert client.get(f"/v1/chats/{chat['chat_id']}", headers=AUTH).json["metadata"] == metadata
    for body, field in [({"metadata": None}, "metadata"), ({"user_id": "u"}, "user_id")]:
        response = client.patch(f"/v1/chats/{chat['chat_id']}", json=body, headers=AUTH)
        assert response.status_code == 422
        assert response.json["error"]["field"] == field


def test_end_a_chat(client):
    chat_id = new_chat(client)["chat_id"]
    response = client.post(f"/v1/chats/{chat_id}/end", headers=AUTH)
    assert response.status_code == 200
    chat = response.json
    assert chat["chat_status"] == "ended"
    assert chat["end_reason"] == "api"
    assert chat["end_timestamp"].endswith("Z")
    assert "messages" in chat
    assert Chat.get_by_id(chat_id).ongoing_pair is None
    response = client.post(f"/v1/chats/{chat_id}/end", headers=AUTH)
    assert response.status_code == 409
    assert response.json["error"]["code"] == "chat_not_ongoing"


def test_ending_an_sms_chat_frees_its_number_pair(client):
    client.get("/v1/agents", headers=AUTH)  # creates the default agent
    chat = Chat.create(
        agent="agent_default",
        chat_type=ChatType.SMS.value,
        from_number="+14155550123",
        to_number="+14155552671",
        ongoing_pair="+14155550123|+14155552671",
    )
    response = client.post(f"/v1/chats/{chat.chat_id}/end", headers=AUTH)
    assert response.status_code == 200
    assert response.json["from_number"] == "+14155550123"
    assert Chat.get_by_id(chat.chat_id).ongoing_pair is None


# --- list ------------------------------------------------------------------------------------------


def test_list_filters_and_newest_first(client):
    other = new_agent(client)
    a = new_chat(client, user_id="u1")
    b = new_chat(client, agent_id=other, user_id="u2")
    c = new_chat(client, user_id="u1")
    client.post(f"/v1/chats/{c['chat_id']}/end", headers=AUTH)

    def ids(query=""):
        response = client.get(f"/v1/chats{query}", headers=AUTH)
        assert response.status_code == 200, response.json
        return [item["chat_id"] for item in response.json["items"]]

    assert ids() == [c["chat_id"], b["chat_id"], a["chat_id"]]
    assert ids(f"?agent_id={other}") == [b["chat_id"]]
    assert ids("?user_id=u1") == [c["chat_id"], a["chat_id"]]
    assert ids("?chat_status=ended") == [c["chat_id"]]
    assert ids("?chat_status=ongoing&agent_id=agent_default") == [a["chat_id"]]
    assert ids("?chat_type=sms_chat") == []
    assert ids("?chat_type=api_chat&user_id=u2") == [b["chat_id"]]
    assert ids("?user_id=nobody") == []

    listed = client.get("/v1/chats", headers=AUTH).json
    assert listed["has_more"] is False and listed["pagination_key"] is None
    assert set(listed["items"][0]) == CHAT_KEYS


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("chat_status=open", "chat_status"),
        ("chat_type=voice", "chat_type"),
        ("pagination_key=garbage!", "pagination_key"),
        ("pagination_key=Zm9v", "pagination_key"),
        ("user_id=" + "x" * 201, "user_id"),
    ],
)
def test_list_query_validation(client, query, field):
    response = client.get(f"/v1/chats?{query}", headers=AUTH)
    assert response.status_code == 422, response.json
    assert response.json["error"]["field"] == field


# --- completions ----------------------------------------------------------------------------------


def complete(client, chat_id: str, content: str = "hello"):
    """POST a completion; the response."""
    return client.post(f"/v1/chats/{chat_id}/completions", json={"content": content}, headers=AUTH)


def test_completion_round_trip(client, fake_model):
    agent_id = new_agent(
        client,
        system_prompt="You help {{name}}.",
        model="fake-model-large",
        temperature=0.2,
        retry_attempts=0,
    )
    chat_id = new_chat(client, agent_id=agent_id, dynamic_variables={"name": "Ada"})["chat_id"]
    response = complete(client, chat_id, "hello there")
    assert response.status_code == 200, response.json
    (message,) = response.json["messages"]
    assert message["role"] == "agent"
    assert message["content"] == "Echo: hello there"
    assert message["message_id"].startswith("msg_")
    assert message["status"] is None

    (request,) = fake_model.requests
    assert request["model"] == "fake-model-large"
    assert request["temperature"] == 0.2
    assert request["messages"] == [
        {"role": "system", "content": "You help Ada."},
        {"role": "user", "content": "hello there"},
    ]

    complete(client, chat_id, "again")
    assert fake_model.requests[-1]["messages"][1:] == [
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": "Echo: hello there"},
        {"role": "user", "content": "again"},
    ]
    chat = client.get(f"/v1/chats/{chat_id}", headers=AUTH).json
    assert [(m["role"], m["content"]) for m in chat["messages"]] == [
        ("user", "hello there"),
        ("agent", "Echo: hello there"),
        ("user", "again"),
        ("agent", "Echo: again"),
    ]
    # The fake counts a token per word: (3 + 2) + (3 + 2 + 3 + 1) prompt, 3 + 2 completion.
    assert chat["usage"] == {"prompt_tokens": 14, "completion_tokens": 5}


def test_the_default_model_answers_when_the_agent_names_none(client, fake_model):
    chat_id = new_chat(client)["chat_id"]
    assert complete(client, chat_id).status_code == 200
    assert fake_model.requests[0]["model"] == "fake-model"
    assert "temperature" not in fake_model.requests[0]


def test_transient_failures_are_retried(client, fake_model):
    agent_id = new_agent(client, retry_attempts=2, retry_delay=0)
    chat_id = new_chat(client, agent_id=agent_id)["chat_id"]
    fake_model.fail_next(503, times=2)
    response = complete(client, chat_id)
    assert response.status_code == 200
    assert response.json["messages"][0]["content"] == "Echo: hello"
    assert len(fake_model.requests) == 3


def test_exhausted_retries_are_502_and_keep_the_user_message(client, fake_model):
    agent_id = new_agent(client, retry_attempts=1, retry_delay=0)
    chat_id = new_chat(client, agent_id=agent_id)["chat_id"]
    fake_model.fail_next(429, times=5)
    response = complete(client, chat_id, "are you there?")
    assert response.status_code == 502
    assert response.json["error"]["code"] == "model_error"
    assert len(fake_model.requests) == 2
    messages = client.get(f"/v1/chats/{chat_id}", headers=AUTH).json["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [("user", "are you there?")]


def test_permanent_failures_are_not_retried(client, fake_model):
    agent_id = new_agent(client, retry_attempts=5, retry_delay=0)
    chat_id = new_chat(client, agent_id=agent_id)["chat_id"]
    fake_model.fail_next(404)
    response = complete(client, chat_id)
    assert response.status_code == 502
    assert len(fake_model.requests) == 1


def test_retry_sleeps_double_with_jitter_and_are_capped():
    from gateway.conversations.answering import MAX_RETRY_SLEEP, retry_sleep

    for attempt in range(4):
        assert 0.75 * 2**attempt <= retry_sleep(1.0, attempt) <= 1.25 * 2**attempt
    assert retry_sleep(100.0, 3) == MAX_RETRY_SLEEP
    assert retry_sleep(0.0, 5) == 0


def test_no_database_connection_is_held_while_the_model_answers(client, fake_model, monkeypatch):
    from gateway.api import completions
    from gateway.storage.db import database

    seen = []
    real = completions.llm.complete

    def spy(*args, **kwargs):
        seen.append(database.is_closed())
        return real(*args, **kwargs)

    monkeypatch.setattr(completions.llm, "complete", spy)
    chat_id = new_chat(client)["chat_id"]
    assert complete(client, chat_id).status_code == 200
    assert seen == [True]


def test_completions_need_an_ongoing_api_chat(client, fake_model):
    chat_id = new_chat(client)["chat_id"]
    client.post(f"/v1/chats/{chat_id}/end", headers=AUTH)
    response = complete(client, chat_id)
    assert response.status_code == 409
    assert response.json["error"]["code"] == "chat_not_ongoing"

    sms = Chat.create(agent="agent_default", chat_type=ChatType.SMS.value, to_number="+14155552671")
    response = complete(client, sms.chat_id)
    assert response.status_code == 409
    assert response.json["error"]["code"] == "not_an_api_chat"
    assert fake_model.requests == []


@pytest.mark.parametrize(
    "body", [{}, {"content": ""}, {"content": "   "}, {"content": 5}, {"content": "x", "role": "agent"}]
)
def test_completion_body_is_validated(client, fake_model, body):
    chat_id = new_chat(client)["chat_id"]
    response = client.post(f"/v1/chats/{chat_id}/completions", json=body, headers=AUTH)
    assert response.status_code == 422
    assert response.json["error"]["field"] in {"content", "role"}
    assert fake_model.requests == []


def _complete_concurrently(app, chat_id: str, count: int) -> list:
    """`count` completions in one chat at once, each from its own thread; their responses."""
    responses: list = [None] * count
    start = threading.Barrier(count)

    def run(i: int) -> None:
        start.wait()
        responses[i] = complete(app.test_client(), chat_id, f"message {i}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return responses


def test_max_concurrent_invocations_refuses_the_extra_one(app, client, fake_model, monkeypatch):
    from gateway.api import completions

    monkeypatch.setattr(completions, "SLOT_WAIT_SECONDS", 0.2)
    chat_id = new_chat(client, agent_id=new_agent(client, max_concurrent_invocations=1))["chat_id"]
    gate = threading.Event()

    def responder(body):
        gate.wait(20)
        return "slow answer"

    fake_model.responder = responder

    results: list = []
    first = threading.Thread(target=lambda: results.append(complete(app.test_client(), chat_id, "first")))
    first.start()
    fake_model.wait_for_requests(1)
    second = complete(client, chat_id, "second")
    gate.set()
    first.join(timeout=30)
    assert second.status_code == 409
    assert second.json["error"]["code"] == "too_many_invocations"
    assert results[0].status_code == 200
    assert fake_model.max_in_flight == 1
    # The refused message was not recorded.
    messages = client.get(f"/v1/chats/{chat_id}", headers=AUTH).json["messages"]
    assert [m["content"] for m in messages] == ["first", "slow answer"]
    # The slot is free again.
    assert complete(client, chat_id, "third").status_code == 200


def test_a_waiting_completion_runs_once_a_slot_frees(app, client, fake_model):
    chat_id = new_chat(client, agent_id=new_agent(client, max_concurrent_invocations=1))["chat_id"]
    fake_model.latency = 0.2
    responses = _complete_concurrently(app, chat_id, 3)
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert fake_model.max_in_flight == 1
    messages = client.get(f"/v1/chats/{chat_id}", headers=AUTH).json["messages"]
    assert [m["role"] for m in messages] == ["user", "agent"] * 3


def test_several_slots_run_side_by_side(app, client, fake_model):
    chat_id = new_chat(client, agent_id=new_agent(client, max_concurrent_invocations=2))["chat_id"]
    gate = threading.Event()

    def responder(body):
        gate.wait(20)
        return "done"

    fake_model.responder = responder
    runner = threading.Thread(target=lambda: _complete_concurrently(app, chat_id, 2))
    runner.start()
    fake_model.wait_for_requests(2)  # both are at the model at once
    gate.set()
    runner.join(timeout=30)
    assert fake_model.max_in_flight == 2


def test_redis_down_is_503(client, fake_model, redis_server):
    chat_id = new_chat(client)["chat_id"]
    redis_server.stop()
    try:
        response = complete(client, chat_id)
    finally:
        redis_server.start()
    assert response.status_code == 503
    assert response.json["error"]["code"] == "unavailable"
    assert fake_model.requests == []


def test_an_agent_without_history_still_sees_the_new_message(client, fake_model):
    agent_id = new_agent(client, system_prompt="", num_last_messages=0)
    chat_id = new_chat(client, agent_id=agent_id)["chat_id"]
    response = complete(client, chat_id, "just this")
    assert response.status_code == 200
    assert fake_model.requests[0]["messages"] == [{"role": "user", "content": "just this"}]


# --- filters the document promises --------------------------------------------------------------------


def test_filter_by_the_persons_number_in_any_spelling(client):
    client.get("/v1/agents", headers=AUTH)  # creates the default agent
    ours, theirs, other = "+14155550123", "+14155552671", "+442071838750"
    mine = Chat.create(
        agent="agent_default", chat_type=ChatType.SMS.value, from_number=ours, to_number=theirs
    )
    Chat.create(agent="agent_default", chat_type=ChatType.SMS.value, from_number=ours, to_number=other)
    new_chat(client)
    for spelling in ("%2B14155552671", "+14155552671", "%2B1%20(415)%20555-2671", "%2B1-415-555-2671"):
        response = client.get(f"/v1/chats?phone_number={spelling}", headers=AUTH)
        assert response.status_code == 200, (spelling, response.json)
        assert [c["chat_id"] for c in response.json["items"]] == [mine.chat_id], spelling
    # Our own number is not the person's: no chat is "with" it.
    assert client.get("/v1/chats?phone_number=%2B14155550123", headers=AUTH).json["items"] == []
    for bad in ("", "not-a-number", "%2B1415555"):
        response = client.get(f"/v1/chats?phone_number={bad}", headers=AUTH)
        assert response.status_code == 422, bad
        assert response.json["error"]["field"] == "phone_number"


@pytest.mark.parametrize("query", ["chat_status=", "chat_type=", "agent_id=", "limit=", "limit=1&limit=2"])
def test_empty_or_repeated_filters_are_refused(client, query):
    response = client.get(f"/v1/chats?{query}", headers=AUTH)
    assert response.status_code == 422, response.json
    assert response.json["error"]["field"] == query.partition("=")[0]


def test_a_body_is_required_to_start_a_chat(client):
    response = client.post("/v1/chats", headers=AUTH, content_type="application/json")
    assert response.status_code == 400
    assert response.json["error"]["code"] == "invalid_json"
